import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { KubeConfig } from '@kubernetes/client-node';
import { afterAll, beforeAll, inject } from 'vitest';
import { localAws, type EnvironmentDescription } from '../../src/controlplane/environment.js';
import { rawRequest } from '../../src/kube/raw.js';
import { CertificateAuthority } from '../../src/pki/authority.js';
import type { FaultPoint } from '../../src/runtime/faults.js';
import { brokerRequest } from './agents.js';

const bin = path.resolve(import.meta.dirname, '../../bin/chainwarden.js');

/** One line the operator logged (pino JSON), with its time in epoch milliseconds. */
export interface LogLine {
  at: number;
  msg: string;
  [field: string]: unknown;
}

/** The serving certificate every replica of a test shares, so one client trusts them all. */
export interface ServingFiles {
  cert: string;
  key: string;
  ca: string;
}

export async function servingFiles(): Promise<ServingFiles> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'replica-tls-'));
  const ca = await CertificateAuthority.create('chainwarden-test-replicas');
  const pair = await ca.issueServing('chainwarden', { dnsNames: ['localhost'], ips: ['127.0.0.1'] });
  const files = { cert: path.join(dir, 'tls.crt'), key: path.join(dir, 'tls.key'), ca: path.join(dir, 'ca.crt') };
  await Promise.all([writeFile(files.cert, pair.certPem), writeFile(files.key, pair.keyPem, { mode: 0o600 }), writeFile(files.ca, ca.certPem)]);
  return files;
}

export interface ReplicaOptions {
  namespace: string;
  identity: string;
  tls: ServingFiles;
  auditFile: string;
  /** Crash points armed in this process (see src/runtime/faults.ts). */
  faults?: FaultPoint[];
  /** How far this process's clock is off. */
  clockSkewMs?: number;
  /** Lease duration, renew deadline, retry period (Go durations). */
  lease?: { duration: string; renewDeadline: string; retryPeriod: string };
  pruneInterval?: string;
}

export const SHORT_LEASE = { duration: '3s', renewDeadline: '2s', retryPeriod: '300ms' };

/** A replica of the operator as a real process: `chainwarden operator`, signalled and killed for real. */
export interface Replica {
  identity: string;
  child: ChildProcess;
  /** The broker's URL. */
  url: string;
  logs: LogLine[];
  stderr(): string;
  /** Resolves when the process is gone, with how it ended. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Times it logged that it became leader, and that it stopped leading. */
  terms(): { from: number; to: number }[];
  /** Leader-only work it logged (revocations, prunes, finalizer removals), each as the interval it ran in. */
  leaderWork(): { kind: string; from: number; to: number }[];
  signal(signal: NodeJS.Signals): void;
  /** SIGTERM and wait (SIGKILL after 20 s). */
  stop(): Promise<void>;
}

export async function startReplica(env: EnvironmentDescription, opts: ReplicaOptions): Promise<Replica> {
  const aws = localAws(env);
  const lease = opts.lease ?? SHORT_LEASE;
  const args = [
    bin,
    'operator',
    '--kubeconfig', env.kubeconfig,
    '--namespace', opts.namespace,
    '--watch-namespace', opts.namespace,
    '--identity', opts.identity,
    '--listen', '127.0.0.1:0',
    '--webhook-listen', '127.0.0.1:0',
    '--tls-cert', opts.tls.cert,
    '--tls-key', opts.tls.key,
    '--tls-ca', opts.tls.ca,
    '--sts-endpoint', aws.stsEndpoint,
    '--iam-endpoint', aws.iamEndpoint,
    '--aws-gateway-endpoint', aws.gatewayEndpoint,
    '--audit-file', opts.auditFile,
    '--log-level', 'debug',
    '--leader-elect-lease-duration', lease.duration,
    '--leader-elect-renew-deadline', lease.renewDeadline,
    '--leader-elect-retry-period', lease.retryPeriod,
    '--revocation-prune-interval', opts.pruneInterval ?? '5m',
  ];
  const child = spawn(process.execPath, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env,
      AWS_ACCESS_KEY_ID: aws.credentials.accessKeyId,
      AWS_SECRET_ACCESS_KEY: aws.credentials.secretAccessKey,
      CHAINWARDEN_FAULT_POINTS: (opts.faults ?? []).join(','),
      CHAINWARDEN_FAULT_CLOCK_SKEW_MS: String(opts.clockSkewMs ?? 0),
    },
  });
  const logs: LogLine[] = [];
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const url = await new Promise<string>((resolve, reject) => {
    readline.createInterface({ input: child.stdout }).on('line', (text) => {
      let line: Record<string, unknown>;
      try {
        line = JSON.parse(text) as Record<string, unknown>;
      } catch {
        return;
      }
      const entry = { ...line, at: Date.parse(String(line.time)), msg: String(line.msg) };
      logs.push(entry);
      if (entry.msg === 'operator serving') resolve(String(line.url));
    });
    void exited.then(({ code, signal }) => reject(new Error(`replica ${opts.identity} exited (${code ?? signal}) before serving: ${stderr}`)));
  });
  const replica: Replica = {
    identity: opts.identity,
    child,
    url,
    logs,
    exited,
    stderr: () => stderr,
    terms: () => {
      const out: { from: number; to: number }[] = [];
      for (const l of logs) {
        if (l.msg === 'became leader') out.push({ from: l.at, to: Infinity });
        const open = out.at(-1);
        if (l.msg === 'stopped leading' && open && open.to === Infinity) open.to = l.at;
      }
      return out;
    },
    leaderWork: () =>
      logs.filter((l) => typeof l.leaderWork === 'string').map((l) => ({ kind: String(l.leaderWork), from: typeof l.startedAt === 'number' ? l.startedAt : l.at, to: l.at })),
    signal: (signal) => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      // A stopped (SIGSTOP) process must be continued to act on SIGTERM.
      child.kill('SIGCONT');
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      await exited;
      clearTimeout(timer);
    },
  };
  return replica;
}

