/**
 * `npm run soak`: thousands of tasks, steady hop and MCP gateway traffic, two operator replicas
 * behind a round-robin proxy (as a Service would be), the leader SIGKILLed on a schedule and
 * restarted, etcd frozen once. Then what must hold whatever failed and when:
 *
 * - every task that ended is revoked (the Revoked condition, and the broker refuses its token);
 * - every task's audit chain, gathered from every replica's audit file, verifies and ends at the
 *   head its status holds;
 * - no hop sent after its task ended was answered `allow`;
 * - the replicas' memory does not grow over the run.
 *
 * Writes one JSON report to stdout and soak-results.json; exits 1 when a guarantee failed.
 * `--short` (or CHAINWARDEN_SOAK_SHORT=1) is the two-minute version CI runs.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { Agent, request } from 'node:https';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { KubeConfig } from '@kubernetes/client-node';
import type { AgentTask } from '../api/schema.js';
import { checkHead, readAuditRecords, verifyChains, type AuditEntry } from '../audit/verify.js';
import { startLocalEnvironment, type LocalEnvironment } from '../controlplane/environment.js';
import { freePort } from '../controlplane/ports.js';
import { startDemoMcpServer, TICKET_TOOLS } from '../demo/mcp-servers.js';
import { rawRequest } from '../kube/raw.js';
import { https, log, rssMiB, servingFiles, setUpPolicy, startBroker, startSidecar, type Broker, type Serving } from './harness.js';

const NS = 'soak';
const MCP_CREDENTIAL = 'soak-mcp-credential';
const TASKS = `/apis/chainwarden.io/v1alpha1/namespaces/${NS}/agenttasks`;

interface Plan {
  seconds: number;
  tasksPerSecond: number;
  killEverySeconds: number;
  freezeEtcdAtSeconds: number;
  freezeSeconds: number;
  steadyHopsPerSecond: number;
  gatewayCallsPerSecond: number;
}

const FULL: Plan = { seconds: 600, tasksPerSecond: 3.5, killEverySeconds: 60, freezeEtcdAtSeconds: 250, freezeSeconds: 10, steadyHopsPerSecond: 30, gatewayCallsPerSecond: 8 };
const SHORT: Plan = { seconds: 120, tasksPerSecond: 2.5, killEverySeconds: 40, freezeEtcdAtSeconds: 55, freezeSeconds: 10, steadyHopsPerSecond: 20, gatewayCallsPerSecond: 5 };

/**
 * A TCP round-robin over the replicas that are up, as a Service's endpoints: a replica that is
 * down gets no new connections; connections open to it when it dies break, as they would.
 */
class RoundRobin {
  readonly backends: { port: number; up: boolean }[] = [];
  private next = 0;
  private server: net.Server | undefined;
  port = 0;

  async listen(): Promise<void> {
    this.server = net.createServer((client) => this.route(client, 0));
    await new Promise<void>((resolve) => this.server?.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as net.AddressInfo).port;
  }

