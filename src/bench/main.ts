/**
 * `npm run bench`: the figures the README quotes, measured on real components. Writes one JSON
 * document to stdout and to bench-results.json, and a readable table to stderr.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { SignatureV4 } from '@smithy/signature-v4';
import type { KubeConfig } from '@kubernetes/client-node';
import { startLocalEnvironment, type LocalEnvironment } from '../controlplane/environment.js';
import { Sha256 } from '../aws/sigv4.js';
import { rawRequest } from '../kube/raw.js';
import { apiRequests, background, cpuMs, https, log, machineCpuMs, pidOf, pool, post, rssMiB, servingFiles, setUpPolicy, startBroker, startSidecar, useAllocator, writesPer, type Broker, type Serving } from './harness.js';
import { benchAllocator, type Allocator } from './allocator.js';
import { OPA_INPUT, startOpa } from './opa.js';
import { NEW_SIDECAR_WARMUP_SECONDS, WARMUP_SECONDS, type LoadJob, type LoadResult } from './load.js';
import { summarize } from './stats.js';
import { startDemoMcpServer, TICKET_TOOLS, type DemoMcpServer } from '../demo/mcp-servers.js';
import { SIDECAR_RESOURCES } from '../admission/plugins/pod.js';

const here = path.dirname(new URL(import.meta.url).pathname);
const NS = 'bench';
/** The bench's tickets MCP server takes this; the gateway adds it from Secret tickets-mcp. */
const MCP_CREDENTIAL = 'bench-mcp-credential';

async function load(job: LoadJob): Promise<LoadResult> {
  const child = spawn(process.execPath, [path.join(here, 'load.js'), '--job', JSON.stringify(job)], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  await new Promise((r) => child.on('exit', r));
  return JSON.parse(out) as LoadResult;
}

/** Direct delivery unless `Gateway`: issuance and revocation are measured on the sessions agents are handed. */
const taskManifest = (name: string, roleArn: string, delivery: 'Direct' | 'Gateway' = 'Direct') => ({
  apiVersion: 'chainwarden.io/v1alpha1',
  kind: 'AgentTask',
  metadata: { name, namespace: NS },
  spec: { serviceAccountName: 'agent', policyRef: { name: 'bench' }, ttl: '1h', credentials: [{ name: 'default', aws: { roleArn, duration: '15m', delivery } }] },
});

/** When each step of an issuance ended (performance.now()): the task created, its pod, the pod's token, credentials served. */
interface IssuanceSteps {
  created: number;
  taskAt: number;
  podAt: number;
  tokenAt: number;
  ready: number;
}

async function boundAgent(kc: KubeConfig, broker: Broker, name: string, roleArn: string, delivery: 'Direct' | 'Gateway' = 'Direct'): Promise<{ token: string } & IssuanceSteps> {
  const created = performance.now();
  await post(kc, `/apis/chainwarden.io/v1alpha1/namespaces/${NS}/agenttasks`, taskManifest(name, roleArn, delivery));
  const taskAt = performance.now();
  const pod = (await rawRequest(kc, 'POST', `/api/v1/namespaces/${NS}/pods`, {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: `${name}-pod`, labels: { 'chainwarden.io/task': name } },
    spec: { serviceAccountName: 'agent', containers: [{ name: 'agent', image: 'example.invalid/agent:1' }] },
  })).body as { metadata: { uid: string } };
  const podAt = performance.now();
  const token = ((await rawRequest(kc, 'POST', `/api/v1/namespaces/${NS}/serviceaccounts/agent/token`, {
    apiVersion: 'authentication.k8s.io/v1',
    kind: 'TokenRequest',
    spec: { audiences: ['chainwarden'], expirationSeconds: 3600, boundObjectRef: { apiVersion: 'v1', kind: 'Pod', name: `${name}-pod`, uid: pod.metadata.uid } },
  })).body as { status: { token: string } }).status.token;
  const tokenAt = performance.now();
  for (;;) {
    const creds = await https(broker, 'GET', '/v1/credentials', token);
    if (creds.status === 200) return { token, created, taskAt, podAt, tokenAt, ready: performance.now() };
    if (creds.status !== 403) throw new Error(`credentials for ${name}: ${creds.status} ${JSON.stringify(creds.body)}`);
    await sleep(10);
  }
}

/** A run's errors for the table, with the causes of those that got no answer at all. */
function errorsOf(result: LoadResult): string {
  const causes = Object.entries(result.failures ?? {}).map(([cause, n]) => `${cause} ${n}`);
  return `errors ${result.errors}${causes.length > 0 ? ` (no answer: ${causes.join(', ')})` : ''}`;
}

function setUp(env: LocalEnvironment, kc: KubeConfig, mcp: DemoMcpServer): Promise<string> {
  return setUpPolicy(env, kc, {
    namespace: NS,
    name: 'bench',
    mcpUrl: mcp.url,
    mcpCredential: MCP_CREDENTIAL,
    rules: [
      { name: 'read-and-comment', effect: 'Allow', tools: ['tickets'], actions: ['read', 'comment'], resources: ['ticket/*'] },
      { name: 'no-exfiltration', effect: 'Deny', tools: ['email'], actions: ['send'], when: { afterDataClasses: ['pii'] } },
      { name: 'who-am-i', effect: 'Allow', tools: ['aws:sts'], actions: ['sts:GetCallerIdentity'] },
    ],
    onViolation: 'Deny',
  });
}

