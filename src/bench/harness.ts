/**
 * What the benchmark and the soak share: the operator as a real process (one or more replicas),
 * a real sidecar, an HTTPS client that trusts the operator's CA, and small helpers.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CreateRoleCommand, IAMClient } from '@aws-sdk/client-iam';
import type { KubeConfig } from '@kubernetes/client-node';
import { localAws, type LocalEnvironment } from '../controlplane/environment.js';
import { freePort } from '../controlplane/ports.js';
import { rawRequest } from '../kube/raw.js';
import { CertificateAuthority } from '../pki/authority.js';
import type { Allocator } from './allocator.js';

const here = path.dirname(new URL(import.meta.url).pathname);
export const bin = path.resolve(here, '..', '..', 'bin', 'chainwarden.js');
export const log = (m: string) => process.stderr.write(`· ${m}\n`);

/** The allocator the operator and sidecars started from here run on: the system's until `useAllocator`. */
let allocator: Allocator = { name: 'system', env: {} };
export function useAllocator(chosen: Allocator): void {
  allocator = chosen;
}

export interface Broker {
  url: string;
  /** The admission webhooks' own listener. */
  webhookUrl: string;
  ca: string;
  pid: number;
  child: ChildProcess;
}

export async function https(broker: Pick<Broker, 'url' | 'ca'>, method: string, p: string, token?: string, body?: unknown): Promise<{ status: number; body: unknown }> {
  const { request } = await import('node:https');
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(new URL(p, broker.url), { method, ca: broker.ca, headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => {
        let parsed: unknown = text;
        try {
          parsed = text ? (JSON.parse(text) as unknown) : undefined;
        } catch {
          // /metrics is text
        }
        resolve({ status: res.statusCode ?? 0, body: parsed });
      });
    });
    req.on('error', reject);
    req.end(payload);
  });
}

/** Serving material every replica shares, for 127.0.0.1: one CA the agents and the API server trust. */
export interface Serving {
  cert: string;
  key: string;
  ca: string;
  caPem: string;
}

export async function servingFiles(dir: string): Promise<Serving> {
  const ca = await CertificateAuthority.create('bench-ca');
  const serving = await ca.issueServing('chainwarden', { dnsNames: ['localhost'], ips: ['127.0.0.1'] });
  const files = { cert: path.join(dir, 'bench.crt'), key: path.join(dir, 'bench.key'), ca: path.join(dir, 'bench-ca.crt') };
  await writeFile(files.cert, serving.certPem);
  await writeFile(files.key, serving.keyPem);
  await writeFile(files.ca, ca.certPem);
  return { ...files, caPem: ca.certPem };
}

export interface ReplicaOptions {
  serving?: Serving;
  port?: number;
  webhookPort?: number;
  /** The URL the webhooks are registered at (a proxy in front of every replica); this replica's own listener by default. */
  webhookUrl?: string;
  auditFile?: string;
  /** Where the operator's log (warnings and worse) goes; nowhere by default. */
  logFile?: string;
  /** Stop the whole run when this process dies on its own (the benchmark: figures after it would be meaningless). */
  exitIsFatal?: boolean;
}

