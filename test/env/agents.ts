import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CoreV1Api, type KubeConfig, type V1Pod } from '@kubernetes/client-node';
import type { EnvironmentDescription } from '../../src/controlplane/environment.js';

const bin = path.resolve(import.meta.dirname, '../../bin/chainwarden.js');

export async function createServiceAccount(kc: KubeConfig, namespace: string, name: string): Promise<void> {
  await kc.makeApiClient(CoreV1Api).createNamespacedServiceAccount({ namespace, body: { metadata: { name } } });
}

/** An agent pod object labelled with its task; no kubelet runs it. */
export async function createAgentPod(kc: KubeConfig, namespace: string, opts: { name: string; task: string; serviceAccount: string; extra?: Partial<V1Pod['spec']> }): Promise<V1Pod> {
  return kc.makeApiClient(CoreV1Api).createNamespacedPod({
    namespace,
    body: {
      metadata: { name: opts.name, labels: { 'chainwarden.io/task': opts.task } },
      spec: { serviceAccountName: opts.serviceAccount, containers: [{ name: 'agent', image: 'example.invalid/agent:1' }], ...opts.extra },
    },
  });
}

/** A token from the real TokenRequest API, bound to the pod, as the kubelet would project it. */
export async function podToken(kc: KubeConfig, pod: V1Pod, audience = 'chainwarden', seconds = 600): Promise<string> {
  const res = await kc.makeApiClient(CoreV1Api).createNamespacedServiceAccountToken({
    name: pod.spec?.serviceAccountName ?? 'default',
    namespace: pod.metadata?.namespace ?? '',
    body: { spec: { audiences: [audience], expirationSeconds: seconds, boundObjectRef: { apiVersion: 'v1', kind: 'Pod', name: pod.metadata?.name, uid: pod.metadata?.uid } } },
  });
  return res.status?.token ?? '';
}

export async function tokenFile(token: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'agent-token-'));
  const file = path.join(dir, 'token');
  await writeFile(file, token, { mode: 0o600 });
  return file;
}

export interface AgentProcess {
  /** http://127.0.0.1:PORT: what the pod's containers are given as CHAINWARDEN_URL. */
  url: string;
  /** With --aws-listen: what the pod's containers are given as AWS_ENDPOINT_URL. */
  awsUrl?: string;
  /** The pod token file the sidecar reads and sends to the broker; rewrite it to rotate the token. */
  tokenFile: string;
  /**
   * What the app containers read their Authorization header from (AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE):
   * the local token file, or the pod token file when the sidecar runs without one.
   */
  callerTokenFile: string;
  /** The headers an app container sends to the sidecar. */
  headers(): Promise<Record<string, string>>;
  child: ChildProcess;
  /** What the sidecar wrote to stderr (its log) so far. */
  stderr(): string;
  stop(): Promise<void>;
}

export interface AgentProcessOptions {
  /** Run as injected pods do, with a local token file (default), or let callers present the pod token. */
  localToken?: boolean;
  /** The local token file to use (created by the sidecar if absent); a fresh path when not given. */
  localTokenFile?: string;
  /** Extra arguments, e.g. a different --listen. */
  args?: string[];
}

/** `chainwarden agent` as a local process, as it runs in the pod's sidecar. */
export async function startAgentProcess(env: EnvironmentDescription, token: string, opts: AgentProcessOptions = {}): Promise<AgentProcess> {
  const file = await tokenFile(token);
  const local = opts.localToken === false ? undefined : (opts.localTokenFile ?? path.join(await mkdtemp(path.join(os.tmpdir(), 'agent-local-')), 'token'));
  const args = [bin, 'agent', '--broker', env.brokerUrl ?? '', '--ca', env.brokerCA ?? '', '--token-file', file, ...(local ? ['--local-token-file', local] : []), ...(opts.args ?? ['--listen', '127.0.0.1:0'])];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  // The first line is the main listener; an AWS listener (--aws-listen) prints a second.
  const [url = '', awsUrl] = await new Promise<string[]>((resolve, reject) => {
    child.stdout?.once('data', (c: Buffer) => resolve(c.toString().split('\n').map((l) => l.trim()).filter(Boolean)));
    child.once('exit', (code) => reject(new Error(`chainwarden agent exited ${code}: ${stderr}`)));
  });
  const callerTokenFile = local ?? file;
  return {
    url,
    awsUrl,
    tokenFile: file,
    callerTokenFile,
    // Read per call, as the AWS SDK does: the file's content verbatim.
    headers: async () => ({ authorization: (await readFile(callerTokenFile, 'utf8')).trim() }),
    child,
    stderr: () => stderr,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}

export async function getJson(url: string, init: RequestInit = {}): Promise<{ status: number; body: unknown }> {
  const res = await fetch(url, init);
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // keep text
  }
  return { status: res.status, body };
}

/** A request straight to the broker over TLS (trusting its CA), as the sidecar makes it. */
export async function brokerRequest(
  env: EnvironmentDescription,
  method: string,
  path: string,
  opts: { token?: string; authorization?: string; body?: unknown } = {},
): Promise<{ status: number; body: unknown }> {
  const https = await import('node:https');
  const ca = await readFile(env.brokerCA ?? '', 'utf8');
  const payload = opts.body === undefined ? undefined : typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body);
  const authorization = opts.authorization ?? (opts.token ? `Bearer ${opts.token}` : undefined);
  return new Promise((resolve, reject) => {
    const req = https.request(new URL(path, env.brokerUrl), { method, ca, headers: { ...(authorization ? { authorization } : {}), ...(payload ? { 'content-type': 'application/json' } : {}) } }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => {
        let body: unknown = text;
        try {
          body = JSON.parse(text);
        } catch {
          // keep text
        }
        resolve({ status: res.statusCode ?? 0, body });
      });
    });
    req.on('error', reject);
    req.end(payload);
  });
}
