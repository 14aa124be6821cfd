import os from 'node:os';
import v8 from 'node:v8';
import { randomBytes } from 'node:crypto';
import type { KubeAccess } from '../kube/access.js';
import { claimApproval, releaseApproval } from '../kube/approvals.js';
import { agentPolicyPlugin } from '../admission/plugins/agentpolicy.js';
import { agentTaskPlugin, taskFinalizerPlugin } from '../admission/plugins/agenttask.js';
import { podsMadeBy, serviceAccountSubject } from '../kube/authorizer.js';
import { approvalHopDigestPlugin, approvalValidationPlugin, approverStampPlugin, honoredApprovals } from '../admission/plugins/agentapproval.js';
import { podInjectionPlugin } from '../admission/plugins/pod.js';
import { applyGuards, whoAmI } from '../admission/guards.js';
import { registerWebhooks, type WebhookEndpoint } from '../admission/registration.js';
import { admissionRoutes, WEBHOOK_LISTENER_LIMITS } from '../admission/server.js';
import { parseAgentPolicy, parseAgentTask } from '../api/parse.js';
import { GROUP, VERSION, type AgentApproval, type AgentPolicy, type AgentTask } from '../api/schema.js';
import { AuditHeadStore } from '../audit/heads.js';
import { AwsGateway } from '../aws/gateway.js';
import { McpGateway } from '../mcp/gateway.js';
import { UpstreamAddresses } from '../mcp/upstream.js';
import { SecretReader } from '../mcp/secrets.js';
import { ApprovalNotifier, owesNotice } from '../notify/notifier.js';
import { GatewayHops } from '../broker/gateway-hops.js';
import { AWS_GATEWAY_PORT } from '../aws/sign-api.js';
import { Placeholders } from '../aws/placeholders.js';
import { AuditFileWriter } from '../audit/file.js';
import { TaskJournal } from '../audit/journal.js';
import type { AuditRecord } from '../audit/record.js';
import { HopIds, loadHopKey } from '../broker/hopids.js';
import { HopService } from '../broker/hops.js';
import { keyOf as policyKey, PolicyEngine } from '../policy/engine.js';
import { AgentAuthenticator, type PodRecord } from '../broker/auth.js';
import { BROKER_LISTENER_LIMITS, brokerRoutes } from '../broker/routes.js';
import { AgentTaskController } from '../controllers/agenttask/controller.js';
import { DEFAULT_NAMESPACE, endOf, TASK_LABEL } from '../api/task.js';
import { CredentialBroker } from '../credentials/broker.js';
import { AwsIamPort } from '../credentials/iam.js';
import { PermittedRoles } from '../credentials/permitted.js';
import { roleNameOf, sourceIdentityFor } from '../credentials/plan.js';
import { outstandingDeny, revokeTask } from '../credentials/revocation.js';
import { Revoker, type WriteGuard } from '../credentials/revoke.js';
import { AwsStsPort } from '../credentials/sts.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { ChainwardenError, errorMessage } from '../errors.js';
import { KeyRing } from '../identity/keyring.js';
import { secretKeyStore } from '../identity/keystore-secret.js';
import { assertTrustDomain, spiffeIdFor } from '../identity/spiffe.js';
import { SvidIssuer } from '../identity/svid.js';
import { customObjectReader, ParsedReader } from '../kube/readers.js';
import { KubeTaskClient } from '../kube/tasks.js';
import { rawRequest } from '../kube/raw.js';
import type { Logger } from '../log.js';
import { CertificateAuthority } from '../pki/authority.js';
import { systemClock, type Clock } from '../runtime/clock.js';
import { Informer } from '../runtime/informer.js';
import { LeaderElector } from '../runtime/leader.js';
import { Metrics } from '../runtime/metrics.js';
import { sendJson } from '../server/http.js';
import { serveHttps, type Routes } from '../server/https.js';
import { notAfterSeconds, readServingFiles, watchServingFiles, type ServingFilePaths, type ServingMaterial } from '../server/serving-files.js';