/** The operator as a real process against the local control plane and emulator, ready when this resolves. */
export async function startBroker(env: LocalEnvironment, options: ReplicaOptions = {}): Promise<Broker> {
  const files = options.serving ?? (await servingFiles(env.stateDir));
  const port = options.port ?? (await freePort());
  const webhookPort = options.webhookPort ?? (await freePort());
  const aws = localAws(env);
  // CHAINWARDEN_BENCH_PROFILE=DIR writes a V8 CPU profile of the operator there.
  const profile = process.env.CHAINWARDEN_BENCH_PROFILE ? ['--cpu-prof', '--cpu-prof-dir', process.env.CHAINWARDEN_BENCH_PROFILE] : [];
  const args = [
    ...profile,
    bin,
    'operator',
    '--kubeconfig', env.kubeconfig,
    '--namespace', 'chainwarden-system',
    '--listen', `127.0.0.1:${port}`,
    '--webhook-listen', `127.0.0.1:${webhookPort}`,
    '--tls-cert', files.cert,
    '--tls-key', files.key,
    '--tls-ca', files.ca,
    '--webhook-url', options.webhookUrl ?? `https://127.0.0.1:${webhookPort}`,
    '--sts-endpoint', env.stsEndpoint,
    '--iam-endpoint', env.stsEndpoint,
    '--aws-gateway-endpoint', env.stsEndpoint,
    '--audit-file', options.auditFile ?? path.join(env.stateDir, 'audit.jsonl'),
    '--log-level', 'warn',
  ];
  const logFd = options.logFile ? openSync(options.logFile, 'a') : undefined;
  const child = spawn(process.execPath, args, {
    stdio: ['ignore', logFd ?? 'ignore', 'inherit'],
    env: {
      ...process.env,
      ...allocator.env,
      AWS_ACCESS_KEY_ID: aws.credentials.accessKeyId,
      AWS_SECRET_ACCESS_KEY: aws.credentials.secretAccessKey,
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
    },
  });
  // The child has its own copy of the descriptor.
  if (logFd !== undefined) closeSync(logFd);
  const broker = { url: `https://127.0.0.1:${port}`, webhookUrl: `https://127.0.0.1:${webhookPort}`, ca: files.caPem, pid: child.pid ?? 0, child };
  if (options.exitIsFatal ?? true) {
    // An operator that dies mid-run makes every figure after it meaningless: stop rather than measure refusals.
    child.on('exit', (code, signal) => {
      if (signal === 'SIGTERM' || child.killed) return;
      log(`the operator exited (${signal ?? `code ${code}`}) during the run; no figures are written`);
      process.exit(1);
    });
  }
  for (let i = 0; i < 300; i++) {
    const ready = await https(broker, 'GET', '/readyz').catch(() => undefined);
    if (ready?.status === 200) return broker;
    if (child.exitCode !== null || child.signalCode !== null) break;
    await sleep(100);
  }
  child.kill('SIGKILL');
  throw new Error('the operator did not become ready within 30 s');
}

export async function rssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Math.round(Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024);
}

/** CPU time (user and system) a process has used so far, in ms; Linux reports it in ticks of 10 ms. */
export async function cpuMs(pid: number): Promise<number> {
  const fields = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]?.split(' ') ?? [];
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/** CPU milliseconds the whole machine has spent busy (all cores, neither idle nor waiting on I/O) since boot. */
export async function machineCpuMs(): Promise<number> {
  const fields = (await readFile('/proc/stat', 'utf8')).split('\n')[0]?.trim().split(/\s+/).slice(1).map(Number) ?? [];
  const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = fields;
  return (user + nice + system + irq + softirq + steal) * 10;
}

/** The process whose command line names `binary` and contains `marker` (e.g. the environment's state directory). */
export async function pidOf(binary: string, marker: string): Promise<number | undefined> {
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    const [command = ''] = cmdline.split('\0');
    if (path.basename(command) === binary && cmdline.includes(marker)) return Number(entry);
  }
  return undefined;
}

/** The API server's request counter (`apiserver_request_total`), summed by verb and resource, e.g. `APPLY agenttasks/status`. */
export async function apiRequests(kc: KubeConfig): Promise<Map<string, number>> {
  const res = await rawRequest(kc, 'GET', '/metrics');
  const counts = new Map<string, number>();
  for (const line of String(res.body).split('\n')) {
    const m = /^apiserver_request_total\{(.*)\} (\S+)$/.exec(line);
    if (!m) continue;
    const labels: Record<string, string | undefined> = Object.fromEntries([...(m[1] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1] ?? '', l[2]]));
    const key = `${labels.verb ?? ''} ${labels.resource ?? ''}${labels.subresource ? `/${labels.subresource}` : ''}`;
    counts.set(key, (counts.get(key) ?? 0) + Number(m[2]));
  }
  return counts;
}

/** What changed between two `apiRequests` readings, per `per` (e.g. per task): only the writes, and only those seen at least once a task. */
export function writesPer(before: Map<string, number>, after: Map<string, number>, per: number): Record<string, number> {
  const writes: Record<string, number> = {};
  for (const [key, value] of after) {
    const each = (value - (before.get(key) ?? 0)) / per;
    if (/^(POST|PUT|PATCH|APPLY|DELETE) /.test(key) && each >= 0.05) writes[key] = Math.round(each * 100) / 100;
  }
  return writes;
}

/**
 * What the API server was doing over `ms` while the bench itself sent nothing: its CPU (percent of
 * one core) and the writes it served per second, e.g. work an earlier part left behind.
 */
export async function background(kc: KubeConfig, apiServer: number | undefined, ms: number): Promise<{ apiServerCpuPercent: number | undefined; writesPerSecond: Record<string, number> }> {
  const cpuBefore = apiServer === undefined ? 0 : await cpuMs(apiServer);
  const requestsBefore = await apiRequests(kc);
  const started = performance.now();
  await sleep(ms);
  const elapsed = performance.now() - started;
  const apiServerCpuPercent = apiServer === undefined ? undefined : Math.round((((await cpuMs(apiServer)) - cpuBefore) / elapsed) * 100);
  return { apiServerCpuPercent, writesPerSecond: writesPer(requestsBefore, await apiRequests(kc), elapsed / 1000) };
}

