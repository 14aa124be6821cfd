import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { KubeConfig } from '@kubernetes/client-node';
import { CertificateAuthority } from '../pki/authority.js';
import { ensureAssets, type Progress } from './assets.js';
import { startEtcd, type Etcd } from './etcd.js';
import { startKubeApiserver, type KubeApiserver } from './apiserver.js';
import { startStsEmulator, type StsEmulator } from './moto.js';
import { kubeConfigFromYaml, kubeconfigYaml } from './kubeconfig.js';
import { installCrds, PACKAGE_CRD_DIR } from './crds.js';
import { rawRequest } from '../kube/raw.js';
import { ChainwardenError } from '../errors.js';

/** Where the operator keeps its Lease and signing keys in a local environment. */
export const OPERATOR_NAMESPACE = 'chainwarden-system';

async function ensureNamespace(kc: KubeConfig, name: string): Promise<void> {
  const res = await rawRequest(kc, 'POST', '/api/v1/namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
  if (res.status >= 300 && res.status !== 409) throw new ChainwardenError('start_failed', `creating namespace ${name}: ${res.status}`);
}

/**
 * What a running local environment tells the processes that use it. It is plain JSON: the
 * devenv command writes it as `env.json`, and the test harness hands it to every test worker.
 */
export interface EnvironmentDescription {
  /** https URL of the API server. */
  apiServer: string;
  /** Admin kubeconfig (system:masters); admins may impersonate any user. */
  kubeconfig: string;
  /** The cluster CA certificate, and its key, which signs client certificates for any user. */
  caFile: string;
  caKeyFile: string;
  /** http URL of the STS/IAM emulator; POST `/moto-api/reset` forgets its state. */
  stsEndpoint: string;
  /** The emulator's request log (JSON lines): what was sent to STS and IAM. */
  stsRecording: string;
  /** Working directory: kubeconfigs, certificates, component logs. Removed on stop. */
  stateDir: string;
  /** https URL of the operator's broker, when one runs. */
  brokerUrl?: string;
  /** https URL of the operator's admission webhooks (a listener of their own), when one runs. */
  webhookUrl?: string;
  /** PEM file of the CA that signed the operator's serving certificates (broker and webhooks). */
  brokerCA?: string;
  /** The operator's log (pino JSON lines), where one is written to a file. */
  operatorLog?: string;
  /** The audit stream (JSON lines), for `chainwarden audit verify` and `chainwarden trace`. */
  auditFile?: string;
  /** What an OpenTelemetry Collector received from the operator (OTLP JSON lines), where one runs. */
  otlpSpans?: string;
}

export interface LocalEnvironment extends EnvironmentDescription {
  /** The CRDs installed at start. */
  crds: string[];
  /** The plain-JSON description, to hand to other processes. */
  describe(): EnvironmentDescription;
  adminKubeConfig(): KubeConfig;
  kubeConfigFor(user: string, groups?: readonly string[]): Promise<KubeConfig>;
  resetSts(): Promise<void>;
  /**
   * The real processes, for fault tests: the API server can be stopped and started again (same
   * port, flags and keys; its state is in etcd), and etcd frozen (SIGSTOP) and thawed (SIGCONT).
   */
  faults: {
    stopApiServer(graceMs?: number): Promise<void>;
    startApiServer(): Promise<void>;
    freezeEtcd(): void;
    thawEtcd(): void;
    /** Compacts etcd's history up to now: every watch resumed from an older resourceVersion is told 410 Gone. */
    compactEtcd(): Promise<void>;
  };
  stop(): Promise<void>;
}

export interface StartOptions {
  /** Progress lines for a person watching (first runs build components for minutes). */
  progress?: Progress;
  /** CRDs to install; defaults to the package's `crds/`. */
  crdDir?: string;
  /** Keep the state directory (logs) after stop. */
  keepState?: boolean;
}

/** The operator's AWS settings for a local environment: the emulator, with its test identity. */
export function localAws(env: EnvironmentDescription) {
  return { region: 'us-east-1', stsEndpoint: env.stsEndpoint, iamEndpoint: env.stsEndpoint, gatewayEndpoint: env.stsEndpoint, credentials: { accessKeyId: 'AKIAIOSFODNN7EXAMPLE', secretAccessKey: 'chainwarden-local-operator-key' } };
}

/** Through etcd's JSON gateway: its current revision, then a compaction up to it. */
async function compactEtcd(url: string): Promise<void> {
  const post = async (path: string, body: unknown): Promise<{ header?: { revision?: string } }> => {
    const res = await fetch(`${url}${path}`, { method: 'POST', body: JSON.stringify(body) });
    if (!res.ok) throw new ChainwardenError('command_failed', `etcd ${path}: ${res.status} ${await res.text()}`);
    return (await res.json()) as { header?: { revision?: string } };
  };
  const { header } = await post('/v3/kv/range', { key: Buffer.from('/').toString('base64') });
  await post('/v3/kv/compaction', { revision: header?.revision, physical: true });
}

function signal(pid: number | undefined, name: NodeJS.Signals): void {
  if (pid !== undefined) process.kill(pid, name);
}

/** A kubeconfig for any user and groups, signed by the environment's CA. */
export async function kubeConfigForUser(env: EnvironmentDescription, user: string, groups: readonly string[] = []): Promise<KubeConfig> {
  const ca = await CertificateAuthority.load({ certPem: await readFile(env.caFile, 'utf8'), keyPem: await readFile(env.caKeyFile, 'utf8') });
  return kubeConfigFromYaml(kubeconfigYaml(env.apiServer, ca.certPem, user, await ca.issueClient(user, groups)));
}

/**
 * Starts etcd, kube-apiserver and the STS emulator on free loopback ports, installs the CRDs,
 * and returns once all of them answer. Whatever started is stopped again if a later step fails.
 */
export async function startLocalEnvironment(options: StartOptions = {}): Promise<LocalEnvironment> {
  const progress = options.progress ?? (() => {});
  const assets = await ensureAssets(progress);
  const stateDir = await mkdtemp(path.join(os.tmpdir(), 'chainwarden-env-'));
  const started: { stop(): Promise<void> }[] = [];
  const stopAll = async (keepState = options.keepState) => {
    for (const component of started.reverse()) await component.stop();
    started.length = 0;
    if (!keepState) await rm(stateDir, { recursive: true, force: true });
  };
  try {
    progress('starting etcd, kube-apiserver and the STS emulator');
    const ca = await CertificateAuthority.create('chainwarden-local-ca');
    const admin = await ca.issueClient('chainwarden-admin', ['system:masters']);
    const [etcd, sts] = await Promise.all([
      startEtcd(assets.etcd, stateDir).then((e: Etcd) => (started.push(e.process), e)),
      startStsEmulator(assets.motoServer, stateDir).then((s: StsEmulator) => (started.push(s.process), s)),
    ]);
    const apiserver: KubeApiserver = await startKubeApiserver({ binary: assets.kubeApiserver, etcdUrl: etcd.url, dir: stateDir, ca, admin });
    started.push({ stop: () => apiserver.stop() });

    const description: EnvironmentDescription = {
      apiServer: apiserver.url,
      kubeconfig: path.join(stateDir, 'admin.kubeconfig'),
      caFile: path.join(stateDir, 'pki', 'ca.crt'),
      caKeyFile: path.join(stateDir, 'pki', 'ca.key'),
      stsEndpoint: sts.endpoint,
      stsRecording: sts.recording,
      stateDir,
    };
    const adminYaml = kubeconfigYaml(apiserver.url, ca.certPem, 'chainwarden-admin', admin);
    await writeFile(description.kubeconfig, adminYaml, { mode: 0o600 });
    await writeFile(description.caKeyFile, ca.keyPem, { mode: 0o600 });
    const crds = await installCrds(kubeConfigFromYaml(adminYaml), options.crdDir ?? PACKAGE_CRD_DIR);
    await ensureNamespace(kubeConfigFromYaml(adminYaml), OPERATOR_NAMESPACE);
    if (crds.length > 0) progress(`installed CRDs: ${crds.join(', ')}`);

    return {
      ...description,
      crds,
      describe: () => ({ ...description }),
      adminKubeConfig: () => kubeConfigFromYaml(adminYaml),
      kubeConfigFor: (user, groups = []) => kubeConfigForUser(description, user, groups),
      resetSts: () => sts.reset(),
      faults: {
        stopApiServer: (graceMs) => apiserver.stop(graceMs),
        startApiServer: () => apiserver.start(),
        freezeEtcd: () => signal(etcd.process.pid, 'SIGSTOP'),
        thawEtcd: () => signal(etcd.process.pid, 'SIGCONT'),
        compactEtcd: () => compactEtcd(etcd.url),
      },
      stop: () => {
        // A frozen etcd would not stop on SIGTERM.
        if (etcd.process.running) signal(etcd.process.pid, 'SIGCONT');
        return stopAll();
      },
    };
  } catch (err) {
    // Keep the component logs the error points at.
    await stopAll(true);
    if (err instanceof Error) err.message += `\n(component logs kept in ${stateDir})`;
    throw err;
  }
}