async function issuanceAndRevocation(kc: KubeConfig, broker: Broker, env: LocalEnvironment, roleArn: string, count: number) {
  const names = Array.from({ length: count }, (_, i) => `task-${i}`);
  const tokens = new Map<string, string>();
  const issue: number[] = [];
  const steps: IssuanceSteps[] = [];
  // What an issuance costs the API server, which every step of it goes through: its CPU, and the writes it served.
  const apiServer = await pidOf('kube-apiserver', env.stateDir);
  // What the API server was busy with before the first task: an earlier part's work still running is not issuance's cost.
  const before = await background(kc, apiServer, 3_000);
  const apiServerBefore = apiServer === undefined ? 0 : await cpuMs(apiServer);
  const requestsBefore = await apiRequests(kc);
  const started = performance.now();
  await pool(names, 8, async (name) => {
    const r = await boundAgent(kc, broker, name, roleArn);
    tokens.set(name, r.token);
    issue.push(r.ready - r.created);
    steps.push(r);
  });
  const issuanceSeconds = (performance.now() - started) / 1000;
  const apiServerCpuMsPerTask = apiServer === undefined ? undefined : Math.round(((await cpuMs(apiServer)) - apiServerBefore) / count);
  const apiWritesPerTask = writesPer(requestsBefore, await apiRequests(kc), count);
  const revoke: number[] = [];
  await pool(names, 8, async (name) => {
    const token = tokens.get(name) ?? '';
    const t0 = performance.now();
    const done = await https(broker, 'POST', `/v1/tasks/${NS}/${name}/complete`, token);
    if (done.status !== 200) throw new Error(`complete ${name}: ${done.status}`);
    for (;;) {
      if ((await https(broker, 'GET', '/v1/credentials', token)).status === 403) break;
      await sleep(1);
    }
    revoke.push(performance.now() - t0);
  });
  // Where an issuance's time goes: the three API requests a user and the kubelet make, then the broker's answer (binding, STS, the session's record).
  const p50 = (of: (s: IssuanceSteps) => number) => summarize(steps.map(of)).p50Ms;
  const stepsP50Ms = { createTask: p50((s) => s.taskAt - s.created), createPod: p50((s) => s.podAt - s.taskAt), requestToken: p50((s) => s.tokenAt - s.podAt), credentials: p50((s) => s.ready - s.tokenAt) };
  return { issuance: { tasks: count, ...summarize(issue), stepsP50Ms, tasksPerSecond: Math.round((count / issuanceSeconds) * 10) / 10, apiServerCpuMsPerTask, apiWritesPerTask, before }, revocation: summarize(revoke) };
}

async function admission(broker: Broker, roleArn: string): Promise<LoadResult> {
  const review = (uid: string) => JSON.stringify({
    apiVersion: 'admission.k8s.io/v1',
    kind: 'AdmissionReview',
    request: { uid, kind: { group: 'chainwarden.io', version: 'v1alpha1', kind: 'AgentTask' }, resource: { group: 'chainwarden.io', version: 'v1alpha1', resource: 'agenttasks' }, operation: 'CREATE', namespace: NS, userInfo: { username: 'bench' }, object: taskManifest('admission-check', roleArn) },
  });
  return load({ mode: 'closed', url: `${broker.webhookUrl}/validate`, method: 'POST', clients: [{ headers: {}, body: review('u1') }], ca: broker.ca, seconds: 5, concurrency: 1 });
}

/**
 * A Node server that answers every request with a fixed hop answer and does nothing else: the
 * ceiling any Node server reaches on this machine with this load generator. Over TLS with the
 * broker's certificate, as one process (one event loop, as the broker is) or as two (both cores).
 */
async function bareServer(options: { tls?: Serving; processes?: 1 | 2 } = {}): Promise<{ url: string; child: ChildProcess }> {
  // Two processes share one listening socket (cluster), each accepting its own connections.
  const code = `const cluster=require('node:cluster');const fs=require('node:fs');const tls=process.env.BARE_KEY;
if(cluster.isPrimary&&Number(process.env.BARE_PROCESSES)>1){cluster.schedulingPolicy=cluster.SCHED_NONE;let up=0;for(let i=0;i<2;i++)cluster.fork().on('listening',(a)=>{if(++up===2)console.log(a.port);});}
else{const handle=(q,r)=>{q.resume();q.on('end',()=>{const b=JSON.stringify({hopId:'h',decision:'allow',reasons:[],depth:1});r.writeHead(200,{'content-type':'application/json','content-length':Buffer.byteLength(b)});r.end(b);});};
const s=tls?require('node:https').createServer({key:fs.readFileSync(tls),cert:fs.readFileSync(process.env.BARE_CERT)},handle):require('node:http').createServer(handle);s.keepAliveTimeout=65000;s.listen(0,'127.0.0.1',()=>{if(cluster.isPrimary)console.log(s.address().port);});}`;
  const env = { ...process.env, BARE_PROCESSES: String(options.processes ?? 1), ...(options.tls ? { BARE_KEY: options.tls.key, BARE_CERT: options.tls.cert } : {}) };
  // A file, not -e: cluster forks its workers from the primary's script.
  const file = path.join(await mkdtemp(path.join(os.tmpdir(), 'bench-bare-')), 'bare.cjs');
  await writeFile(file, code);
  const child = spawn(process.execPath, [file], { stdio: ['ignore', 'pipe', 'inherit'], env });
  const port = await new Promise<string>((r) => child.stdout?.once('data', (c: Buffer) => r(c.toString().trim())));
  return { url: `${options.tls ? 'https' : 'http'}://127.0.0.1:${port}`, child };
}