  private route(client: net.Socket, tried: number): void {
    const up = this.backends.filter((b) => b.up);
    const backend = up[this.next++ % Math.max(1, up.length)];
    if (!backend || tried >= this.backends.length) {
      client.destroy();
      return;
    }
    const upstream = net.connect(backend.port, '127.0.0.1');
    let connected = false;
    upstream.once('connect', () => {
      connected = true;
      client.pipe(upstream).pipe(client);
    });
    upstream.once('error', () => {
      // Refused before it connected: the replica is gone; the next one takes the connection.
      if (!connected) this.route(client, tried + 1);
      else client.destroy();
    });
    client.once('error', () => upstream.destroy());
    client.once('close', () => upstream.destroy());
    upstream.once('close', () => {
      if (connected) client.destroy();
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}

/** One replica slot: its ports stay, the process in it is replaced when killed. */
interface Slot {
  name: string;
  port: number;
  webhookPort: number;
  broker?: Broker;
  generation: number;
  auditFiles: string[];
  /** Each process's log: warnings and worse. */
  logFiles: string[];
}

interface HopSent {
  task: string;
  sentAt: number;
  /** Sent after the agent completed, violated or outlived its task: must never be allowed. */
  afterEnd?: boolean;
  decision?: string;
  status: number;
  hopId?: string;
}

/** An agent's view of the broker, through the proxy: keep-alive HTTPS, its pod token. */
class AgentClient {
  private readonly agent: Agent;
  constructor(
    private readonly url: string,
    ca: string,
  ) {
    this.agent = new Agent({ keepAlive: true, ca, maxSockets: 64 });
  }

  call(method: string, p: string, token: string, body?: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
    return new Promise((resolve) => {
      const req = request(new URL(p, this.url), { method, agent: this.agent, timeout: 10_000, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' } }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => {
          let parsed: Record<string, unknown> = {};
          try {
            parsed = text ? (JSON.parse(text) as Record<string, unknown>) : {};
          } catch {
            // not JSON
          }
          resolve({ status: res.statusCode ?? 0, body: parsed });
        });
        res.on('error', () => resolve({ status: 0, body: {} }));
      });
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', () => resolve({ status: 0, body: {} }));
      req.end(body === undefined ? undefined : JSON.stringify(body));
    });
  }

  destroy(): void {
    this.agent.destroy();
  }
}

function setUp(env: LocalEnvironment, kc: KubeConfig, mcpUrl: string): Promise<string> {
  return setUpPolicy(env, kc, {
    namespace: NS,
    name: 'soak',
    mcpUrl,
    mcpCredential: MCP_CREDENTIAL,
    rules: [
      { name: 'read-and-comment', effect: 'Allow', tools: ['tickets'], actions: ['read', 'comment'], resources: ['ticket/*'] },
      { name: 'reply-by-email', effect: 'Allow', tools: ['email'], actions: ['send'] },
      { name: 'no-exfiltration', effect: 'Deny', tools: ['email'], actions: ['send'], when: { afterDataClasses: ['pii'] } },
    ],
    onViolation: 'Revoke',
  });
}

/** POSTs `obj`, or takes the one a retried POST already made; the object as stored. */
async function ensure(kc: KubeConfig, collection: string, obj: { metadata: { name: string } }): Promise<Record<string, unknown>> {
  const created = await rawRequest(kc, 'POST', collection, obj);
  if (created.status < 300) return created.body as Record<string, unknown>;
  if (created.status !== 409) throw new Error(`POST ${collection}: ${created.status}`);
  const existing = await rawRequest(kc, 'GET', `${collection}/${obj.metadata.name}`);
  if (existing.status >= 300) throw new Error(`GET ${collection}/${obj.metadata.name}: ${existing.status}`);
  return existing.body as Record<string, unknown>;
}

/** The task, its pod and a pod token from the TokenRequest API; safe to retry. */
async function createAgent(kc: KubeConfig, name: string, roleArn: string, ttl: string, delivery: 'Direct' | 'Gateway'): Promise<string> {
  await ensure(kc, TASKS, {
    apiVersion: 'chainwarden.io/v1alpha1',
    kind: 'AgentTask',
    metadata: { name, namespace: NS },
    spec: { serviceAccountName: 'agent', policyRef: { name: 'soak' }, ttl, credentials: [{ name: 'default', aws: { roleArn, duration: '15m', delivery } }] },
  } as { metadata: { name: string } });
  const pod = (await ensure(kc, `/api/v1/namespaces/${NS}/pods`, {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: `${name}-pod`, labels: { 'chainwarden.io/task': name } },
    spec: { serviceAccountName: 'agent', containers: [{ name: 'agent', image: 'example.invalid/agent:1' }] },
  } as { metadata: { name: string } })) as { metadata: { uid: string } };
  const answer = await rawRequest(kc, 'POST', `/api/v1/namespaces/${NS}/serviceaccounts/agent/token`, {
    apiVersion: 'authentication.k8s.io/v1',
    kind: 'TokenRequest',
    spec: { audiences: ['chainwarden'], expirationSeconds: 7200, boundObjectRef: { apiVersion: 'v1', kind: 'Pod', name: `${name}-pod`, uid: pod.metadata.uid } },
  });
  if (answer.status >= 300) throw new Error(`TokenRequest for ${name}: ${answer.status}`);
  return (answer.body as { status: { token: string } }).status.token;
}