/** How long an agent's completion waits for this replica's watch to show it before it is answered all the same. */
const COMPLETION_SHOWN_MS = 5_000;

/** Where the pods informer files a pod: under `namespace/task` of the task its label names. */
function podsOfTask(pod: PodRecord): string | undefined {
  const task = pod.metadata?.labels?.[TASK_LABEL];
  return task === undefined ? undefined : `${pod.metadata?.namespace ?? ''}/${task}`;
}

export interface OperatorOptions {
  kc: KubeAccess;
  log: Logger;
  /** The operator's own namespace: its leader-election Lease and SVID key Secret live there. */
  namespace?: string;
  /** This replica's name in the Lease; hostname and a random suffix by default. */
  identity?: string;
  /** The broker's HTTPS listener (and health, metrics); 127.0.0.1 on a free port by default. */
  listen?: { host: string; port: number };
  /**
   * The admission webhooks' own HTTPS listener (and health), so that neither agents nor the API
   * server can crowd out the other; 127.0.0.1 on a free port by default.
   */
  webhookListen?: { host: string; port: number };
  /** Serving certificate files (in cluster: mounted from a Secret), read again as they change. A development CA is made when absent. */
  tls?: ServingFilePaths;
  /** How often the serving files are read again; 30 s by default. */
  tlsReloadIntervalMs?: number;
  /** Register the webhooks with the API server, reaching them at this URL or Service (the webhook listener's URL when neither is given). */
  register?: Omit<WebhookEndpoint, 'caBundlePem'>;
  trustDomain?: string;
  /** The JWT-SVID issuer URL (what AWS IAM's OIDC provider is configured with); the serving URL by default. */
  issuerUrl?: string;
  /** The broker URL agent sidecars are given; the serving URL by default. */
  podBrokerUrl?: string;
  sidecarImage?: string;
  leaderElection?: { leaseDurationMs?: number; renewDeadlineMs?: number; retryPeriodMs?: number };
  /** How often the leader prunes and re-asserts the revocation denies on every role; 5 minutes by default. */
  pruneIntervalMs?: number;
  /** Run the controllers (when elected). Off: webhooks and broker only. */
  controllers?: boolean;
  /** Watch one namespace instead of the whole cluster. */
  watchNamespace?: string;
  workers?: number;
  clock?: Clock;
  /** Tests only: every watch event of the caches is taken this much later, as on a replica whose watch lags. */
  watchLagMs?: number;
  /** Also append every audit record to this file (JSON lines), besides the operator's log. */
  auditFile?: string;
  /** Export every audit record as OpenTelemetry spans to this OTLP/HTTP traces URL; off when absent. */
  tracing?: { endpoint: string; serviceName?: string; flushMs?: number };
  /** How long chain state and audit records gather before one status write per task. */
  journalFlushMs?: number;
  /** Status writes a second the journal stays under across all tasks, by letting busy tasks' changes gather longer (up to 1 s); 20 unless set. */
  journalWritesPerSecond?: number;
  /** Where STS and IAM are, and the operator's own AWS identity (the default chain when absent). */
  /** `gatewayEndpoint`: where the AWS gateway sends every service's calls (a local emulator); each service's regional AWS endpoint when unset. */
  aws?: {
    region: string;
    stsEndpoint?: string;
    iamEndpoint?: string;
    gatewayEndpoint?: string;
    credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
    /** Globs over the roles tasks of each namespace may name (`{namespace}` stands for it); none: any the policy allows. */
    permittedRoleArns?: string[];
  };
}

export interface RunningOperator {
  /** The broker's URL. */
  url: string;
  /** The admission webhooks' URL (their own listener). */
  webhookUrl: string;
  /** The CA that signed the serving certificate: the webhooks' caBundle and the broker's CA. */
  caPem: string;
  identity: string;
  metrics: Metrics;
  isLeader(): boolean;
  /** Informer caches, for tests that interrupt watches. */
  informers: { tasks: Informer<AgentTask>; policies: Informer<AgentPolicy>; pods: Informer<PodRecord>; approvals: Informer<AgentApproval> };
  stop(): Promise<void>;
  /** Stops without releasing the Lease, as a killed process would; for failover tests. */
  crash(): Promise<void>;
}