/** A bare Node HTTPS server's most, closed loop as the broker's and OPA's runs are. */
async function bareMaxOver(serving: Serving, processes: 1 | 2, body: string, ca: string): Promise<LoadResult> {
  const bare = await bareServer({ tls: serving, processes });
  try {
    return await load({ mode: 'closed', url: `${bare.url}/v1/hops`, method: 'POST', clients: [{ headers: {}, body }], ca, seconds: 5, concurrency: 32 });
  } finally {
    bare.child.kill();
  }
}

async function hops(kc: KubeConfig, broker: Broker, env: LocalEnvironment, roleArn: string, serving: Serving) {
  const agents = await Promise.all(Array.from({ length: 8 }, (_, i) => boundAgent(kc, broker, `hops-${i}`, roleArn)));
  const body = JSON.stringify({ tool: 'tickets', action: 'read', resource: 'ticket/4711' });
  const clients = agents.map((a) => ({ headers: { authorization: `Bearer ${a.token}` }, body }));
  const bare = await bareServer();
  const opa = await startOpa(path.dirname(serving.cert), serving);
  // The agent's real path: its sidecar, which forwards to the broker over one kept-alive connection pool.
  const sidecar = await startSidecar(broker, agents[0]?.token ?? '');
  try {
    const bareMax = await load({ mode: 'closed', url: `${bare.url}/v1/hops`, method: 'POST', clients: [{ headers: {}, body }], seconds: 5, concurrency: 32 });
    const bareFixed = await load({ mode: 'open', url: `${bare.url}/v1/hops`, method: 'POST', clients: [{ headers: {}, body }], seconds: 5, rate: 1000 });
    // What the journal's status writes cost the API server under this load: its CPU over the run.
    const apiServer = await pidOf('kube-apiserver', env.stateDir);
    const apiServerBefore = apiServer === undefined ? 0 : await cpuMs(apiServer);
    const requestsBefore = await apiRequests(kc);
    const fixed = await load({ mode: 'open', url: `${broker.url}/v1/hops`, method: 'POST', clients, ca: broker.ca, seconds: 10, rate: 1000 });
    const apiServerCpuMsPerSecond = apiServer === undefined ? undefined : ((await cpuMs(apiServer)) - apiServerBefore) / fixed.seconds;
    const apiWritesPerSecond = writesPer(requestsBefore, await apiRequests(kc), fixed.seconds + WARMUP_SECONDS);
    // A busy task's status: what each of its writes sends the API server.
    const busyStatusBytes = async () => JSON.stringify(((await rawRequest(kc, 'GET', `/apis/chainwarden.io/v1alpha1/namespaces/${NS}/agenttasks/hops-0`)).body as { status?: unknown }).status ?? {}).length;
    const statusBytes = await busyStatusBytes();
    const fixedHalf = await load({ mode: 'open', url: `${broker.url}/v1/hops`, method: 'POST', clients, ca: broker.ca, seconds: 10, rate: 500 });
    // CPU per request of a process over a run, warm-up included: steadier than a latency or a throughput, which move with whatever else the machine runs.
    const cpuPer = async (pid: number | undefined, run: () => Promise<LoadResult>) => {
      const before = pid === undefined ? 0 : await cpuMs(pid);
      const result = await run();
      const us = pid === undefined ? undefined : Math.round((((await cpuMs(pid)) - before) * 1000) / (result.requests + result.warmupRequests));
      return { result, us };
    };
    const { result: throughSidecar, us: sidecarCpuUs } = await cpuPer(sidecar.pid, () => load({ mode: 'open', url: `${sidecar.url}/v1/hops`, method: 'POST', clients: [{ headers: { authorization: `Bearer ${sidecar.localToken}` }, body }], seconds: 10, rate: 1000, warmupSeconds: NEW_SIDECAR_WARMUP_SECONDS }));
    // CPU per decision at full load, the operator's and OPA's; and who holds the cores in each
    // run: the whole machine (load generator included), the API server and etcd.
    const etcd = await pidOf('etcd', env.stateDir);
    const cores = os.availableParallelism();
    const cpuNow = async () => ({ apiServer: apiServer === undefined ? 0 : await cpuMs(apiServer), etcd: etcd === undefined ? 0 : await cpuMs(etcd), machine: await machineCpuMs() });
    const machineOver = async (pid: number | undefined, run: () => Promise<LoadResult>) => {
      const before = await cpuNow();
      const started = performance.now();
      const measured = await cpuPer(pid, run);
      const after = await cpuNow();
      const perSecond = (of: keyof typeof after) => Math.round((after[of] - before[of]) / ((performance.now() - started) / 1000));
      const answered = measured.result.requests + measured.result.warmupRequests;
      const machineUs = ((after.machine - before.machine) * 1000) / answered;
      /**
       * CPU ms a second over the run and its warm-up (1,000 is a core); the machine's CPU per
       * answer; and the answers a second the machine's cores would allow at that cost, were all
       * of them busy: the most any spreading of the work over the cores could give.
       */
      const machine = { machineMsPerSecond: perSecond('machine'), apiServerMsPerSecond: perSecond('apiServer'), etcdMsPerSecond: perSecond('etcd'), machineUsPerAnswer: Math.round(machineUs), allCoresCeilingPerSecond: Math.round((cores * 1_000_000) / machineUs) };
      return { ...measured, machine };
    };
    const { result: max, us: operatorCpuUs, machine: cpuAtMax } = await machineOver(broker.pid, () => load({ mode: 'closed', url: `${broker.url}/v1/hops`, method: 'POST', clients, ca: broker.ca, seconds: 5, concurrency: 32 }));
    const maxStatusBytes = await busyStatusBytes();
    const { result: opaMax, us: opaCpuUs, machine: cpuAtOpaMax } = await machineOver(opa.child.pid, () => load({ mode: 'closed', url: `${opa.url}/v1/data/chainwarden/decision`, method: 'POST', clients: [{ headers: {}, body: OPA_INPUT }], ca: broker.ca, seconds: 5, concurrency: 32 }));
    // What a Node server that decides nothing reaches over the same TLS, one process and two: the ceiling the OPA ratio is read against.
    const bareTls = { one: await bareMaxOver(serving, 1, body, broker.ca), two: await bareMaxOver(serving, 2, body, broker.ca) };
    return {
      fixedRate: fixed,
      /** CPU the API server used per second of the 1,000/s run (1,000 ms is one core). */
      apiServerCpuMsPerSecondAt1000: apiServerCpuMsPerSecond === undefined ? undefined : Math.round(apiServerCpuMsPerSecond),
      /** Writes the API server served per second over that run and its warm-up, and the size of one busy task's status after it. */
      apiWritesPerSecondAt1000: apiWritesPerSecond,
      statusBytesAt1000: statusBytes,
      fixedRate500: fixedHalf,
      throughSidecarFixedRate: throughSidecar,
      /** The sidecar's CPU microseconds per hop it forwarded in that run: its own cost on the agent's path. */
      sidecarCpuUsPerHop: sidecarCpuUs,
      maxThroughput: max,
      cpuAtMax,
      cpuAtOpaMax,
      /** The broker's all-cores ceiling over OPA's figure: the ratio to OPA the broker's work per decision would allow on this machine, its work spread perfectly over every core. */
      allCoresCeilingRatioToOpa: Math.round((cpuAtMax.allCoresCeilingPerSecond / opaMax.okPerSecond) * 1000) / 1000,
      /** A busy task's status after the max-throughput run. */
      maxStatusBytes,
      opaMaxThroughput: opaMax,
      /** Decisions served a second, the broker's over OPA's: a request the broker turns away is no decision. */
      ratioToOpa: Math.round((max.okPerSecond / opaMax.okPerSecond) * 1000) / 1000,
      /** CPU microseconds per decision over the closed-loop runs (warm-up included): the operator's whole process, and OPA's. */
      cpuUsPerDecision: { operator: operatorCpuUs, opa: opaCpuUs },
      bareHttpsMax: bareTls.one,
      bareHttpsTwoProcessesMax: bareTls.two,
      /** The same ratio for a Node HTTPS server that does no work at all: above 1 only if OPA's figure is in a Node server's reach. */
      bareHttpsRatioToOpa: Math.round((bareTls.one.ratePerSecond / opaMax.okPerSecond) * 1000) / 1000,
      bareHttpsTwoProcessesRatioToOpa: Math.round((bareTls.two.ratePerSecond / opaMax.okPerSecond) * 1000) / 1000,
      bareHttpMax: bareMax,
      bareHttpFixedRate: bareFixed,
      throughputShareOfBare: Math.round((max.okPerSecond / bareMax.okPerSecond) * 1000) / 1000,
    };
  } finally {
    sidecar.stop();
    opa.stop();
    bare.child.kill();
  }
}