/** Retries a write the control plane may refuse while it is frozen or restarting. */
async function persist<T>(what: string, work: () => Promise<T>, until: number): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await work();
    } catch (err) {
      if (Date.now() > until) throw err;
      await sleep(Math.min(2000, 100 * 2 ** attempt));
      if (attempt > 0 && attempt % 5 === 0) log(`${what}: still retrying (${String(err).slice(0, 120)})`);
    }
  }
}

/** etcd's process: the one running the cached etcd with a data directory in this environment's state. */
function etcdPid(stateDir: string): number {
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmd = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (path.basename(cmd[0] ?? '') === 'etcd' && cmd.some((a) => a.includes(stateDir))) return Number(entry);
    } catch {
      // gone
    }
  }
  throw new Error('etcd process not found');
}

async function leaderOf(slots: Slot[]): Promise<Slot | undefined> {
  for (const slot of slots) {
    if (!slot.broker) continue;
    const metrics = await https(slot.broker, 'GET', '/metrics').catch(() => undefined);
    if (typeof metrics?.body === 'string' && /^chainwarden_leader 1$/m.test(metrics.body)) return slot;
  }
  return undefined;
}

async function main(): Promise<void> {
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
  const short = process.argv.includes('--short') || process.env.CHAINWARDEN_SOAK_SHORT === '1';
  const plan = short ? SHORT : FULL;
  const env = await startLocalEnvironment({ progress: log });
  const tickets = await startDemoMcpServer('tickets', TICKET_TOOLS, { bearer: MCP_CREDENTIAL });
  const brokerProxy = new RoundRobin();
  const webhookProxy = new RoundRobin();
  await Promise.all([brokerProxy.listen(), webhookProxy.listen()]);
  const serving: Serving = await servingFiles(env.stateDir);
  const slots: Slot[] = await Promise.all(['a', 'b'].map(async (name) => ({ name, port: await freePort(), webhookPort: await freePort(), generation: 0, auditFiles: [], logFiles: [] })));
  const front = { url: `https://127.0.0.1:${brokerProxy.port}`, ca: serving.caPem };
  const agents = new AgentClient(front.url, serving.caPem);
  const rss: { at: number; slot: string; generation: number; rssMiB: number }[] = [];
  const events: { at: number; what: string }[] = [];
  const hopsSent: HopSent[] = [];
  const counts = { tasksCreated: 0, createFailures: 0, bound: 0, bindTimeouts: 0, completed: 0, violated: 0, leftToExpire: 0, hopErrors: 0, gatewayOk: 0, gatewayErrors: 0, leaderKills: 0, unexpectedExits: 0, abandoned: 0 };
  const tokens = new Map<string, string>();
  const abandoned = new Set<string>();
  const started = Date.now();
  const elapsed = () => Math.round((Date.now() - started) / 1000);

  const launch = async (slot: Slot) => {
    slot.generation += 1;
    const auditFile = path.join(env.stateDir, `audit-${slot.name}-${slot.generation}.jsonl`);
    slot.auditFiles.push(auditFile);
    const logFile = path.join(env.stateDir, `replica-${slot.name}-${slot.generation}.log`);
    slot.logFiles.push(logFile);
    const broker = await startBroker(env, { serving, port: slot.port, webhookPort: slot.webhookPort, webhookUrl: `https://127.0.0.1:${webhookProxy.port}`, auditFile, logFile, exitIsFatal: false });
    slot.broker = broker;
    // A replica that dies on its own is a finding to report; like one killed, it is started again.
    broker.child.once('exit', (code, signal) => {
      if (slot.broker !== broker) return;
      counts.unexpectedExits += 1;
      events.push({ at: elapsed(), what: `${slot.name}#${slot.generation} exited on its own (${signal ?? `code ${String(code)}`})` });
      kill(slot);
    });
    for (const proxy of [brokerProxy, webhookProxy]) {
      const port = proxy === brokerProxy ? slot.port : slot.webhookPort;
      const backend = proxy.backends.find((b) => b.port === port);
      if (backend) backend.up = true;
      else proxy.backends.push({ port, up: true });
    }
  };
  const kill = (slot: Slot) => {
    for (const b of [...brokerProxy.backends, ...webhookProxy.backends]) if (b.port === slot.port || b.port === slot.webhookPort) b.up = false;
    slot.broker?.child.kill('SIGKILL');
    slot.broker = undefined;
  };

  const stop = async (slot: Slot) => {
    const broker = slot.broker;
    if (!broker) return;
    for (const b of [...brokerProxy.backends, ...webhookProxy.backends]) if (b.port === slot.port || b.port === slot.webhookPort) b.up = false;
    slot.broker = undefined;
    const exited = new Promise((resolve) => broker.child.once('exit', resolve));
    broker.child.kill('SIGTERM');
    if ((await Promise.race([exited, sleep(30_000).then(() => 'late')])) === 'late') {
      events.push({ at: elapsed(), what: `${slot.name}#${slot.generation} did not stop within 30 s of SIGTERM` });
      broker.child.kill('SIGKILL');
    }
  };

  let stopping = false;
  const background: Promise<void>[] = [];
  try {
    for (const slot of slots) await launch(slot);
    const kc = env.adminKubeConfig();
    const roleArn = await setUp(env, kc, tickets.url);
    const deadline = started + (plan.seconds + 600) * 1000;

    // Memory, every 5 s, of whatever process is in each slot.
    background.push(
      (async () => {
        while (!stopping) {
          for (const slot of slots) {
            if (slot.broker) {
              const value = await rssMiB(slot.broker.pid).catch(() => undefined);
              if (value !== undefined) rss.push({ at: elapsed(), slot: slot.name, generation: slot.generation, rssMiB: value });
            }
          }
          await sleep(5000);
        }
      })(),
    );

    // Steady hops from long-lived tasks, and MCP tool calls through a real sidecar.
    const steady = await Promise.all(Array.from({ length: 4 }, (_, i) => createAgent(kc, `steady-${i}`, roleArn, '2h', 'Direct')));
    const gatewayToken = await createAgent(kc, 'gateway-0', roleArn, '2h', 'Gateway');
    for (const [i, token] of steady.entries()) tokens.set(`steady-${i}`, token);
    tokens.set('gateway-0', gatewayToken);
    const sidecar = await startSidecar(front, gatewayToken);
    background.push(
      (async () => {
        let n = 0;
        while (!stopping) {
          const i = n++ % steady.length;
          const sentAt = Date.now();
          void agents.call('POST', '/v1/hops', steady[i] ?? '', { tool: 'tickets', action: 'read', resource: `ticket/${n}` }).then((a) => {
            hopsSent.push({ task: `steady-${i}`, sentAt, decision: a.body.decision as string | undefined, status: a.status });
            if (a.status !== 200) counts.hopErrors += 1;
          });
          await sleep(1000 / plan.steadyHopsPerSecond);
        }
      })(),
    );
    background.push(
      (async () => {
        const { request: httpRequest } = await import('node:http');
        const headers = { authorization: `Bearer ${sidecar.localToken}`, accept: 'application/json, text/event-stream', 'content-type': 'application/json', 'mcp-protocol-version': '2025-06-18' };
        const call = (message: unknown, session?: string) =>
          new Promise<{ status: number; session?: string; text: string }>((resolve) => {
            const req = httpRequest(`${sidecar.url}/mcp/tickets`, { method: 'POST', timeout: 10_000, headers: { ...headers, ...(session ? { 'mcp-session-id': session } : {}) } }, (res) => {
              let text = '';
              res.on('data', (c: Buffer) => (text += c.toString()));
              res.on('end', () => resolve({ status: res.statusCode ?? 0, session: res.headers['mcp-session-id'] as string | undefined, text }));
            });
            req.on('timeout', () => req.destroy(new Error('timeout')));
            req.on('error', () => resolve({ status: 0, text: '' }));
            req.end(JSON.stringify(message));
          });
        let session: string | undefined;
        let id = 0;
        while (!stopping) {
          if (!session) {
            const init = await call({ jsonrpc: '2.0', id: ++id, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'soak', version: '1' } } });
            session = init.session;
            if (session) await call({ jsonrpc: '2.0', method: 'notifications/initialized' }, session);
          }
          const answer = await call({ jsonrpc: '2.0', id: ++id, method: 'tools/call', params: { name: 'read', arguments: { ticketId: String(id) } } }, session);
          if (answer.status === 200 && !answer.text.includes('"error"') && !answer.text.includes('"isError":true')) counts.gatewayOk += 1;
          else counts.gatewayErrors += 1;
          await sleep(1000 / plan.gatewayCallsPerSecond);
        }
      })(),
    );

    // Faults: the leader killed on a schedule and restarted 2 s later; etcd frozen once.
    background.push(
      (async () => {
        let frozen = false;
        let nextKill = plan.killEverySeconds;
        while (!stopping) {
          if (!frozen && elapsed() >= plan.freezeEtcdAtSeconds) {
            frozen = true;
            const pid = etcdPid(env.stateDir);
            events.push({ at: elapsed(), what: `etcd frozen for ${plan.freezeSeconds} s` });
            process.kill(pid, 'SIGSTOP');
            await sleep(plan.freezeSeconds * 1000);
            process.kill(pid, 'SIGCONT');
            events.push({ at: elapsed(), what: 'etcd resumed' });
          }
          for (const slot of slots.filter((s) => !s.broker)) {
            // As a Deployment would: the killed replica's pod comes back.
            await launch(slot).then(
              () => events.push({ at: elapsed(), what: `${slot.name}#${slot.generation} started` }),
              (err: unknown) => events.push({ at: elapsed(), what: `restart of ${slot.name} failed, retrying: ${String(err)}` }),
            );
          }
          if (elapsed() >= nextKill && slots.every((s) => s.broker)) {
            nextKill += plan.killEverySeconds;
            const leader = await leaderOf(slots);
            if (leader) {
              events.push({ at: elapsed(), what: `leader ${leader.name}#${leader.generation} SIGKILLed` });
              kill(leader);
              counts.leaderKills += 1;
              await sleep(2000);
            }
          }
          await sleep(500);
        }
      })(),
    );

    // Churn: tasks created at a fixed rate; each binds, makes hops, then completes (80%),
    // violates its policy (10%) or is left to expire (10%), and then tries one more hop.
    const churn: Promise<void>[] = [];
    const total = Math.round(plan.seconds * plan.tasksPerSecond);
    log(`soak: ${total} tasks over ${plan.seconds} s, leader killed every ${plan.killEverySeconds} s, etcd frozen at ${plan.freezeEtcdAtSeconds} s`);
    for (let i = 0; i < total; i++) {
      const due = started + (i / plan.tasksPerSecond) * 1000;
      if (due > Date.now()) await sleep(due - Date.now());
      const name = `task-${i}`;
      const kind = i % 10 === 3 ? 'violate' : i % 10 === 7 ? 'expire' : 'complete';
      churn.push(
        (async () => {
          let token: string;
          try {
            token = await persist(`create ${name}`, () => createAgent(kc, name, roleArn, kind === 'expire' ? '45s' : '30m', 'Direct'), deadline);
          } catch {
            counts.createFailures += 1;
            return;
          }
          counts.tasksCreated += 1;
          tokens.set(name, token);
          const bindBy = Date.now() + 90_000;
          for (;;) {
            const creds = await agents.call('GET', '/v1/credentials', token);
            if (creds.status === 200) break;
            if (Date.now() > bindBy) {
              counts.bindTimeouts += 1;
              abandoned.add(name);
              return;
            }
            await sleep(200);
          }
          counts.bound += 1;
          const hop = async (body: Record<string, unknown>, afterEnd = false) => {
            const sentAt = Date.now();
            const answer = await agents.call('POST', '/v1/hops', token, body);
            hopsSent.push({ task: name, sentAt, afterEnd, decision: answer.body.decision as string | undefined, status: answer.status, hopId: answer.body.hopId as string | undefined });
            if (answer.status === 0 || answer.status >= 500) counts.hopErrors += 1;
            return answer;
          };
          const read = await hop({ tool: 'tickets', action: 'read', resource: `ticket/${i}` });
          await hop({ tool: 'tickets', action: 'comment', resource: `ticket/${i}`, parentHop: read.body.hopId });
          // Whether the agent saw its task end; only then is its next hop one that must be refused.
          let ended = false;
          if (kind === 'violate') {
            const sent = await hop({ tool: 'email', action: 'send', resource: 'someone@example.com' });
            ended = sent.body.decision === 'deny';
            if (ended) counts.violated += 1;
          } else if (kind === 'complete') {
            for (let attempt = 0; attempt < 20 && !ended; attempt++) {
              ended = (await agents.call('POST', `/v1/tasks/${NS}/${name}/complete`, token)).status === 200;
              if (!ended) await sleep(500);
            }
            if (ended) counts.completed += 1;
          } else {
            counts.leftToExpire += 1;
            await sleep(50_000);
            ended = true;
          }
          // After the end, as a compromised agent would: one more hop.
          await sleep(1000);
          await hop({ tool: 'tickets', action: 'read', resource: `ticket/${i}` }, ended);
          // An agent that never saw its task end (its violating hop unanswered, its completion
          // refused throughout) leaves a live task: it is deleted at the end, as a user would.
          if (!ended) abandoned.add(name);
        })(),
      );
    }
    while (Date.now() < started + plan.seconds * 1000) await sleep(500);
    log('soak: traffic done; waiting for every task to end');
    stopping = true;
    await Promise.all(background);
    await Promise.all(churn);
    sidecar.stop();
    // The long-lived tasks end too, and any an agent abandoned: deleting them is revocation's other path.
    counts.abandoned = abandoned.size;
    for (const name of [...steady.keys()].map((i) => `steady-${i}`).concat('gateway-0', ...abandoned)) {
      await persist(`delete ${name}`, async () => {
        const res = await rawRequest(kc, 'DELETE', `${TASKS}/${name}`);
        if (res.status >= 300 && res.status !== 404) throw new Error(`${res.status}`);
      }, deadline);
    }

    // Every other task ended and revoked, and its audit records all out (no outbox left for a
    // replica that died to have abandoned), within three minutes of the traffic stopping.
    const settleBy = Date.now() + 180_000;
    const isRevoked = (t: AgentTask) => t.status?.conditions?.some((c) => c.type === 'Revoked' && c.status === 'True') ?? false;
    let list: AgentTask[] = [];
    for (;;) {
      list = ((await rawRequest(kc, 'GET', TASKS)).body as { items: AgentTask[] }).items;
      const open = list.filter((t) => !isRevoked(t) || ((t.status?.audit?.unsent?.length ?? 0) > 0 && !t.status?.audit?.emitted));
      if (open.length === 0 || Date.now() > settleBy) break;
      await sleep(2000);
    }
    const unrevoked = list.filter((t) => !isRevoked(t)).map((t) => `${t.metadata.name ?? ''} (${t.status?.state ?? 'no state'})`);
    let credentialsStillServed = 0;
    // Every task has ended by now, deleted ones included: no agent's token gets credentials.
    for (const token of tokens.values()) {
      if ((await agents.call('GET', '/v1/credentials', token)).status === 200) credentialsStillServed += 1;
    }

    // The replicas stop as a rollout stops them (SIGTERM: each writes what it has queued), so
    // the heads read next and the audit files agree on what was written, with nothing in flight.
    await Promise.all(slots.map((slot) => stop(slot)));
    list = ((await rawRequest(kc, 'GET', TASKS)).body as { items: AgentTask[] }).items;

    // The audit chains: every replica's file, every process it ever ran.
    const entries: AuditEntry[] = [];
    for (const file of slots.flatMap((s) => s.auditFiles)) for (const e of readAuditRecords(await readFile(file, 'utf8').catch(() => ''), path.basename(file))) entries.push(e);
    const { chains, breaks } = verifyChains(entries);
    const byUid = new Map(chains.map((c) => [c.taskUid, c]));
    const headProblems: string[] = [];
    const ends = new Map<string, { at: number; type: string; source: string }>();
    for (const t of list) {
      const chain = byUid.get(t.metadata.uid ?? '');
      const head = t.status?.audit;
      if (head && !chain) headProblems.push(`${t.metadata.name ?? ''}: status holds head ${head.count} but no audit file has its records`);
      else if (head && chain) {
        const problem = checkHead(chain, head);
        if (problem) headProblems.push(`${t.metadata.name ?? ''}: ${problem}`);
      }
      // When the task ended, by its own chain: its first completion, expiry or violation.
      const end = chain?.records.find((r) => r.type === 'completion' || r.type === 'expiry' || r.type === 'violation');
      // Recorded once written: a file's line is written after the head that covers it is in status.
      const written = entries.filter((e) => end && e.record.hash === end.hash).sort((x, y) => (x.time ?? '').localeCompare(y.time ?? ''))[0];
      if (end && t.metadata.name) ends.set(t.metadata.name, { at: Math.max(Date.parse(end.at), Date.parse(written?.time ?? end.at)), type: end.type, source: written?.source ?? '' });
    }
    // A hop sent after its agent saw the task end, or after its end was recorded (written to the
    // task's status; 100 ms for the clocks of one machine), must not be allowed. A violation
    // decided while etcd is frozen is recorded only once it thaws; until then the replica that
    // decided it refuses the task, and the others cannot know.
    const allowedAfterEndHops = hopsSent.filter((h) => h.decision === 'allow' && (h.afterEnd || h.sentAt > (ends.get(h.task)?.at ?? Infinity) + 100));
    const allowedAfterEnd = allowedAfterEndHops.length;
    // Who answered each such hop and who recorded the end, by the audit files: what to look at next.
    const writerOf = new Map(entries.filter((e) => e.record.type === 'hop_decided').map((e) => [String((e.record.data as { hopId?: unknown }).hopId), e.source ?? '']));
    const seconds = (at: number) => Math.round((at - started) / 100) / 10;
    const lateAllows = allowedAfterEndHops.map((h) => {
      const end = ends.get(h.task);
      return `${h.task}: hop ${h.hopId ?? '?'} sent at ${seconds(h.sentAt)}s${h.afterEnd ? ' after the agent saw the end' : ''}, decided by ${writerOf.get(h.hopId ?? '') ?? 'no audit file'}; ${end ? `${end.type} at ${seconds(end.at)}s by ${end.source}` : 'no end in its chain'}`;
    });

    const third = plan.seconds / 3;
    const maxIn = (from: number, to: number) => Math.max(0, ...rss.filter((r) => r.at >= from && r.at < to).map((r) => r.rssMiB));
    const early = maxIn(third * 0.5, third * 1.5);
    const late = maxIn(plan.seconds - third, plan.seconds + 1);
    const report = {
      plan: { ...plan, short },
      counts: { ...counts, hopsSent: hopsSent.length, hopsSentAfterEnd: hopsSent.filter((h) => h.afterEnd).length, hopsAllowed: hopsSent.filter((h) => h.decision === 'allow').length, tasksSeen: list.length },
      guarantees: {
        tasksLeftUnrevoked: unrevoked.length,
        credentialsServedAfterEnd: credentialsStillServed,
        auditBreaks: breaks.length + headProblems.length,
        hopsAllowedAfterEnd: allowedAfterEnd,
        rssMiB: { earlyMax: early, lateMax: late, growth: early > 0 ? Math.round((late / early) * 100) / 100 : null, flat: early > 0 && late <= early * 1.25 },
      },
      details: { unrevoked: unrevoked.slice(0, 20), auditBreaks: breaks.slice(0, 20).map((b) => `${b.task} #${b.seq}: ${b.problem}`), headProblems: headProblems.slice(0, 20), allowedAfterEnd: lateAllows.slice(0, 40), events },
    };
    const g = report.guarantees;
    const ok = g.tasksLeftUnrevoked === 0 && g.credentialsServedAfterEnd === 0 && g.auditBreaks === 0 && g.hopsAllowedAfterEnd === 0 && g.rssMiB.flat;
    const json = JSON.stringify({ ...report, ok }, null, 2);
    await writeFile('soak-results.json', `${json}\n`);
    process.stdout.write(`${json}\n`);
    if (!ok) {
      // The JSON may be discarded (CI keeps only stderr): say what failed where it is read.
      const failed = [
        g.tasksLeftUnrevoked > 0 && `${g.tasksLeftUnrevoked} tasks left unrevoked: ${report.details.unrevoked.join(', ')}`,
        g.credentialsServedAfterEnd > 0 && `${g.credentialsServedAfterEnd} tasks still served credentials after they ended`,
        g.auditBreaks > 0 && `${g.auditBreaks} audit problems: ${[...report.details.auditBreaks, ...report.details.headProblems].join('; ')}`,
        g.hopsAllowedAfterEnd > 0 && `${g.hopsAllowedAfterEnd} hops allowed after their task ended: ${report.details.allowedAfterEnd.join('; ')}`,
        !g.rssMiB.flat && `memory grew: ${g.rssMiB.earlyMax} MiB early, ${g.rssMiB.lateMax} MiB late`,
      ].filter((x): x is string => typeof x === 'string');
      for (const f of failed) log(`soak FAILED: ${f}`);
      // Evidence for whoever looks next: every audit file, and each failing task as the API server has it.
      const keep = path.resolve('soak-failure');
      await mkdir(keep, { recursive: true });
      for (const file of slots.flatMap((x) => [...x.auditFiles, ...x.logFiles])) await copyFile(file, path.join(keep, path.basename(file))).catch(() => undefined);
      const failing = new Set([...unrevoked.map((u) => u.split(' ')[0]), ...headProblems.map((h) => h.split(':')[0]), ...allowedAfterEndHops.map((h) => h.task)]);
      await writeFile(path.join(keep, 'tasks.json'), `${JSON.stringify(list.filter((t) => failing.has(t.metadata.name ?? '')), null, 2)}\n`);
      log(`soak: the audit files, the replicas' logs and the failing tasks are in ${keep}`);
      log(`soak events: ${events.map((e) => `${e.at}s ${e.what}`).join('; ')}`);
      // CI keeps only this output: each replica's last warnings, shortened.
      for (const file of slots.flatMap((x) => x.logFiles)) {
        const lines = (await readFile(file, 'utf8').catch(() => '')).split('\n').filter(Boolean);
        if (lines.length > 0) log(`${path.basename(file)}, last ${Math.min(10, lines.length)} of ${lines.length} lines:\n${lines.slice(-10).map((l) => `    ${l.slice(0, 400)}`).join('\n')}`);
      }
      process.exitCode = 1;
    }
  } finally {
    stopping = true;
    agents.destroy();
    for (const slot of slots) slot.broker?.child.kill('SIGTERM');
    await sleep(1000);
    await Promise.all([brokerProxy.close(), webhookProxy.close()]);
    await tickets.close();
    await env.stop();
  }
}

await main();
