import { existsSync, readFileSync } from 'node:fs';
import type https from 'node:https';
import { isIPv6 } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { ChainwardenError } from '../errors.js';

/**
 * What the operator needs of a kubeconfig: where the API server is, and the TLS material and
 * headers a request to it carries. client-node's `KubeConfig` has this shape, and so does the
 * light loader below.
 */
export interface KubeAccess {
  getCurrentCluster(): { server: string } | null;
  applyToHTTPSOptions(options: https.RequestOptions): Promise<void>;
}

export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

/** The service account's token file is read again after this long: the kubelet rotates it. */
const TOKEN_FILE_TTL_MS = 60_000;

interface Where {
  /** --kubeconfig, when given. */
  file?: string;
  env?: NodeJS.ProcessEnv;
  home?: string;
  serviceAccountDir?: string;
}

/**
 * The operator's connection to the API server, found as kubectl and client-node find it:
 * --kubeconfig, else $KUBECONFIG, else ~/.kube/config, else the pod's service account.
 *
 * The two forms an operator runs with — the in-cluster service account, and a kubeconfig whose
 * user is a client certificate or a token — are read here. Importing client-node's `KubeConfig`
 * evaluates its whole generated API (thousands of model classes), about 50 MiB that a long-lived
 * operator would carry for nothing. Anything else (exec plugins, auth providers, proxies, several
 * files in $KUBECONFIG) is handed to client-node, which supports it all.
 */
export async function loadKubeAccess(where: Where = {}): Promise<KubeAccess> {
  const light = lightAccess(where);
  if (light) return light;
  const { KubeConfig } = await import('@kubernetes/client-node');
  const kc = new KubeConfig();
  if (where.file) kc.loadFromFile(where.file);
  else kc.loadFromDefault();
  return kc;
}

/** The light form of `where`, or undefined when only client-node can read it. */
export function lightAccess(where: Where): KubeAccess | undefined {
  const env = where.env ?? process.env;
  if (where.file) return fromKubeconfigFile(where.file);
  if (env.KUBECONFIG) return env.KUBECONFIG.includes(path.delimiter) ? undefined : fromKubeconfigFile(env.KUBECONFIG);
  const home = path.join(where.home ?? os.homedir(), '.kube', 'config');
  if (existsSync(home)) return fromKubeconfigFile(home);
  const dir = where.serviceAccountDir ?? SERVICE_ACCOUNT_DIR;
  if (existsSync(path.join(dir, 'token'))) return inCluster(env, dir);
  return undefined;
}

function inCluster(env: NodeJS.ProcessEnv, dir: string): KubeAccess {
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT;
  if (!host || !port) throw new ChainwardenError('no_cluster', `a service account token is mounted at ${dir} but KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set; pass --kubeconfig`);
  const scheme = ['80', '8080', '8001'].includes(port) ? 'http' : 'https';
  const server = `${scheme}://${isIPv6(host) ? `[${host}]` : host}:${port}`;
  return new LightAccess(server, { ca: readFileSync(path.join(dir, 'ca.crt')) }, tokenFile(path.join(dir, 'token')));
}

const CLUSTER_FIELDS = new Set(['server', 'certificate-authority', 'certificate-authority-data', 'insecure-skip-tls-verify']);
const USER_FIELDS = new Set(['client-certificate', 'client-certificate-data', 'client-key', 'client-key-data', 'token']);

interface Named<T> {
  name?: string;
  cluster?: T;
  user?: T;
  context?: { cluster?: string; user?: string };
}

function fromKubeconfigFile(file: string): KubeAccess | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ChainwardenError('no_cluster', `cannot read the kubeconfig ${file}: ${(err as Error).message}`);
  }
  const config = (parseYaml(text) ?? {}) as {
    'current-context'?: string;
    contexts?: Named<never>[];
    clusters?: Named<Record<string, unknown>>[];
    users?: Named<Record<string, unknown>>[];
  };
  const current = config['current-context'];
  if (!current) throw new ChainwardenError('no_cluster', `the kubeconfig ${file} sets no current-context; set one with: kubectl config use-context NAME`);
  const context = config.contexts?.find((c) => c.name === current)?.context;
  if (!context) throw new ChainwardenError('no_cluster', `the kubeconfig ${file} has no context named "${current}" (its current-context)`);
  const cluster = config.clusters?.find((c) => c.name === context.cluster)?.cluster;
  if (!cluster || typeof cluster.server !== 'string') throw new ChainwardenError('no_cluster', `the kubeconfig ${file} has no cluster "${context.cluster ?? ''}" with a server, as context "${current}" names`);
  const user = (context.user === undefined ? {} : config.users?.find((u) => u.name === context.user)?.user) ?? {};
  if (Object.keys(cluster).some((k) => !CLUSTER_FIELDS.has(k)) || Object.keys(user).some((k) => !USER_FIELDS.has(k))) return undefined;

  const dir = path.dirname(path.resolve(file));
  // As kubectl reads them: a relative path is relative to the kubeconfig file's directory.
  const material = (data: unknown, at: unknown): Buffer | undefined => {
    if (typeof data === 'string') return Buffer.from(data, 'base64');
    if (typeof at === 'string') return readFileSync(path.resolve(dir, at));
    return undefined;
  };
  const tls: https.RequestOptions = {
    ca: material(cluster['certificate-authority-data'], cluster['certificate-authority']),
    cert: material(user['client-certificate-data'], user['client-certificate']),
    key: material(user['client-key-data'], user['client-key']),
  };
  if (cluster['insecure-skip-tls-verify'] === true) tls.rejectUnauthorized = false;
  const token = typeof user.token === 'string' ? () => user.token as string : undefined;
  return new LightAccess(cluster.server, tls, token);
}

function tokenFile(file: string): () => string {
  let cached: { token: string; at: number } | undefined;
  return () => {
    const now = Date.now();
    if (!cached || now - cached.at >= TOKEN_FILE_TTL_MS) cached = { token: readFileSync(file, 'utf8').trim(), at: now };
    return cached.token;
  };
}

class LightAccess implements KubeAccess {
  constructor(
    private readonly server: string,
    private readonly tls: https.RequestOptions,
    private readonly token: (() => string) | undefined,
  ) {}

  getCurrentCluster(): { server: string } {
    return { server: this.server };
  }

  applyToHTTPSOptions(options: https.RequestOptions): Promise<void> {
    for (const key of ['ca', 'cert', 'key', 'rejectUnauthorized'] as const) {
      if (this.tls[key] !== undefined) (options as Record<string, unknown>)[key] = this.tls[key];
    }
    if (this.token) options.headers = { ...options.headers, Authorization: `Bearer ${this.token()}` };
    return Promise.resolve();
  }
}