/**
 * The AWS gateway's cost per call: the same signed STS GetCallerIdentity, replayed at a fixed
 * rate through a real sidecar (`chainwarden agent --aws-listen`: verify, decide, sign, forward)
 * and straight to the emulator; the difference is the gateway's overhead.
 */
async function gateway(kc: KubeConfig, broker: Broker, env: LocalEnvironment, roleArn: string, rate = 200) {
  const { token } = await boundAgent(kc, broker, 'gateway-0', roleArn, 'Gateway');
  const sidecar = await startSidecar(broker, token);
  const awsUrl = sidecar.awsUrl;
  try {
    const placeholder = (await https(broker, 'GET', '/v1/credentials', token)).body as Record<string, string>;
    // One GetCallerIdentity as the SDK signs it with the placeholder keys; valid for 15 minutes, so it can be replayed.
    const signer = new SignatureV4({ service: 'sts', region: 'us-east-1', credentials: { accessKeyId: placeholder.AccessKeyId ?? '', secretAccessKey: placeholder.SecretAccessKey ?? '', sessionToken: placeholder.Token }, sha256: Sha256 });
    const host = new URL(awsUrl).host;
    const body = 'Action=GetCallerIdentity&Version=2011-06-15';
    const signed = await signer.sign({ method: 'POST', protocol: 'http:', hostname: host.split(':')[0] ?? '', port: Number(host.split(':')[1]), path: '/', query: {}, headers: { host, 'content-type': 'application/x-www-form-urlencoded; charset=utf-8' }, body });
    const headers = Object.fromEntries(Object.entries(signed.headers).filter(([k]) => k !== 'host')) as Record<string, string>;
    const clients = [{ headers, body }];
    // 20 s each: a p99 over 4,000 calls is not moved by one hiccup of the machine.
    const through = await load({ mode: 'open', url: `${awsUrl}/`, method: 'POST', clients, seconds: 20, rate, warmupSeconds: NEW_SIDECAR_WARMUP_SECONDS });
    const direct = await load({ mode: 'open', url: `${env.stsEndpoint}/`, method: 'POST', clients, seconds: 20, rate, warmupSeconds: NEW_SIDECAR_WARMUP_SECONDS });
    const max = await load({ mode: 'closed', url: `${awsUrl}/`, method: 'POST', clients, seconds: 5, concurrency: 16 });
    const overhead = { p50Ms: Math.round((through.p50Ms - direct.p50Ms) * 100) / 100, p99Ms: Math.round((through.p99Ms - direct.p99Ms) * 100) / 100 };
    return { rate, throughGateway: through, direct, overhead, goal: { p50Ms: 2, p99Ms: 10 }, maxThroughput: max };
  } finally {
    sidecar.stop();
  }
}

