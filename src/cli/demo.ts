import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CreateRoleCommand, GetRolePolicyCommand, IAMClient } from '@aws-sdk/client-iam';
import { CreateBucketCommand, DeleteObjectCommand, GetObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { GetCallerIdentityCommand, STSClient } from '@aws-sdk/client-sts';
import { CoreV1Api, RbacAuthorizationV1Api, type KubeConfig } from '@kubernetes/client-node';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpError, type CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { pino } from 'pino';
import { parse } from 'yaml';
import { startAgentProxy } from '../agent/proxy.js';
import { applyGuards, whoAmI } from '../admission/guards.js';
import { registerWebhooks } from '../admission/registration.js';
import type { AgentApproval, AgentPolicy, AgentTask } from '../api/schema.js';
import { renderTrace } from '../audit/trace.js';
import { readAuditRecords, verifyChains } from '../audit/verify.js';
import { localAws, startLocalEnvironment, type LocalEnvironment } from '../controlplane/environment.js';
import { EMAIL_TOOLS, startDemoMcpServer, TICKET_TOOLS, type DemoMcpServer } from '../demo/mcp-servers.js';
import { ChainwardenError, errorMessage } from '../errors.js';
import { rawRequest, serverSideApply } from '../kube/raw.js';
import { KubeTaskClient } from '../kube/tasks.js';
import { createLogger } from '../log.js';
import { startOperator, type RunningOperator } from '../operator/operator.js';
import { tracingOption } from './operator.js';
import { noArguments } from './common.js';
import { runStoppable, signalExitCode, type SignalSource, type StopScope } from './lifecycle.js';

const EXAMPLES = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..', 'examples');
const NS = 'support';
const TASK = 'ticket-4711';
/** A second task, whose agent asks for what no rule allows. */
const SECOND_TASK = 'ticket-4712';
/** What the tickets MCP server takes; it is in Secret tickets-mcp, and the agent never sees it. */
const TICKETS_CREDENTIAL = 'tickets-api-key-d3m0';

let step = 0;
const say = (text: string) => process.stdout.write(`\n[${++step}] ${text}\n`);
const show = (text: string) => process.stdout.write(`    ${text.split('\n').join('\n    ')}\n`);

async function example<T>(file: string): Promise<T> {
  const obj = parse(await readFile(path.join(EXAMPLES, file), 'utf8')) as T & { metadata: { namespace?: string } };
  obj.metadata.namespace = NS;
  return obj;
}

async function waitFor<T>(what: string, read: () => Promise<T | undefined>, ok: (v: T) => boolean, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await read();
    if (v !== undefined && ok(v)) return v;
    if (Date.now() > deadline) throw new ChainwardenError('demo_timeout', `timed out waiting for ${what}`);
    await sleep(100);
  }
}

async function apply(kc: KubeConfig, plural: string, obj: { metadata: { name?: string; namespace?: string } }): Promise<void> {
  await serverSideApply(kc, `/apis/chainwarden.io/v1alpha1/namespaces/${obj.metadata.namespace ?? ''}/${plural}/${obj.metadata.name ?? ''}`, obj, 'chainwarden-demo');
}

interface Broker {
  get(p: string): Promise<{ status: number; body: Record<string, unknown> }>;
  post(p: string, body?: unknown): Promise<{ status: number; body: Record<string, unknown> }>;
}

/** The agent's side of the sidecar: every call presents the pod's local token, as injected containers do. */
function sidecarClient(url: string, localTokenFile: string): Broker {
  const call = async (method: string, p: string, body?: unknown) => {
    const authorization = (await readFile(localTokenFile, 'utf8')).trim();
    const res = await fetch(`${url}${p}`, { method, body: body === undefined ? undefined : JSON.stringify(body), headers: { 'content-type': 'application/json', authorization } });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  };
  return { get: (p) => call('GET', p), post: (p, b) => call('POST', p, b) };
}

const hopLine = (label: string, answer: Record<string, unknown>) =>
  `${label.padEnd(44)} → ${String(answer.decision)} [${((answer.reasons as { rule: string }[] | undefined) ?? []).map((r) => r.rule).join(', ')}]`;

/** Everything the story needs in the cluster and in AWS: policy, task, role, an approver. */
/** The bucket the demo's agent reads a customer record from through the gateway. */
const CUSTOMERS_BUCKET = 'support-customers';

