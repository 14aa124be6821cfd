import https from 'node:https';
import type { KubeConfig } from '@kubernetes/client-node';
import { ChainwardenError } from '../errors.js';

/**
 * A plain JSON request to the API server. client-node's typed serializer renames and drops
 * fields it has no model for (`enum`, `default`, `x-kubernetes-*` in a CRD schema among them), so
 * objects we author as raw JSON (CRDs, webhook configurations) are sent through this instead.
 */
const agents = new WeakMap<KubeConfig, https.Agent>();

/**
 * One keep-alive agent per kubeconfig: a TLS handshake and a new secure context per request
 * would cost more than the request (the journal writes status many times a second).
 */
function agentFor(kc: KubeConfig, tls: https.RequestOptions): https.Agent {
  let agent = agents.get(kc);
  if (!agent) {
    agent = new https.Agent({ keepAlive: true, maxSockets: 64, ca: tls.ca, cert: tls.cert, key: tls.key, rejectUnauthorized: tls.rejectUnauthorized });
    agents.set(kc, agent);
  }
  return agent;
}

export async function rawRequest(kc: KubeConfig, method: string, path: string, body?: unknown, contentType = 'application/json'): Promise<{ status: number; body: unknown }> {
  const server = kc.getCurrentCluster()?.server;
  if (!server) throw new ChainwardenError('no_cluster', 'the kubeconfig has no current cluster');
  const tls: https.RequestOptions = {};
  // Applied per request: a token that rotates (in-cluster service account) is read fresh.
  await kc.applyToHTTPSOptions(tls);
  const options: https.RequestOptions = { method, agent: agentFor(kc, tls), headers: { ...(tls.headers as Record<string, string> | undefined), accept: 'application/json, */*;q=0.8' } };
  const payload = body === undefined ? undefined : JSON.stringify(body);
  if (payload !== undefined) options.headers = { ...options.headers, 'content-type': contentType, 'content-length': Buffer.byteLength(payload) };
  return new Promise((resolve, reject) => {
    const req = https.request(new URL(path, server), options, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: unknown = text;
        try {
          parsed = JSON.parse(text);
        } catch {
          // not JSON; keep the text
        }
        resolve({ status: res.statusCode ?? 0, body: parsed });
      });
    });
    req.on('error', reject);
    req.end(payload);
  });
}

/** Server-side apply of a cluster-scoped or namespaced object at `path`; throws with the API server's message. */
export async function serverSideApply(kc: KubeConfig, path: string, obj: unknown, fieldManager = 'chainwarden'): Promise<unknown> {
  const res = await rawRequest(kc, 'PATCH', `${path}?fieldManager=${encodeURIComponent(fieldManager)}&force=true`, obj, 'application/apply-patch+yaml');
  if (res.status >= 300) {
    const message = (res.body as { message?: string } | undefined)?.message ?? JSON.stringify(res.body);
    throw new ChainwardenError('apply_failed', `${res.status}: ${message}`);
  }
  return res.body;
}