export { DEFAULT_NAMESPACE };
export const DEFAULT_SIDECAR_IMAGE = 'chainwarden/chainwarden:0.1.0';
export const SIDECAR_PORT = 15080;

async function servingMaterial(options: OperatorOptions): Promise<ServingMaterial> {
  if (options.tls) return readServingFiles(options.tls);
  const ca = await CertificateAuthority.create('chainwarden-development-ca');
  const hosts = [options.listen?.host ?? '127.0.0.1', options.webhookListen?.host ?? '127.0.0.1'].map((h) => (h === '0.0.0.0' ? '127.0.0.1' : h));
  const pair = await ca.issueServing('chainwarden', { dnsNames: ['localhost'], ips: [...new Set(hosts)] });
  return { ...pair, caPem: ca.certPem };
}

/**
 * Leader only, at once on winning and then every 5 minutes: on every role a task names, drops
 * expired entries from the deny policy and re-asserts the deny of every revoked task whose
 * sessions may still live, read from its status, so a deny whose writer died and was overwritten
 * is put back. A new leader does it at once: the replica it replaces may have died mid-write.
 */
async function pruneWhileLeading(signal: AbortSignal, leading: WriteGuard, tasks: Informer<AgentTask>, policy: (ns: string, name: string) => AgentPolicy | undefined, revoker: Revoker, clock: Clock, log: Logger, everyMs: number): Promise<void> {
  for (let pass = 0; !signal.aborted; pass++) {
    if (pass > 0) await sleep(everyMs, undefined, { signal }).catch(() => undefined);
    if (signal.aborted) return;
    const startedAt = Date.now();
    for (const task of tasks.list()) {
      const owed = outstandingDeny(task, policy(task.metadata.namespace ?? '', task.spec.policyRef.name), clock.now());
      // Owed since the task was revoked, not since now: a cutoff written meanwhile by another replica covers it.
      for (const role of owed?.roles ?? []) if (owed) revoker.owe(role, owed);
    }
    const roles = new Set(tasks.list().flatMap((t) => (t.spec.credentials ?? []).map((c) => roleNameOf(c.aws.roleArn))));
    try {
      // Checked before each write: a leader frozen past its lease must not write once it wakes.
      for (const role of roles) {
        leading();
        await revoker.prune(role, leading).catch((err: unknown) => {
          if (err instanceof ChainwardenError && err.code === 'not_leader') throw err;
          log.warn({ role, err: errorMessage(err) }, 'could not prune the revocation policy');
        });
      }
      leading();
    } catch (err) {
      if (err instanceof ChainwardenError && err.code === 'not_leader') return;
      throw err;
    }
    log.debug({ leaderWork: 'prune', roles: roles.size, startedAt }, 'revocation policies pruned');
  }
}

/**
 * Every replica, leader or not: every minute, re-asserts the denies this replica wrote and still
 * owes. IAM has no conditional put, so a stale write by another replica (at a failover both may
 * write for a while) can drop a deny after it was verified; this puts it back within a minute.
 */
async function keepOwedDenies(signal: AbortSignal, revoker: Revoker, log: Logger, everyMs = 60_000): Promise<void> {
  while (!signal.aborted) {
    await sleep(everyMs, undefined, { signal }).catch(() => undefined);
    if (signal.aborted) return;
    for (const role of revoker.owedRoles()) await revoker.prune(role).catch((err: unknown) => log.warn({ role, err: errorMessage(err) }, 'could not re-assert the denies this replica owes'));
  }
}

/**
 * The operator: on every replica, the admission webhooks, the broker and the caches they read;
 * on the elected leader only, the controllers. Every part is built first, then the route table,
 * and only then does the server listen: nothing is added after a request can arrive. Stopping
 * releases the lease so a standby takes over at once.
 */