async function setUp(env: LocalEnvironment, admin: KubeConfig, scope: StopScope): Promise<{ roleName: string; servers: DemoMcpServer[] }> {
  const core = admin.makeApiClient(CoreV1Api);
  await core.createNamespace({ body: { metadata: { name: NS } } });
  await core.createNamespacedServiceAccount({ namespace: NS, body: { metadata: { name: 'support-agent' } } });
  const aws = localAws(env);
  const iam = new IAMClient({ region: aws.region, endpoint: aws.iamEndpoint, credentials: aws.credentials });
  scope.onStop(() => iam.destroy());
  const role = await iam.send(new CreateRoleCommand({ RoleName: 'support-agent', AssumeRolePolicyDocument: JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: { AWS: 'arn:aws:iam::123456789012:root' }, Action: ['sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity'] }] }) }));
  // The customer records the agent may read, put there by the platform team.
  const s3 = new S3Client({ region: aws.region, endpoint: env.stsEndpoint, credentials: aws.credentials, forcePathStyle: true });
  scope.onStop(() => s3.destroy());
  await s3.send(new CreateBucketCommand({ Bucket: CUSTOMERS_BUCKET }));
  await s3.send(new PutObjectCommand({ Bucket: CUSTOMERS_BUCKET, Key: '4711.json', Body: '{"customer":"Ada","email":"ada@example.com"}' }));

  // The tickets and email systems' MCP servers; the tickets server takes a credential the agent never sees.
  await core.createNamespacedSecret({ namespace: NS, body: { metadata: { name: 'tickets-mcp' }, stringData: { token: TICKETS_CREDENTIAL } } });
  const tickets = await scope.start(startDemoMcpServer('tickets', TICKET_TOOLS, { bearer: TICKETS_CREDENTIAL }), (server) => server.close());
  const email = await scope.start(startDemoMcpServer('email', EMAIL_TOOLS), (server) => server.close());

  const policy = await example<AgentPolicy>('support-policy.yaml');
  // The emulator's account, instead of the example's; the MCP servers on this machine, instead of the cluster's.
  policy.spec.aws = { ...policy.spec.aws, allowedRoleArns: ['arn:aws:iam::123456789012:role/support-*'] };
  for (const system of policy.spec.systems ?? []) {
    if (system.name === 'tickets') system.mcp = { url: tickets.url, credentials: { secretRef: { name: 'tickets-mcp', key: 'token' }, prefix: 'Bearer ' }, resource: 'ticket/{ticketId}' };
    if (system.name === 'email') system.mcp = { url: email.url, resource: 'mail/{to}' };
  }
  await apply(admin, 'agentpolicies', policy);
  for (const name of [TASK, SECOND_TASK]) {
    const task = await example<AgentTask>('support-task.yaml');
    task.metadata.name = name;
    task.spec.credentials![0]!.aws.roleArn = role.Role?.Arn ?? '';
    await apply(admin, 'agenttasks', task);
  }

  const rbac = admin.makeApiClient(RbacAuthorizationV1Api);
  await rbac.createNamespacedRole({ namespace: NS, body: { metadata: { name: 'approvers' }, rules: [{ apiGroups: ['chainwarden.io'], resources: ['agentapprovals'], verbs: ['create', 'get', 'list'] }] } });
  await rbac.createNamespacedRoleBinding({
    namespace: NS,
    body: { metadata: { name: 'approvers' }, roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'approvers' }, subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'Group', name: 'support-leads' }] },
  });
  return { roleName: 'support-agent', servers: [tickets, email] };
}

