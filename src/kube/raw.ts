import https from 'node:https';
import { ChainwardenError } from '../errors.js';
import type { KubeAccess } from './access.js';

/**
 * Plain JSON requests to the API server, and watches. client-node's typed serializer renames and
 * drops fields it has no model for (`enum`, `default`, `x-kubernetes-*` in a CRD schema among
 * them), so objects we author as raw JSON (CRDs, webhook configurations) are sent through this.
 */
const agents = new WeakMap<KubeAccess, { requests: https.Agent; watches: https.Agent }>();

/**
 * One keep-alive agent per kubeconfig for requests: a TLS handshake and a new secure context per
 * request would cost more than the request (the journal writes status many times a second).
 * Watches get connections of their own, never reused: a watch lives for minutes, and one started
 * on a pooled connection the server has just closed fails before it begins.
 */
function agentFor(kc: KubeAccess, tls: https.RequestOptions, use: 'requests' | 'watches'): https.Agent {
  let pair = agents.get(kc);
  if (!pair) {
    const options = { ca: tls.ca, cert: tls.cert, key: tls.key, rejectUnauthorized: tls.rejectUnauthorized };
    pair = { requests: new https.Agent({ ...options, keepAlive: true, maxSockets: 64 }), watches: new https.Agent({ ...options, keepAlive: false }) };
    agents.set(kc, pair);
  }
  return pair[use];
}

/** Where a request to `path` goes, and its options: the kubeconfig's TLS material and credentials, on the agent for its use. */
async function prepare(kc: KubeAccess, method: string, path: string, use: 'requests' | 'watches' = 'requests'): Promise<{ url: URL; options: https.RequestOptions }> {
  const server = kc.getCurrentCluster()?.server;
  if (!server) throw new ChainwardenError('no_cluster', 'the kubeconfig has no current cluster');
  const tls: https.RequestOptions = {};
  // Applied per request: a token that rotates (in-cluster service account) is read fresh.
  await kc.applyToHTTPSOptions(tls);
  return { url: new URL(path, server), options: { method, agent: agentFor(kc, tls, use), headers: { ...(tls.headers as Record<string, string> | undefined), accept: 'application/json, */*;q=0.8' } } };
}

export async function rawRequest(kc: KubeAccess, method: string, path: string, body?: unknown, contentType = 'application/json'): Promise<{ status: number; body: unknown }> {
  const { url, options } = await prepare(kc, method, path);
  const payload = body === undefined ? undefined : JSON.stringify(body);
  if (payload !== undefined) options.headers = { ...options.headers, 'content-type': contentType, 'content-length': Buffer.byteLength(payload) };
  return new Promise((resolve, reject) => {
    const req = https.request(url, options, (res) => {
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

/** A watch the API server refused: its HTTP status, as the informer tells 410 Gone from other failures. */
export class WatchRefused extends Error {
  constructor(
    readonly statusCode: number,
    message: string,
  ) {
    super(message);
    this.name = 'WatchRefused';
  }
}

/**
 * A watch of the collection at `path`: the API server streams one JSON event per line. Resolves
 * with the means to stop it once the API server has answered 200, and rejects with a
 * `WatchRefused` when it answers anything else. `onEvent` hears every event in order; `onDone`
 * is called once, when the stream ends (undefined: the server closed it, or it was stopped) or
 * fails.
 */
export async function watchStream(
  kc: KubeAccess,
  path: string,
  query: Record<string, string | undefined>,
  onEvent: (type: string, object: unknown, stop: () => void) => void,
  onDone: (err?: unknown) => void,
): Promise<AbortController> {
  const params = new URLSearchParams({ watch: 'true' });
  for (const [key, value] of Object.entries(query)) if (value !== undefined) params.set(key, value);
  const { url, options } = await prepare(kc, 'GET', `${path}?${params.toString()}`, 'watches');
  const abort = new AbortController();
  // Handed to every event too: the first may arrive before the caller holds the controller.
  const stop = () => abort.abort();
  let finished = false;
  let answered = false;
  const done = (err?: unknown) => {
    if (finished) return;
    finished = true;
    onDone(abort.signal.aborted ? undefined : err);
  };
  return new Promise((resolve, reject) => {
    const req = https.request(url, { ...options, signal: abort.signal }, (res) => {
      answered = true;
      if (res.statusCode !== 200) {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let message = text;
          try {
            message = (JSON.parse(text) as { message?: string }).message ?? text;
          } catch {
            // not a Status; keep the text
          }
          finished = true;
          const status = `${res.statusCode ?? 0} ${res.statusMessage ?? ''}`.trim();
          reject(new WatchRefused(res.statusCode ?? 0, `watch ${path}: ${status}${message ? `: ${message.slice(0, 300)}` : ''}`));
        });
        return;
      }
      resolve(abort);
      res.setEncoding('utf8');
      let pending = '';
      res.on('data', (chunk: string) => {
        pending += chunk;
        let newline = pending.indexOf('\n');
        // A consumer that aborts on an event (a 410, an ERROR) is handed nothing after it.
        while (newline >= 0 && !abort.signal.aborted) {
          const line = pending.slice(0, newline);
          pending = pending.slice(newline + 1);
          if (line.trim()) {
            let event: { type?: string; object?: unknown };
            try {
              event = JSON.parse(line) as { type?: string; object?: unknown };
            } catch (err) {
              req.destroy();
              return done(new Error(`watch ${path}: an event that is not JSON: ${(err as Error).message}`));
            }
            onEvent(event.type ?? '', event.object, stop);
          }
          newline = pending.indexOf('\n');
        }
      });
      res.on('end', () => done());
      res.on('error', done);
      res.on('close', () => done());
    });
    req.on('error', (err) => {
      if (finished) return;
      // Before the answer: the watch never started. After it: the stream broke.
      if (!answered) {
        finished = true;
        reject(err);
      } else done(err);
    });
    req.end();
  });
}

/** Server-side apply of a cluster-scoped or namespaced object at `path`; throws with the API server's message. */
export async function serverSideApply(kc: KubeAccess, path: string, obj: unknown, fieldManager = 'chainwarden'): Promise<unknown> {
  const res = await rawRequest(kc, 'PATCH', `${path}?fieldManager=${encodeURIComponent(fieldManager)}&force=true`, obj, 'application/apply-patch+yaml');
  if (res.status >= 300) {
    const message = (res.body as { message?: string } | undefined)?.message ?? JSON.stringify(res.body);
    throw new ChainwardenError('apply_failed', `${res.status}: ${message}`);
  }
  return res.body;
}