/**
 * The operator's STS and IAM clients. Each endpoint is its own: a regional or private STS endpoint
 * is no IAM endpoint, and IAM calls sent there would fail, leaving the deny policies that revoke
 * sessions at AWS unwritten. Unset, each is AWS's own.
 */
export function awsPorts(aws: NonNullable<OperatorOptions['aws']>): { sts: AwsStsPort; iam: AwsIamPort } {
  return {
    sts: new AwsStsPort({ region: aws.region, endpoint: aws.stsEndpoint, credentials: aws.credentials }),
    iam: new AwsIamPort({ region: aws.region, endpoint: aws.iamEndpoint, credentials: aws.credentials }),
  };
}

export async function startOperator(options: OperatorOptions): Promise<RunningOperator> {
  const { kc, log } = options;
  const clock = options.clock ?? systemClock;
  const namespace = options.namespace ?? DEFAULT_NAMESPACE;
  const identity = options.identity ?? `${os.hostname()}-${randomBytes(3).toString('hex')}`;
  const trustDomain = options.trustDomain ?? 'cluster.local';
  assertTrustDomain(trustDomain);
  const metrics = new Metrics();
  const client = new KubeTaskClient(kc);

  const scope = options.watchNamespace ? `/namespaces/${options.watchNamespace}` : '';
  const lagMs = options.watchLagMs;
  const informers = {
    tasks: new Informer<AgentTask>(kc, { path: `/apis/${GROUP}/${VERSION}${scope}/agenttasks`, log, lagMs }),
    policies: new Informer<AgentPolicy>(kc, { path: `/apis/${GROUP}/${VERSION}${scope}/agentpolicies`, log, lagMs }),
    // Indexed: a reconcile reads its task's pods, and every hop its namespace's approvals, without a scan of all.
    pods: new Informer<PodRecord>(kc, { path: `/api/v1${scope}/pods`, labelSelector: TASK_LABEL, indexBy: podsOfTask, log, lagMs }),
    approvals: new Informer<AgentApproval>(kc, { path: `/apis/${GROUP}/${VERSION}${scope}/agentapprovals`, indexBy: (a) => a.metadata.namespace, log, lagMs }),
  };
  // Parsed once per version, read by admission, the broker, hops and the controller alike.
  const policies = new ParsedReader(informers.policies, parseAgentPolicy, customObjectReader(kc, 'agentpolicies', parseAgentPolicy));
  const tasks = new ParsedReader(informers.tasks, parseAgentTask, customObjectReader(kc, 'agenttasks', parseAgentTask));
  const policy = (ns: string, name: string) => policies.current(ns, name);
  // What the broker honours of a namespace's approvals: only those whose approver may decide their task's hops now.
  const warnedApprovals = new Set<string>();
  const approvals = (ns: string) =>
    honoredApprovals(informers.approvals.byIndex(ns), (name) => informers.tasks.get(ns, name), (t) => policy(ns, t.spec.policyRef.name), (approval, why) => {
      const key = `${ns}/${approval.metadata.name ?? ''}/${approval.metadata.uid ?? ''}`;
      if (warnedApprovals.has(key)) return;
      if (warnedApprovals.size >= 10_000) warnedApprovals.clear();
      warnedApprovals.add(key);
      log.warn({ approval: `${ns}/${approval.metadata.name ?? ''}`, reason: why }, 'AgentApproval not honoured: its approver may not decide the task\'s hops');
    });

  let tls = await servingMaterial(options);
  const listen = options.listen ?? { host: '127.0.0.1', port: 0 };
  // The URL pods and verifiers reach us at; with port 0 it is known once listening, before any request is read.
  const serving = { url: '' };
  const ring = new KeyRing(secretKeyStore(kc, namespace, 'chainwarden-svid-keys'), clock);
  const issuer = new SvidIssuer(ring, () => options.issuerUrl ?? serving.url, clock);
  const auth = new AgentAuthenticator(
    kc,
    {
      pod: (ns, name) => informers.pods.get(ns, name),
      task: (ns, name) => informers.tasks.get(ns, name),
      fetchPod: async (ns, name) => {
        const res = await rawRequest(kc, 'GET', `/api/v1/namespaces/${ns}/pods/${name}`);
        if (res.status === 404) return undefined;
        if (res.status !== 200) throw new Error(`the API server answered ${res.status}`);
        return res.body as PodRecord;
      },
      refusal: (task) => journal.refusal(task),
      taskShows: (ns, name, shows, timeoutMs) => informers.tasks.waitFor(ns, name, shows, timeoutMs),
    },
    clock,
    log,
    trustDomain,
    { metrics, svids: issuer },
  );

  const aws = options.aws ?? { region: process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1' };
  const { sts, iam } = awsPorts(aws);
  const permittedRoles = new PermittedRoles(aws.permittedRoleArns);
  const revoker = new Revoker(iam, clock, log);
  // A full disk or a lost mount is logged and counted, never fatal; stopping flushes what is buffered.
  const auditFile = options.auditFile ? new AuditFileWriter({ path: options.auditFile, log, metrics, clock }) : undefined;
  // Loaded only when traces are sent: the OpenTelemetry SDK is a few MiB every replica would carry otherwise.
  const traces = options.tracing
    ? new (await import('../telemetry/exporter.js')).TraceExporter({
        ...options.tracing,
        instance: identity,
        log,
        metrics,
        taskStart: (key) => {
          const [ns = '', name = ''] = key.split('/');
          const created = informers.tasks.get(ns, name)?.metadata.creationTimestamp;
          return created ? Date.parse(String(created)) : undefined;
        },
      })
    : undefined;
  const emit = (record: AuditRecord) => {
    log.info({ audit: record }, 'audit');
    auditFile?.write(record);
    traces?.record(record);
  };
  const heads = new AuditHeadStore(kc, namespace, clock, log);
  const journal = new TaskJournal({
    writer: client.statusWriter('journal'),
    process: `${identity}/${randomBytes(6).toString('hex')}`,
    emit,
    ...(auditFile ? { flushed: () => auditFile.flushed() } : {}),
    log,
    flushMs: options.journalFlushMs,
    writesPerSecond: options.journalWritesPerSecond,
    cached: (ns, name) => informers.tasks.get(ns, name),
    clock,
    // A task stopped here (a violation recorded, status the API server refuses) loses its sessions at once, before any write lands.
    onStop: (task, cause, message) => {
      credentialBroker.drop(task.metadata.uid ?? '');
      if (cause === 'unrecorded') {
        void client.recordEvent(task as AgentTask, 'Warning', 'JournalRefused', `AgentTask ${message}; this replica refuses its requests`).catch(() => undefined);
      }
    },
  });
  const brokerStatus = client.statusWriter('broker');
  // One key for hop ids and placeholder AWS keys, shared by every replica through a Secret.
  const hopKey = await loadHopKey(kc, namespace);
  const placeholders = new Placeholders(hopKey);
  const credentialBroker = new CredentialBroker({ sts, status: brokerStatus, events: client, issuer, policy, clock, log, trustDomain, replica: identity, journal, placeholders, permittedRoles });
  // Whether this replica's watch shows a task ended (or gone) within `timeoutMs`: an end it wrote
  // is answered once it does, since the other replicas' watches are fed alike.
  const endShown = (task: AgentTask, timeoutMs: number) => {
    const { namespace: ns = '', name = '', uid } = task.metadata;
    return informers.tasks.waitFor(ns, name, (t) => !t || t.metadata.uid !== uid || endOf(t, clock.now()) !== undefined, timeoutMs);
  };
  const engine = new PolicyEngine();
  // A deleted policy's compiled rules go with it.
  informers.policies.on((event, p) => event === 'delete' && engine.drop(policyKey(p)));
  const hops = new HopService({
    engine,
    journal,
    ids: new HopIds(hopKey),
    policy,
    approvals,
    credentials: credentialBroker,
    clock,
    log,
    metrics,
    endShown,
    chainShown: (task, version, timeoutMs) => {
      const { namespace: ns = '', name = '', uid } = task.metadata;
      return informers.tasks.waitFor(ns, name, (t) => !t || t.metadata.uid !== uid || (t.status?.chain?.version ?? 0) >= version || endOf(t, clock.now()) !== undefined, timeoutMs);
    },
    freshTask: (ns, name) => client.read(ns, name),
  });
  // Every replica drops an ended task's sessions as soon as its watch shows the task ended.
  informers.tasks.on((event, task) => {
    if (event === 'delete' || endOf(task, clock.now())) credentialBroker.drop(task.metadata.uid ?? '');
    if (event === 'delete') journal.forget(task);
    else journal.observed(task);
  });
  const controller = new AgentTaskController({
    sources: {
      task: (ns, name) => informers.tasks.get(ns, name),
      policy,
      pods: (ns, task) => informers.pods.byIndex(`${ns}/${task}`),
    },
    client,
    clock,
    log,
    metrics,
    trustDomain,
    revoke: (task, p) => revokeTask(revoker, clock, task, p, assertLeading),
    resolvePending: (task) => hops.resolvePending(task),
    journal,
    leading: () => elector.isLeader,
    // What this replica still has queued for the task goes into its status first, so the sealed head is the last one.
    seal: async (task) => {
      const written = (await journal.commit(task, {})) ?? task;
      await heads.seal(written);
      return written;
    },
  });
  controller.watch(informers);

  let webhooksRegistered = !options.register;
  const health: Routes = {
    '/healthz': (_req, res) => Promise.resolve(sendJson(res, 200, { status: 'ok' })),
    '/readyz': (_req, res) => {
      const waiting = [...Object.entries(informers).filter(([, i]) => !i.hasSynced).map(([name]) => `${name} cache`), ...(webhooksRegistered ? [] : ['webhook registration'])];
      // Synced once is not current: while a watch cannot be re-established the caches may miss a task's end.
      const cutOff = Object.entries(informers).flatMap(([name, i]) => (i.disconnected ? [`${name} cache: API server unreachable since ${new Date(i.disconnected.since).toISOString()} (${i.disconnected.error})`] : []));
      if (waiting.length > 0) return Promise.resolve(sendJson(res, 503, { status: 'starting', waitingFor: waiting }));
      if (cutOff.length > 0) return Promise.resolve(sendJson(res, 503, { status: 'disconnected', waitingFor: cutOff }));
      // Reachable is not writable: behind a frozen etcd the API server answers reads and holds writes.
      const behind = journal.behind();
      if (behind) return Promise.resolve(sendJson(res, 503, { status: 'behind', waitingFor: [`the audit records of ${behind.tasks} task(s) have waited for the API server since ${new Date(behind.since).toISOString()}`] }));
      return Promise.resolve(sendJson(res, 200, { status: 'ok' }));
    },
  };
  // Two listeners: agents reach the broker, the API server reaches the webhooks; each has its own
  // connections and limits, and neither serves the other's endpoints.
  const secrets = new SecretReader(kc, clock);
  // Leader only: posts hops that start waiting to their policy's approval.notify receiver, from task status.
  const notifier = new ApprovalNotifier({ tasks: () => informers.tasks.values(), task: (ns, name) => informers.tasks.get(ns, name), policy, secrets, status: client.statusWriter('notifier'), events: client, clock, log, metrics });
  informers.tasks.on((event, task) => {
    if (event !== 'delete' && owesNotice(task)) notifier.wake();
  });
  const gatewayHops = new GatewayHops({
    hops,
    approvals,
    claim: (approval, by) => claimApproval(kc, approval, by),
    // Left marked, an approval is spent on a call that did not go through: a person approves again.
    release: (approval, by) =>
      releaseApproval(kc, approval, by).catch((err: unknown) => {
        log.warn({ approval: `${approval.metadata.namespace ?? ''}/${approval.metadata.name ?? ''}`, err: errorMessage(err) }, 'could not release an approval claimed for a call that did not go through');
        return false;
      }),
    issuer,
    trustDomain,
    marker: sourceIdentityFor,
    spiffeId: (task) => spiffeIdFor(trustDomain, task.metadata.namespace ?? '', task.spec.serviceAccountName, task.metadata.name ?? ''),
    clock,
  });
  const brokerListenerRoutes: Routes = {
    ...health,
    '/metrics': (_req, res) => {
      metrics.gauge('chainwarden_cached_objects', 'Objects in the informer caches.', { resource: 'agenttasks' }).set(informers.tasks.size);
      metrics.gauge('chainwarden_leader', 'Whether this replica runs the controllers.').set(elector.isLeader ? 1 : 0);
      const memory = process.memoryUsage();
      metrics.gauge('process_resident_memory_bytes', 'Resident memory size in bytes.').set(memory.rss);
      metrics.gauge('nodejs_heap_size_used_bytes', 'JavaScript heap in use, in bytes.').set(memory.heapUsed);
      metrics.gauge('nodejs_heap_size_total_bytes', 'JavaScript heap reserved, in bytes.').set(memory.heapTotal);
      metrics.gauge('nodejs_external_memory_bytes', 'Memory of objects outside the JavaScript heap (buffers, WebAssembly), in bytes.').set(memory.external);
      // Per space, as Prometheus's Node client names them: which part of the heap grew (the young generation after a burst, the old one with the cache).
      for (const space of v8.getHeapSpaceStatistics()) {
        const labels = { space: space.space_name.replace(/_space$/, '') };
        metrics.gauge('nodejs_heap_space_size_total_bytes', 'JavaScript heap reserved for the space, in bytes.', labels).set(space.space_size);
        metrics.gauge('nodejs_heap_space_size_used_bytes', 'JavaScript heap of the space in use, in bytes.', labels).set(space.space_used_size);
      }
      const text = metrics.render();
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
      res.end(text);
      return Promise.resolve();
    },
    ...brokerRoutes({
      auth,
      credentials: credentialBroker,
      hops,
      issuer,
      status: brokerStatus,
      completed: async (task, message) => {
        journal.ended(task, message);
        if (!(await endShown(task, COMPLETION_SHOWN_MS))) {
          log.warn({ task: `${task.metadata.namespace ?? ''}/${task.metadata.name ?? ''}`, waitedMs: COMPLETION_SHOWN_MS }, 'completion written but not yet delivered by the watch; other replicas may serve the task until it is');
        }
      },
      clock,
      log,
      trustDomain,
      aws: new AwsGateway({
        placeholders,
        credentials: credentialBroker,
        hops: gatewayHops,
        region: aws.region,
        endpoint: aws.gatewayEndpoint,
        clock,
        log,
      }),
      mcp: new McpGateway({ policy, hops: gatewayHops, secrets, addresses: new UpstreamAddresses(clock) }),
    }),
  };
  const webhookListenerRoutes: Routes = {
    ...health,
    ...admissionRoutes(
      {
        validate: [agentTaskPlugin(policies, permittedRoles), agentPolicyPlugin(secrets), approvalValidationPlugin({
            tasks,
            policies,
            approvals: async (ns) => {
              const res = await rawRequest(kc, 'GET', `/apis/${GROUP}/${VERSION}/namespaces/${ns}/agentapprovals`);
              if (res.status !== 200) throw new Error(`listing AgentApprovals in ${ns}: ${res.status}`);
              return (res.body as { items: AgentApproval[] }).items;
            },
            podsMadeBy: (ns, serviceAccount) => podsMadeBy(kc, serviceAccountSubject(ns, serviceAccount), ns),
          }),
        ],
        mutate: [
          taskFinalizerPlugin(),
          approverStampPlugin(),
          approvalHopDigestPlugin(tasks),
          podInjectionPlugin(
            { image: options.sidecarImage ?? DEFAULT_SIDECAR_IMAGE, brokerUrl: () => options.podBrokerUrl ?? serving.url, brokerCaPem: () => tls.caPem, trustDomain, port: SIDECAR_PORT, awsPort: AWS_GATEWAY_PORT, tokenExpirationSeconds: 600 },
            tasks,
          ),
        ],
      },
      log,
    ),
  };
  const assertLeading: WriteGuard = () => {
    if (!elector.isLeader) throw new ChainwardenError('not_leader', 'this replica no longer holds the lease');
  };
  const elector = new LeaderElector({ kc, namespace, name: 'chainwarden-controller', identity, log, clock, ...options.leaderElection });

  // Built; now start what reads the world, then serve.
  await Promise.all(Object.values(informers).map((i) => i.start()));
  await ring.refresh();
  const keyRefresh = setInterval(() => void ring.refresh().catch((err: unknown) => log.warn({ err: errorMessage(err) }, 'could not refresh the SVID keys')), 30_000);
  keyRefresh.unref();
  const server = await serveHttps(brokerListenerRoutes, tls, listen, log, BROKER_LISTENER_LIMITS);
  serving.url = server.url;
  const webhookServer = await serveHttps(webhookListenerRoutes, tls, options.webhookListen ?? { host: '127.0.0.1', port: 0 }, log, WEBHOOK_LISTENER_LIMITS).catch(async (err: unknown) => {
    await server.close();
    throw err;
  });

  const stopReloading = options.tls
    ? watchServingFiles(
        options.tls,
        tls,
        options.tlsReloadIntervalMs ?? 30_000,
        (next) => {
          server.reload(next);
          webhookServer.reload(next);
          tls = next;
          certificateExpiry.set(notAfterSeconds(next.certPem));
        },
        log,
      )
    : () => undefined;
  const certificateExpiry = metrics.gauge('chainwarden_serving_certificate_expiry_timestamp_seconds', 'When the certificate the broker and webhooks serve expires (seconds since the epoch); it is read again from its files as they change');
  certificateExpiry.set(notAfterSeconds(tls.certPem));

  const running: Promise<void>[] = [];
  const lifetime = new AbortController();
  running.push(keepOwedDenies(lifetime.signal, revoker, log));
  const taskKeys = () => informers.tasks.list().map((t) => `${t.metadata.namespace ?? ''}/${t.metadata.name ?? ''}`);
  const campaign =
    options.controllers === false
      ? Promise.resolve()
      : elector.run((signal) => {
          const work = [
            controller.run(signal, taskKeys(), options.workers ?? 2),
            pruneWhileLeading(signal, assertLeading, informers.tasks, policy, revoker, clock, log, options.pruneIntervalMs ?? 5 * 60_000),
            notifier.run(signal),
          ];
          running.push(...work);
          // Settles once the leader-only work has stopped; the lease is released only after.
          return Promise.all(work);
        });

  const stop = async (release = true) => {
    await (release ? elector.stop() : elector.abandon());
    await campaign;
    lifetime.abort();
    await Promise.all(running);
    clearInterval(keyRefresh);
    stopReloading();
    await journal.drain();
    await auditFile?.close();
    await traces?.shutdown();
    await Promise.all(Object.values(informers).map((i) => i.stop()));
    await Promise.all([server.close(), webhookServer.close()]);
    sts.destroy();
    iam.destroy();
  };
  try {
    if (options.register) {
      await registerWebhooks(kc, { ...options.register, url: options.register.url ?? (options.register.service ? undefined : webhookServer.url), caBundlePem: tls.caPem });
      // What the chart would install beside the webhooks: what only this operator writes, guarded by the API server.
      await applyGuards(kc, { writer: await whoAmI(kc) });
      webhooksRegistered = true;
    }
  } catch (err) {
    await stop();
    throw err;
  }
  log.info({ url: server.url, webhookUrl: webhookServer.url, identity, namespace }, 'operator serving');
  return {
    url: server.url,
    webhookUrl: webhookServer.url,
    // The CA served now: the serving files may have been read again since start.
    get caPem() {
      return tls.caPem;
    },
    identity,
    metrics,
    isLeader: () => elector.isLeader,
    informers,
    stop: () => stop(),
    crash: () => stop(false),
  };
}