/** An agent pod of `task`: admitted (the webhook injects its sidecar), bound, and its sidecar run here with a real pod token. */
async function agentPod(env: LocalEnvironment, operator: RunningOperator, task: string, pod: string, scope: StopScope) {
  const admin = env.adminKubeConfig();
  const core = admin.makeApiClient(CoreV1Api);
  const created = await core.createNamespacedPod({
    namespace: NS,
    body: { metadata: { name: pod, labels: { 'chainwarden.io/task': task } }, spec: { serviceAccountName: 'support-agent', containers: [{ name: 'agent', image: 'example.invalid/support-agent:1' }] } },
  });
  const bound = await waitFor('the task to bind', () => new KubeTaskClient(admin).read(NS, task), (t) => t.status?.state === 'Bound');
  // No kubelet here: the agent runs on this machine with a token from the real TokenRequest API.
  const token = await core.createNamespacedServiceAccountToken({
    name: 'support-agent',
    namespace: NS,
    body: { spec: { audiences: ['chainwarden'], expirationSeconds: 600, boundObjectRef: { apiVersion: 'v1', kind: 'Pod', name: pod, uid: created.metadata?.uid } } },
  });
  const tokenFile = path.join(env.stateDir, `${pod}-token`);
  await writeFile(tokenFile, token.status?.token ?? '', { mode: 0o600 });
  const localTokenFile = path.join(env.stateDir, `${pod}-local-token`);
  await rm(localTokenFile, { force: true });
  const sidecar = await scope.start(
    startAgentProxy({ brokerUrl: operator.url, caPem: operator.caPem, tokenFile, localTokenFile, listen: { host: '127.0.0.1', port: 0 }, awsListen: { host: '127.0.0.1', port: 0 }, log: createLogger({ level: 'silent' }) }),
    (started) => started.close(),
  );
  const agent = sidecarClient(sidecar.url, localTokenFile);
  // What an unmodified SDK in the pod does: AWS_ENDPOINT_URL is the sidecar's AWS listener, and its keys come from the container-credentials endpoint.
  const creds = await agent.get('/v1/credentials');
  const sdk = { region: 'us-east-1', endpoint: sidecar.awsUrl, credentials: { accessKeyId: String(creds.body.AccessKeyId), secretAccessKey: String(creds.body.SecretAccessKey), sessionToken: String(creds.body.Token) }, maxAttempts: 1 };
  // Its MCP client reaches each system at the sidecar's /mcp/<system>, with the pod's local token.
  const mcp = async (system: string) => {
    const client = new Client({ name: 'support-agent', version: '1.0.0' });
    const authorization = `Bearer ${(await readFile(localTokenFile, 'utf8')).trim()}`;
    return scope.start(
      client.connect(new StreamableHTTPClientTransport(new URL(`${sidecar.url}/mcp/${system}`), { requestInit: { headers: { authorization } } })).then(() => client),
      (connected) => connected.close(),
    );
  };
  return { pod: created, bound, agent, creds, sdk, mcp };
}

/** A tool call's answer on one line: its text and hop, or the gateway's refusal. */
async function toolCall(client: Client, name: string, args: Record<string, string>, parentHop?: string): Promise<{ line: string; hopId?: string; code?: number }> {
  try {
    const result = (await client.callTool({ name, arguments: args, ...(parentHop ? { _meta: { 'chainwarden.io/parentHop': parentHop } } : {}) })) as CallToolResult;
    const hopId = ((result._meta?.['chainwarden.io/hopId'] as string | undefined) ?? '');
    const text = result.content.map((c) => (c.type === 'text' ? c.text : '')).join(' ');
    return { line: `→ ${text}  (hop ${hopId})`, hopId };
  } catch (err) {
    if (err instanceof McpError) return { line: `→ error ${err.code}: ${err.message.replace(/^MCP error -?\d+: /, '')}`, code: err.code };
    throw err;
  }
}