/** Opens an MCP session at `url` (initialize, then initialized) and returns its id. */
async function mcpSession(url: string, headers: Record<string, string>): Promise<string> {
  const { request } = await import('node:http');
  const post = (message: unknown, session?: string) =>
    new Promise<string>((resolve, reject) => {
      const req = request(url, { method: 'POST', headers: { ...headers, ...MCP_HEADERS, ...(session ? { 'mcp-session-id': session } : {}) } }, (res) => {
        res.resume();
        res.on('end', () => (res.statusCode && res.statusCode < 300 ? resolve(String(res.headers['mcp-session-id'] ?? session ?? '')) : reject(new Error(`${url}: ${res.statusCode ?? 0}`))));
      });
      req.on('error', reject);
      req.end(JSON.stringify(message));
    });
  const session = await post({ jsonrpc: '2.0', id: 0, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'bench', version: '1' } } });
  await post({ jsonrpc: '2.0', method: 'notifications/initialized' }, session);
  return session;
}

const MCP_HEADERS = { accept: 'application/json, text/event-stream', 'content-type': 'application/json', 'mcp-protocol-version': '2025-06-18' };

/**
 * The MCP gateway's cost per tools/call: the same call, at a fixed rate, through a real sidecar
 * (ask the broker, add the Secret's credential and a transaction token, forward, add the hop id
 * to the result) and straight to the same server with its credential; the difference is the
 * gateway's overhead. Requests take 250 JSON-RPC ids in turn: none is reused while in flight.
 */
async function mcpGateway(kc: KubeConfig, broker: Broker, roleArn: string, server: DemoMcpServer, rate = 200) {
  const { token } = await boundAgent(kc, broker, 'mcp-0', roleArn);
  const sidecar = await startSidecar(broker, token);
  try {
    const calls = (headers: Record<string, string>, session: string) =>
      Array.from({ length: 250 }, (_, i) => ({ headers: { ...headers, ...MCP_HEADERS, 'mcp-session-id': session }, body: JSON.stringify({ jsonrpc: '2.0', id: i + 1, method: 'tools/call', params: { name: 'read', arguments: { ticketId: '4711' } } }) }));
    const agent = { authorization: `Bearer ${sidecar.localToken}` };
    const through = `${sidecar.url}/mcp/tickets`;
    const throughClients = calls(agent, await mcpSession(through, agent));
    const upstream = { authorization: `Bearer ${MCP_CREDENTIAL}` };
    const directClients = calls(upstream, await mcpSession(server.url, upstream));
    const before = server.calls.length;
    const throughGateway = await load({ mode: 'open', url: through, method: 'POST', clients: throughClients, seconds: 20, rate, warmupSeconds: NEW_SIDECAR_WARMUP_SECONDS });
    // A denial is an HTTP 200 too: the figures count only if the server did get every call.
    if (server.calls.length - before < throughGateway.requests) throw new Error(`the MCP server got ${server.calls.length - before} of ${throughGateway.requests} calls sent through the gateway`);
    const direct = await load({ mode: 'open', url: server.url, method: 'POST', clients: directClients, seconds: 20, rate, warmupSeconds: NEW_SIDECAR_WARMUP_SECONDS });
    const max = await load({ mode: 'closed', url: through, method: 'POST', clients: throughClients, seconds: 5, concurrency: 16 });
    const overhead = { p50Ms: Math.round((throughGateway.p50Ms - direct.p50Ms) * 100) / 100, p99Ms: Math.round((throughGateway.p99Ms - direct.p99Ms) * 100) / 100 };
    // The sidecar runs in every agent pod under the limit the pod webhook gives it: its size after this load.
    return { rate, throughGateway, direct, overhead, goal: { p50Ms: 2, p99Ms: 10 }, maxThroughput: max, sidecarRssMiB: await rssMiB(sidecar.pid) };
  } finally {
    sidecar.stop();
  }
}

/**
 * The operator's memory with `count` AgentTasks cached. Creating them all at once is a burst of
 * admissions, watch events and status writes, and V8 grows its heap for it and gives the pages
 * back only once the burst is over; so the figure is taken a minute after the queue drained, and
 * the burst's peak and the size when it drained are reported beside it.
 */