export async function post(kc: KubeConfig, p: string, obj: unknown): Promise<void> {
  const res = await rawRequest(kc, 'POST', p, obj);
  if (res.status >= 300) throw new Error(`POST ${p}: ${res.status} ${JSON.stringify(res.body).slice(0, 300)}`);
}

export async function pool<T>(items: T[], concurrency: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < items.length) await work(items[next++] as T);
    }),
  );
}

/** A real sidecar (`chainwarden agent`) for one pod token, with its AWS listener: its URLs and the local token its callers present. */
export async function startSidecar(broker: Pick<Broker, 'url' | 'ca'>, token: string) {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'bench-sidecar-'));
  const tokenFile = path.join(dir, 'token');
  const caFile = path.join(dir, 'ca.pem');
  await writeFile(tokenFile, token, { mode: 0o600 });
  await writeFile(caFile, broker.ca);
  const profile = process.env.CHAINWARDEN_BENCH_PROFILE ? ['--cpu-prof', '--cpu-prof-dir', process.env.CHAINWARDEN_BENCH_PROFILE] : [];
  const child = spawn(process.execPath, [...profile, bin, 'agent', '--broker', broker.url, '--ca', caFile, '--token-file', tokenFile, '--local-token-file', path.join(dir, 'local'), '--listen', '127.0.0.1:0', '--aws-listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...allocator.env } });
  const [url = '', awsUrl = ''] = await new Promise<string[]>((resolve) => child.stdout?.once('data', (c: Buffer) => resolve(c.toString().trim().split('\n'))));
  const localToken = (await readFile(path.join(dir, 'local'), 'utf8')).trim();
  return { url, awsUrl, localToken, pid: child.pid ?? 0, stop: () => void child.kill('SIGTERM') };
}

export interface PolicySetUp {
  namespace: string;
  /** The AgentPolicy's name, and the IAM role's prefix. */
  name: string;
  /** The tickets MCP server, and the credential it takes (kept in Secret tickets-mcp). */
  mcpUrl: string;
  mcpCredential: string;
  rules: Record<string, unknown>[];
  onViolation: 'Deny' | 'Revoke';
}

/**
 * A namespace with service account `agent`, a role in the emulator, the tickets MCP server's
 * Secret, and an AgentPolicy over tickets (pii, through the MCP gateway) and email (external)
 * with `rules`; returns the role's ARN.
 */
export async function setUpPolicy(env: LocalEnvironment, kc: KubeConfig, p: PolicySetUp): Promise<string> {
  await post(kc, '/api/v1/namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: p.namespace } });
  await post(kc, `/api/v1/namespaces/${p.namespace}/secrets`, { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'tickets-mcp' }, stringData: { token: p.mcpCredential } });
  await post(kc, `/api/v1/namespaces/${p.namespace}/serviceaccounts`, { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'agent' } });
  const aws = localAws(env);
  const iam = new IAMClient({ region: aws.region, endpoint: aws.iamEndpoint, credentials: aws.credentials });
  const role = await iam.send(new CreateRoleCommand({ RoleName: `${p.name}-agent`, AssumeRolePolicyDocument: '{"Version":"2012-10-17","Statement":[]}' }));
  iam.destroy();
  await post(kc, `/apis/chainwarden.io/v1alpha1/namespaces/${p.namespace}/agentpolicies`, {
    apiVersion: 'chainwarden.io/v1alpha1',
    kind: 'AgentPolicy',
    metadata: { name: p.name, namespace: p.namespace },
    spec: {
      maxTaskTTL: '2h',
      limits: { maxHops: 100000, maxDepth: 64 },
      aws: { allowedRoleArns: [role.Role?.Arn ?? ''], maxDuration: '1h', allowDirect: true },
      systems: [
        { name: 'tickets', dataClasses: ['pii'], mcp: { url: p.mcpUrl, credentials: { secretRef: { name: 'tickets-mcp', key: 'token' }, prefix: 'Bearer ' }, resource: 'ticket/{ticketId}' } },
        { name: 'email', trustBoundary: 'external' },
      ],
      rules: p.rules,
      onViolation: p.onViolation,
    },
  });
  return role.Role?.Arn ?? '';
}