/** Everything the story starts (servers, sidecars, clients) is stopped through `scope` as soon as it has started. */
async function story(env: LocalEnvironment, operator: RunningOperator, auditFile: string, scope: StopScope): Promise<void> {
  const admin = env.adminKubeConfig();
  const tasks = new KubeTaskClient(admin);

  say('A platform team applies the support agent\'s AgentPolicy and an AgentTask for ticket 4711');
  const { roleName, servers } = await setUp(env, admin, scope);
  const [tickets, email] = servers;
  show('AgentPolicy support-agent: read and comment on tickets; refunds need a person; never payments admin; no email after reading PII');
  show('AgentTask ticket-4711: ttl 30m, role support-agent, 15m sessions, limits 40 hops / depth 4');

  say('The agent pod is admitted: the webhook injects its sidecar and projected token; the task binds to it');
  const { pod, bound, agent, creds, sdk, mcp } = await agentPod(env, operator, TASK, 'agent-0', scope);
  show(`sidecar injected: ${pod.spec?.initContainers?.map((c) => c.name).join(', ') ?? 'none'}; AWS_CONTAINER_CREDENTIALS_FULL_URI=${pod.spec?.containers[0]?.env?.find((e) => e.name === 'AWS_CONTAINER_CREDENTIALS_FULL_URI')?.value ?? ''}`);
  show(`state ${bound.status?.state ?? ''}  ${bound.status?.spiffeID ?? ''}  pods ${bound.status?.boundPods?.map((p) => p.name).join(', ') ?? ''}`);
  const sts = new STSClient(sdk);
  const s3 = new S3Client(sdk);
  scope.onStop(() => {
    sts.destroy();
    s3.destroy();
  });
  const ticketsMcp = await mcp('tickets');
  const emailMcp = await mcp('email');
  say('The agent calls AWS through the sidecar: its SDK holds placeholder keys; the broker decides and signs each call');
  show(`placeholder key ${String(creds.body.AccessKeyId)} (AWS refuses it; the task's session never leaves the broker)`);
  const me = await sts.send(new GetCallerIdentityCommand({}));
  show(`GetCallerIdentity: ${me.Arn ?? ''}`);
  const record = await s3.send(new GetObjectCommand({ Bucket: CUSTOMERS_BUCKET, Key: '4711.json' }));
  show(`s3://${CUSTOMERS_BUCKET}/4711.json: ${await record.Body?.transformToString()} (a PII read: the bucket is system customer-records)`);

  say('Each tool call is a hop: the agent\'s MCP client calls the tickets server through the sidecar, which asks the broker first');
  show(`tools/list on tickets: ${(await ticketsMcp.listTools()).tools.map((t) => t.name).join(', ')} (only tools some rule could allow)`);
  const read = await toolCall(ticketsMcp, 'read', { ticketId: '4711' });
  show(`tickets read {ticketId: 4711} ${read.line}`);
  const comment = await toolCall(ticketsMcp, 'comment', { ticketId: '4711', text: 'Looking into your refund.' }, read.hopId);
  show(`  └ tickets comment ${comment.line}`);
  const seen = tickets?.calls.at(-1)?.headers;
  show(`the tickets server got Authorization ${seen?.authorization === `Bearer ${TICKETS_CREDENTIAL}` ? 'from Secret tickets-mcp (the agent never had it)' : 'MISSING'} and a Txn-Token: ${await describeTxnToken(operator, String(seen?.['txn-token'] ?? ''))}`);
  const refund = await agent.post('/v1/hops', { tool: 'payments', action: 'refund', resource: 'order/981', attributes: { amount: 42 }, parentHop: read.hopId });
  show(hopLine('  └ payments refund order/981 (42)', refund.body));

  say('The refund waits for a person: alice (support-leads) approves it through the API server');
  const alice = await env.kubeConfigFor('alice@example.com', ['support-leads']);
  const approval = await example<AgentApproval>('support-approval.yaml');
  approval.spec.hopId = String(refund.body.hopId);
  const created = await rawRequest(alice, 'POST', `/apis/chainwarden.io/v1alpha1/namespaces/${NS}/agentapprovals`, approval);
  if (created.status !== 201) throw new ChainwardenError('demo_failed', `creating the approval: ${JSON.stringify(created.body)}`);
  show(`AgentApproval ticket-4711-refund created by alice; admission stamped approver ${JSON.stringify((created.body as AgentApproval).spec.approver)}`);
  const approved = await waitFor('the approval to land', () => agent.get(`/v1/hops/${String(refund.body.hopId)}`).then((r) => r.body), (b) => b.decision !== 'pending_approval');
  show(hopLine('  └ payments refund order/981 (42)', approved));

  say('The agent emails the customer after reading PII, a real tools/call on the email server: a violation; the task is stopped');
  const sent = await toolCall(emailMcp, 'send', { to: 'ada@example.com', body: 'Here is everything we hold on you.' }, read.hopId);
  show(`  └ email send {to: ada@example.com} ${sent.line}`);
  show(`the email server received ${email?.calls.length ?? 0} calls`);
  if (sent.code !== -32001 || (email?.calls.length ?? 0) > 0) throw new ChainwardenError('demo_failed', 'the email after reading PII was not refused by the gateway');
  const revoked = await waitFor('revocation', () => tasks.read(NS, TASK), (t) => t.status?.conditions?.some((c) => c.type === 'Revoked' && c.status === 'True') ?? false);
  show(`state ${revoked.status?.state ?? ''}: ${revoked.status?.violation?.message ?? ''}`);
  show(`hops allowed ${revoked.status?.hops?.allowed ?? 0}, denied ${revoked.status?.hops?.denied ?? 0}; audit head ${revoked.status?.audit?.head?.slice(0, 16) ?? ''}… (${revoked.status?.audit?.count ?? 0} records)`);

  say('Everything the task held is refused');
  const after = await agent.get('/v1/credentials');
  show(`GET /v1/credentials → ${after.status} ${JSON.stringify(after.body)}`);
  const nextHop = await agent.post('/v1/hops', { tool: 'tickets', action: 'read', resource: 'ticket/1' });
  show(`POST /v1/hops → ${nextHop.status} ${String((nextHop.body.error as { code?: string } | undefined)?.code)}`);
  const aws = localAws(env);
  const iam = new IAMClient({ region: aws.region, endpoint: aws.iamEndpoint, credentials: aws.credentials });
  const deny = await iam.send(new GetRolePolicyCommand({ RoleName: roleName, PolicyName: 'chainwarden-revocations' }));
  iam.destroy();
  show(`IAM role ${roleName}, inline policy chainwarden-revocations: ${decodeURIComponent(deny.PolicyDocument ?? '')}`);
  const lateRead = await s3.send(new GetObjectCommand({ Bucket: CUSTOMERS_BUCKET, Key: '4711.json' })).then(
    () => 'allowed',
    (err: Error) => `${err.name}: ${err.message}`,
  );
  show(`S3 GetObject through the gateway → ${lateRead}`);
  const lateTool = await toolCall(ticketsMcp, 'read', { ticketId: '4711' });
  show(`tools/call read on tickets → ${lateTool.line.replace(/^→ /, '')}`);
  if (after.status !== 403 || nextHop.status !== 403 || lateRead === 'allowed' || lateTool.code === undefined) throw new ChainwardenError('demo_failed', 'the task\'s credentials were not refused after revocation');

  say('chainwarden trace support/ticket-4711: the hop tree from the audit stream, checked against the task');
  // Records reach the stream once their head is in the task's status; the revocation may still be adding some.
  const verified = async () => {
    const final = await tasks.read(NS, TASK);
    const { chains, breaks } = verifyChains(readAuditRecords(await readFile(auditFile, 'utf8').catch(() => '')).filter((r) => r.record.task === `${NS}/${TASK}`));
    const chain = chains.find((c) => c.taskUid === final?.metadata.uid);
    return { chain, breaks, matches: breaks.length === 0 && chain !== undefined && chain.head === final?.status?.audit?.head };
  };
  const { chain, breaks, matches } = await waitFor('the audit stream to catch up with the task', verified, (v) => v.matches, 10_000).catch(() => verified());
  show(matches ? `chain verified: ${chain?.count ?? 0} records, head matches the task's status` : `CHAIN NOT VERIFIED (${breaks.length} breaks)`);
  show(renderTrace(chain?.records ?? []));
  if (!matches) throw new ChainwardenError('demo_failed', 'the audit chain does not verify');

  say('Another task\'s agent tries to delete the customer record in S3: no rule allows it, so AWS never sees the call');
  await deniedAwsCall(env, operator, scope);
}