async function memory(kc: KubeConfig, broker: Broker, roleArn: string, count: number) {
  const before = await rssMiB(broker.pid);
  let peak = before;
  const sample = async () => {
    const value = await rssMiB(broker.pid);
    peak = Math.max(peak, value);
    return value;
  };
  const names = Array.from({ length: count }, (_, i) => `mem-${i}`);
  const started = performance.now();
  const sampling = setInterval(() => void sample(), 1000);
  try {
    await pool(names, 16, (name) => post(kc, `/apis/chainwarden.io/v1alpha1/namespaces/${NS}/agenttasks`, taskManifest(name, roleArn)));
    const createSeconds = (performance.now() - started) / 1000;
    // Settled: every task cached and reconciled (its status written), the queue empty.
    for (;;) {
      const metrics = (await https(broker, 'GET', '/metrics')).body;
      const text = typeof metrics === 'string' ? metrics : '';
      const depth = Number(/chainwarden_workqueue_depth\{queue="agenttask"\} (\d+)/.exec(text)?.[1] ?? '0');
      const cached = Number(/chainwarden_cached_objects\{resource="agenttasks"\} (\d+)/.exec(text)?.[1] ?? '0');
      if (cached >= count && depth === 0) break;
      await sleep(1000);
    }
    const settledSeconds = (performance.now() - started) / 1000;
    const atSettled = await sample();
    // Steady: a minute after the queue drained, with nothing else running.
    await sleep(60_000);
    const steady = await sample();
    // Where the resident size is: V8's heap (in use, and reserved), and memory outside it that V8 knows of.
    const body = (await https(broker, 'GET', '/metrics')).body;
    const metrics = typeof body === 'string' ? body : '';
    const mib = (name: string) => Math.round(Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(metrics)?.[1] ?? 0) / 2 ** 20);
    return {
      tasks: count,
      rssBeforeMiB: before,
      rssMiB: steady,
      rssAtSettledMiB: atSettled,
      rssPeakMiB: peak,
      heapUsedMiB: mib('nodejs_heap_size_used_bytes'),
      heapTotalMiB: mib('nodejs_heap_size_total_bytes'),
      externalMiB: mib('nodejs_external_memory_bytes'),
      heapSpacesMiB: Object.fromEntries([...metrics.matchAll(/^nodejs_heap_space_size_total_bytes\{space="(\w+)"\} (\S+)$/gm)].map(([, space, bytes]): [string, number] => [space ?? '', Math.round(Number(bytes) / 2 ** 20)])),
      createSeconds: Math.round(createSeconds),
      settledSeconds: Math.round(settledSeconds),
    };
  } finally {
    clearInterval(sampling);
  }
}

const firstSeconds = (run: LoadResult) => `p50 ${run.warmup.p50Ms} ms  p99 ${run.warmup.p99Ms} ms  max ${run.warmup.maxMs} ms (not counted above)`;