/** Leader-only work of several replicas, as [replica, interval] pairs whose intervals overlap. */
export function overlappingLeaderWork(replicas: Replica[]): string[] {
  const all = replicas.flatMap((r) => r.leaderWork().map((w) => ({ ...w, who: r.identity })));
  const found: string[] = [];
  for (const a of all) {
    for (const b of all) {
      if (a.who < b.who && a.from <= b.to && b.from <= a.to) found.push(`${a.who} ${a.kind} [${new Date(a.from).toISOString()}, ${new Date(a.to).toISOString()}] overlaps ${b.who} ${b.kind} [${new Date(b.from).toISOString()}, ${new Date(b.to).toISOString()}]`);
    }
  }
  return found;
}

const SHARED_LEASE = '/apis/coordination.k8s.io/v1/namespaces/chainwarden-system/leases/chainwarden-controller';

/**
 * The shared operator every integration test runs (test/env/global-setup.ts) watches every
 * namespace: left alone, its controller would finish whatever a killed replica left half done,
 * and hide it. This holds its Lease for a replica that does not exist until the returned function
 * gives it back; meanwhile its webhooks and broker serve as before, but its controllers do not run.
 */
export async function sidelineSharedController(admin: KubeConfig, env: EnvironmentDescription): Promise<() => Promise<void>> {
  const now = new Date().toISOString().replace('Z', '000Z');
  const spec = { holderIdentity: 'fault-tests', leaseDurationSeconds: 3600, acquireTime: now, renewTime: now };
  for (let attempt = 0; ; attempt++) {
    const current = await rawRequest(admin, 'GET', SHARED_LEASE);
    const lease = current.status === 200 ? (current.body as { metadata: object; spec: object }) : undefined;
    const written = lease
      ? await rawRequest(admin, 'PUT', SHARED_LEASE, { apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: lease.metadata, spec: { ...lease.spec, ...spec } })
      : await rawRequest(admin, 'POST', SHARED_LEASE.slice(0, SHARED_LEASE.lastIndexOf('/')), { apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: { name: 'chainwarden-controller', namespace: 'chainwarden-system' }, spec });
    if (written.status === 200 || written.status === 201) break;
    // The shared operator renewed in between.
    if (attempt === 20) throw new Error(`could not take the shared operator's Lease: ${written.status}`);
  }
  const sharedLeads = async () => /^chainwarden_leader 1$/m.test(String((await brokerRequest(env, 'GET', '/metrics')).body));
  await until(async () => !(await sharedLeads()), 'the shared operator to step down');
  return async () => {
    await rawRequest(admin, 'DELETE', SHARED_LEASE);
    await until(sharedLeads, 'the shared operator to lead again');
  };
}

/** Polls outside a test (hooks may not use expect.poll). */
async function until(check: () => Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * For a test file that runs replicas of its own: the shared test operator's controllers stand
 * aside for the whole file, and every replica shares one set of serving files (the getter's).
 */
export function replicasOwnTheLease(): () => ServingFiles {
  let giveBack: (() => Promise<void>) | undefined;
  let tls: ServingFiles | undefined;
  beforeAll(async () => {
    const env = inject('env');
    const admin = new KubeConfig();
    admin.loadFromFile(env.kubeconfig);
    giveBack = await sidelineSharedController(admin, env);
    tls = await servingFiles();
  });
  afterAll(async () => {
    await giveBack?.();
  });
  return () => {
    if (!tls) throw new Error('serving files are made before the first test');
    return tls;
  };
}