/** A second task's agent asks for what no rule allows: its SDK raises AccessDenied naming the rule and the hop. */
async function deniedAwsCall(env: LocalEnvironment, operator: RunningOperator, scope: StopScope): Promise<void> {
  const { sdk } = await agentPod(env, operator, SECOND_TASK, 'agent-1', scope);
  const s3 = new S3Client(sdk);
  scope.onStop(() => s3.destroy());
  const outcome = await s3.send(new DeleteObjectCommand({ Bucket: CUSTOMERS_BUCKET, Key: '4711.json' })).then(
    () => 'allowed',
    (err: Error) => `${err.name}: ${err.message}`,
  );
  show(`S3 DeleteObject s3://${CUSTOMERS_BUCKET}/4711.json → ${outcome}`);
  if (!outcome.startsWith('AccessDenied')) throw new ChainwardenError('demo_failed', 'the S3 delete was not denied');
  const still = await waitFor('the record to be there', async () => {
    const aws = localAws(env);
    const admin = new S3Client({ region: aws.region, endpoint: env.stsEndpoint, credentials: aws.credentials, forcePathStyle: true });
    try {
      return await (await admin.send(new GetObjectCommand({ Bucket: CUSTOMERS_BUCKET, Key: '4711.json' }))).Body?.transformToString();
    } finally {
      admin.destroy();
    }
  }, () => true);
  show(`the record is untouched in the emulator: ${still ?? ''}`);
}