function table(r: Results): string {
  const h = r.hops;
  const row = (a: string, b: string) => `${a.padEnd(52)} ${b}`;
  return [
    '',
    row('hop decisions at 1,000/s offered (open loop)', `${h.fixedRate.ratePerSecond}/s  p50 ${h.fixedRate.p50Ms} ms  p99 ${h.fixedRate.p99Ms} ms  ${errorsOf(h.fixedRate)}`),
    row('API server CPU during the 1,000/s hops', `${h.apiServerCpuMsPerSecondAt1000 ?? '?'} ms a second (1,000 is a core); writes a second ${Object.entries(h.apiWritesPerSecondAt1000).map(([k, v]) => `${k} ${v}`).join(', ')}; a busy task's status ${h.statusBytesAt1000} bytes`),
    row('hop decisions at 500/s offered (open loop)', `${h.fixedRate500.ratePerSecond}/s  p50 ${h.fixedRate500.p50Ms} ms  p99 ${h.fixedRate500.p99Ms} ms  ${errorsOf(h.fixedRate500)}`),
    row('hop decisions through the sidecar at 1,000/s (goal p99 ≤ 5 ms)', `${h.throughSidecarFixedRate.ratePerSecond}/s  p50 ${h.throughSidecarFixedRate.p50Ms} ms  p99 ${h.throughSidecarFixedRate.p99Ms} ms  ${errorsOf(h.throughSidecarFixedRate)}`),
    row(`  the new sidecar's first ${NEW_SIDECAR_WARMUP_SECONDS} s (its warm-up)`, firstSeconds(h.throughSidecarFixedRate)),
    row('OPA, same rules in Rego, max throughput (32 clients)', `${h.opaMaxThroughput.ratePerSecond}/s  p50 ${h.opaMaxThroughput.p50Ms} ms  p99 ${h.opaMaxThroughput.p99Ms} ms`),
    row('broker max throughput ÷ OPA\'s (goal ≥ 1)', `${h.ratioToOpa}`),
    row('bare node:https, one process, ÷ OPA\'s', `${h.bareHttpsRatioToOpa} (${h.bareHttpsMax.ratePerSecond}/s)`),
    row('bare node:https, two processes, ÷ OPA\'s', `${h.bareHttpsTwoProcessesRatioToOpa} (${h.bareHttpsTwoProcessesMax.ratePerSecond}/s)`),
    row('hop decisions, max throughput (32 clients)', `${h.maxThroughput.okPerSecond}/s decided  p50 ${h.maxThroughput.p50Ms} ms  p99 ${h.maxThroughput.p99Ms} ms  ${errorsOf(h.maxThroughput)}`),
    row('CPU during the max-throughput hops, ms a second', `machine ${h.cpuAtMax.machineMsPerSecond} of ${(os.availableParallelism() * 1000).toLocaleString('en')} (all cores), API server ${h.cpuAtMax.apiServerMsPerSecond}, etcd ${h.cpuAtMax.etcdMsPerSecond}; a busy task's status ${h.maxStatusBytes} bytes`),
    row('CPU during OPA\'s max throughput, ms a second', `machine ${h.cpuAtOpaMax.machineMsPerSecond}, API server ${h.cpuAtOpaMax.apiServerMsPerSecond}, etcd ${h.cpuAtOpaMax.etcdMsPerSecond}`),
    row('machine CPU per answer at max throughput', `broker ${h.cpuAtMax.machineUsPerAnswer} µs, OPA ${h.cpuAtOpaMax.machineUsPerAnswer} µs (load generator, API server and etcd included)`),
    row('broker\'s ceiling on all cores ÷ OPA\'s figure', `${h.allCoresCeilingRatioToOpa} (${h.cpuAtMax.allCoresCeilingPerSecond}/s at ${h.cpuAtMax.machineUsPerAnswer} µs of the machine a decision)`),
    row('CPU per decision at max throughput', `operator ${h.cpuUsPerDecision.operator ?? '?'} µs, OPA ${h.cpuUsPerDecision.opa ?? '?'} µs`),
    row('sidecar CPU per hop forwarded at 1,000/s', `${h.sidecarCpuUsPerHop ?? '?'} µs`),
    row('bare node:http, max throughput (32 clients)', `${h.bareHttpMax.ratePerSecond}/s  p50 ${h.bareHttpMax.p50Ms} ms  p99 ${h.bareHttpMax.p99Ms} ms`),
    row('bare node:http at 1,000/s', `p50 ${h.bareHttpFixedRate.p50Ms} ms  p99 ${h.bareHttpFixedRate.p99Ms} ms`),
    row('hop throughput as a share of bare node:http', `${Math.round(h.throughputShareOfBare * 100)}%`),
    row(`AWS gateway at ${r.gateway.rate}/s (STS call, sidecar + broker)`, `p50 ${r.gateway.throughGateway.p50Ms} ms  p99 ${r.gateway.throughGateway.p99Ms} ms  ${errorsOf(r.gateway.throughGateway)}`),
    row(`  the new sidecar's first ${NEW_SIDECAR_WARMUP_SECONDS} s (its warm-up)`, firstSeconds(r.gateway.throughGateway)),
    row(`the same call straight to the emulator`, `p50 ${r.gateway.direct.p50Ms} ms  p99 ${r.gateway.direct.p99Ms} ms`),
    row('gateway overhead (goal p50 ≤ 2 ms, p99 ≤ 10 ms)', `p50 ${r.gateway.overhead.p50Ms} ms  p99 ${r.gateway.overhead.p99Ms} ms`),
    row('gateway, max throughput (16 clients)', `${r.gateway.maxThroughput.ratePerSecond}/s  p50 ${r.gateway.maxThroughput.p50Ms} ms  p99 ${r.gateway.maxThroughput.p99Ms} ms`),
    row(`MCP gateway at ${r.mcpGateway.rate}/s (tools/call, sidecar + broker)`, `p50 ${r.mcpGateway.throughGateway.p50Ms} ms  p99 ${r.mcpGateway.throughGateway.p99Ms} ms  ${errorsOf(r.mcpGateway.throughGateway)}`),
    row(`  the new sidecar's first ${NEW_SIDECAR_WARMUP_SECONDS} s (its warm-up)`, firstSeconds(r.mcpGateway.throughGateway)),
    row('the same call straight to the MCP server', `p50 ${r.mcpGateway.direct.p50Ms} ms  p99 ${r.mcpGateway.direct.p99Ms} ms`),
    row('MCP gateway overhead (goal p50 ≤ 2 ms, p99 ≤ 10 ms)', `p50 ${r.mcpGateway.overhead.p50Ms} ms  p99 ${r.mcpGateway.overhead.p99Ms} ms`),
    row('MCP gateway, max throughput (16 clients)', `${r.mcpGateway.maxThroughput.ratePerSecond}/s  p50 ${r.mcpGateway.maxThroughput.p50Ms} ms  p99 ${r.mcpGateway.maxThroughput.p99Ms} ms`),
    row(`credential issuance (${r.credentials.issuance.tasks} tasks, created → credentials)`, `p50 ${r.credentials.issuance.p50Ms} ms  p99 ${r.credentials.issuance.p99Ms} ms  ${r.credentials.issuance.tasksPerSecond} tasks/s`),
    row('API server per issuance', `${r.credentials.issuance.apiServerCpuMsPerTask ?? '?'} ms of CPU; writes ${Object.entries(r.credentials.issuance.apiWritesPerTask).map(([k, v]) => `${k} ${v}`).join(', ')}`),
    row('revocation (completion → credentials refused)', `p50 ${r.credentials.revocation.p50Ms} ms  p99 ${r.credentials.revocation.p99Ms} ms`),
    row('admission webhook (AgentTask, over HTTPS)', `p50 ${r.admission.p50Ms} ms  p99 ${r.admission.p99Ms} ms  ${r.admission.ratePerSecond}/s`),
    row(`sidecar RSS after the MCP gateway runs (pod request ${SIDECAR_RESOURCES.requests.memory}, limit ${SIDECAR_RESOURCES.limits.memory})`, `${r.mcpGateway.sidecarRssMiB} MiB`),
    row(`operator RSS with ${r.memory.tasks} AgentTasks cached`, `${r.memory.rssMiB} MiB (${r.memory.rssBeforeMiB} MiB before; ${r.memory.rssPeakMiB} MiB at the creation burst's peak; settled in ${r.memory.settledSeconds} s)`),
    '',
    ...Object.entries(r.goals).map(([name, g]) => row(`goal ${name}`, `${g.value} (${g.goal}) ${g.met ? 'met' : 'MISSED'}`)),
    '',
  ].join('\n');
}

interface Goal {
  value: number;
  goal: string;
  met: boolean;
}

/** Every figure the performance goals name, next to its goal. */
function goals(r: Omit<Results, 'goals'>): Record<string, Goal> {
  const atMost = (value: number, max: number, unit: string): Goal => ({ value, goal: `≤ ${max} ${unit}`, met: value <= max });
  return {
    hopsRatioToOpa: { value: r.hops.ratioToOpa, goal: '≥ 1', met: r.hops.ratioToOpa >= 1 },
    hopsP99ThroughSidecarAt1000PerSecondMs: atMost(r.hops.throughSidecarFixedRate.p99Ms, 5, 'ms'),
    awsGatewayOverheadP50Ms: atMost(r.gateway.overhead.p50Ms, 2, 'ms'),
    awsGatewayOverheadP99Ms: atMost(r.gateway.overhead.p99Ms, 10, 'ms'),
    mcpGatewayOverheadP50Ms: atMost(r.mcpGateway.overhead.p50Ms, 2, 'ms'),
    mcpGatewayOverheadP99Ms: atMost(r.mcpGateway.overhead.p99Ms, 10, 'ms'),
    operatorRssMiBWith10kTasks: atMost(r.memory.rssMiB, 150, 'MiB'),
    issuanceP50Ms: atMost(r.credentials.issuance.p50Ms, 150, 'ms'),
  };
}

interface Results {
  machine: { cpus: number; node: string; memoryGiB: number; allocator: Allocator['name'] };
  goals: Record<string, Goal>;
  hops: Awaited<ReturnType<typeof hops>>;
  gateway: Awaited<ReturnType<typeof gateway>>;
  mcpGateway: Awaited<ReturnType<typeof mcpGateway>>;
  credentials: Awaited<ReturnType<typeof issuanceAndRevocation>>;
  admission: LoadResult;
  memory: Awaited<ReturnType<typeof memory>>;
}

async function main(): Promise<void> {
  const tasks = Number(process.env.CHAINWARDEN_BENCH_TASKS ?? 200);
  const cached = Number(process.env.CHAINWARDEN_BENCH_CACHED ?? 10_000);
  // The sidecars' token files and the bare servers' scripts go under one directory, removed at the end.
  const scratch = await mkdtemp(path.join(os.tmpdir(), 'chainwarden-bench-'));
  process.env.TMPDIR = scratch;
  const chosen = await benchAllocator(log);
  useAllocator(chosen);
  const env = await startLocalEnvironment({ progress: log });
  let broker: Broker | undefined;
  const tickets = await startDemoMcpServer('tickets', TICKET_TOOLS, { bearer: MCP_CREDENTIAL });
  try {
    const serving = await servingFiles(env.stateDir);
    broker = await startBroker(env, { serving });
    const kc = env.adminKubeConfig();
    const roleArn = await setUp(env, kc, tickets);
    // CHAINWARDEN_BENCH_ONLY=gateway, memory, mcp, issuance or hops measures that part alone, for profiling.
    const only = process.env.CHAINWARDEN_BENCH_ONLY;
    if (only === 'gateway') {
      process.stdout.write(`${JSON.stringify(await gateway(kc, broker, env, roleArn), null, 2)}\n`);
      return;
    }
    if (only === 'memory') {
      process.stdout.write(`${JSON.stringify(await memory(kc, broker, roleArn, cached), null, 2)}\n`);
      return;
    }
    if (only === 'mcp') {
      process.stdout.write(`${JSON.stringify(await mcpGateway(kc, broker, roleArn, tickets), null, 2)}\n`);
      return;
    }
    if (only === 'issuance') {
      process.stdout.write(`${JSON.stringify(await issuanceAndRevocation(kc, broker, env, roleArn, tasks), null, 2)}\n`);
      return;
    }
    log('hop decisions');
    const hopResults = await hops(kc, broker, env, roleArn, serving);
    if (only === 'hops') {
      process.stdout.write(`${JSON.stringify(hopResults, null, 2)}\n`);
      return;
    }
    // CHAINWARDEN_BENCH_ONLY=hops+memory: the operator's memory after the hop load, quicker than a full run.
    if (only === 'hops+memory') {
      const mem = await memory(kc, broker, roleArn, cached);
      process.stdout.write(`${JSON.stringify({ allocator: chosen.name, hops: hopResults, memory: mem }, null, 2)}\n`);
      return;
    }
    log('AWS gateway');
    const gatewayResult = await gateway(kc, broker, env, roleArn);
    // CHAINWARDEN_BENCH_ONLY=hops+gateway: the gateway measured after the hop load, as in a full run.
    if (only === 'hops+gateway') {
      process.stdout.write(`${JSON.stringify({ hops: hopResults, gateway: gatewayResult }, null, 2)}\n`);
      return;
    }
    log('MCP gateway');
    const mcpResult = await mcpGateway(kc, broker, roleArn, tickets);
    log('admission webhook');
    const admissionResult = await admission(broker, roleArn);
    log(`credential issuance and revocation over ${tasks} tasks`);
    const credentials = await issuanceAndRevocation(kc, broker, env, roleArn, tasks);
    log(`operator memory with ${cached} AgentTasks`);
    const mem = await memory(kc, broker, roleArn, cached);
    const measured = { machine: { cpus: os.cpus().length, node: process.version, memoryGiB: Math.round(os.totalmem() / 2 ** 30), allocator: chosen.name }, hops: hopResults, gateway: gatewayResult, mcpGateway: mcpResult, credentials, admission: admissionResult, memory: mem };
    const results: Results = { ...measured, goals: goals(measured) };
    const json = JSON.stringify(results, null, 2);
    await writeFile('bench-results.json', `${json}\n`);
    process.stdout.write(`${json}\n`);
    process.stderr.write(table(results));
  } finally {
    broker?.child.kill('SIGTERM');
    if (broker) await new Promise((r) => broker?.child.once('exit', r));
    await tickets.close();
    await env.stop();
    await rm(scratch, { recursive: true, force: true });
  }
}

await main();