/** The transaction token a server received, checked as a downstream service would: against the broker's /keys. */
async function describeTxnToken(operator: RunningOperator, token: string): Promise<string> {
  try {
    const keys = (await (await fetchBroker(operator, '/keys')).json()) as Parameters<typeof createLocalJWKSet>[0];
    const { payload } = await jwtVerify(token, createLocalJWKSet(keys), { typ: 'txntoken+jwt' });
    const tctx = payload.tctx as { hopId?: string; depth?: number; dataClassesTouched?: string[] };
    return `verified against /keys; scope ${String(payload.scope)}, hop ${tctx.hopId ?? ''}, depth ${tctx.depth ?? 0}, data classes [${(tctx.dataClassesTouched ?? []).join(', ')}]`;
  } catch (err) {
    return `NOT VERIFIED (${(err as Error).message})`;
  }
}

/** A GET to the broker, trusting its CA. */
async function fetchBroker(operator: RunningOperator, p: string): Promise<{ json(): Promise<unknown> }> {
  const { request } = await import('node:https');
  return new Promise((resolve, reject) => {
    const req = request(new URL(p, operator.url), { ca: operator.caPem }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ json: () => Promise.resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown) }));
    });
    req.on('error', reject);
    req.end();
  });
}

interface Stops {
  stop(): Promise<void>;
}

/** What the demo starts and the story it tells, and where its stop signals come from; tests give fakes. */
export interface DemoParts<Env extends Stops, Operator extends Stops> {
  startEnvironment(): Promise<Env>;
  startOperator(env: Env): Promise<Operator>;
  /** Registers with `scope` everything it starts, as soon as each has started. */
  tell(env: Env, operator: Operator, scope: StopScope): Promise<void>;
  signals?: SignalSource;
}

const auditFileOf = (env: LocalEnvironment) => path.join(env.stateDir, 'audit.jsonl');

const localParts: DemoParts<LocalEnvironment, RunningOperator> = {
  startEnvironment: () => startLocalEnvironment({ progress: (m) => process.stdout.write(`    · ${m}\n`) }),
  startOperator: (env) => {
    const log = createLogger({ name: 'operator', level: 'info' }, pino.destination({ dest: path.join(env.stateDir, 'operator.log'), sync: false }));
    return startOperator({ kc: env.adminKubeConfig(), log, aws: localAws(env), auditFile: auditFileOf(env), tracing: tracingOption() });
  },
  tell: async (env, operator, scope) => {
    await registerWebhooks(env.adminKubeConfig(), { url: operator.webhookUrl, caBundlePem: operator.caPem });
    // The operator runs as the admin here: the guards name it the one writer.
    await applyGuards(env.adminKubeConfig(), { writer: await whoAmI(env.adminKubeConfig()) });
    await story(env, operator, auditFileOf(env), scope);
  },
};

/** `chainwarden demo`: the whole story on one machine, on the embedded default. */
export async function runDemo(args: string[]): Promise<number> {
  noArguments('demo', args);
  // This machine's Node is older than the SDK's next major wants; that notice is not part of the story.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
  process.stdout.write('chainwarden demo: a local control plane, the STS emulator, the operator, and one agent task\n');
  return playDemo(localParts);
}

/**
 * Starts the environment and the operator and tells the story. Everything started is stopped
 * however it ends: done, failed at any step (set-up included), or stopped by SIGINT or SIGTERM,
 * which ends the demo at once with the status a shell gives that signal.
 */
export async function playDemo<Env extends Stops, Operator extends Stops>(parts: DemoParts<Env, Operator>): Promise<number> {
  const started = Date.now();
  const ended = await runStoppable(
    async (scope) => {
      const env = await scope.start(parts.startEnvironment(), (running) => running.stop());
      const operator = await scope.start(parts.startOperator(env), (running) => running.stop());
      await scope.step(parts.tell(env, operator, scope));
      process.stdout.write(`\ndone in ${((Date.now() - started) / 1000).toFixed(1)}s\n`);
    },
    {
      signals: parts.signals,
      onSignal: (signal) => process.stdout.write(`\nstopping (${signal}; a second one quits without waiting)\n`),
      onStopError: (err) => process.stderr.write(`while stopping: ${errorMessage(err)}\n`),
    },
  );
  return ended.signal ? signalExitCode(ended.signal) : 0;
}
