import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { chmod, link, readFile, unlink, writeFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { ChainwardenError } from '../errors.js';
import type { Logger } from '../log.js';
import { readBody, sendError, sendJson } from '../server/http.js';

export interface AgentProxyOptions {
  brokerUrl: string;
  /** PEM of the CA that signed the broker's certificate; the system roots when absent. */
  caPem?: string;
  /** The pod's projected service-account token; only the sidecar reads it and sends it to the broker. */
  tokenFile: string;
  /**
   * The per-pod secret every caller presents as its Authorization header; created at start if
   * absent. Without it callers present the pod token itself.
   */
  localTokenFile?: string;
  /** A loopback address: the sidecar serves only the containers of its own pod. */
  listen: { host: string; port: number };
  log: Logger;
}

/** What the sidecar forwards; anything else is a 404 here, never a request to the broker. */
const FORWARDED = [/^\/v1\/credentials(\/[a-z0-9-]+)?$/, /^\/v1\/hops$/, /^\/v1\/hops\/[A-Za-z0-9_-]+$/, /^\/v1\/svid$/, /^\/v1\/tasks\/[^/]+\/[^/]+\/complete$/];

/** How long the pod token is trusted from memory before the file is read again. */
const TOKEN_TTL_MS = 10_000;
/** Hop and completion bodies are small; the body is held so a request can be retried once. */
const MAX_BODY_BYTES = 1024 * 1024;

/**
 * Equal in constant time. Hashing first gives equal-length inputs, so neither the content nor
 * the length of the secret leaks through timing.
 */
export function sameSecret(presented: string, expected: string): boolean {
  const digest = (s: string) => createHash('sha256').update(s).digest();
  return timingSafeEqual(digest(presented), digest(expected));
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/**
 * Reads the per-pod local token, creating it if it is not there. Created as a temp file that is
 * hard-linked into place: like a rename it never shows a half-written file, and unlike a rename
 * it never replaces a token that a restarted sidecar's app containers already hold.
 */
export async function ensureLocalToken(file: string): Promise<string> {
  const existing = await readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (existing !== undefined) return checkedLocalToken(file, existing);
  const temp = path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    await writeFile(temp, randomBytes(32).toString('base64url'), { flag: 'wx', mode: 0o444 });
    // Explicitly, whatever the umask: app containers run as other users and must read it.
    await chmod(temp, 0o444);
    await link(temp, file).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
  } finally {
    await unlink(temp).catch(() => undefined);
  }
  return checkedLocalToken(file, await readFile(file, 'utf8'));
}

function checkedLocalToken(file: string, content: string): string {
  const token = content.trim();
  if (token.length < 16) throw new ChainwardenError('local_token_invalid', `the local token file ${file} holds no usable secret; delete it and restart the sidecar to create a new one`);
  return token;
}

/** The pod token from its file, cached briefly; the kubelet replaces the file as it rotates the token. */
class PodToken {
  private cached: { value: string; readAt: number } | undefined;
  constructor(private readonly file: string) {}

  async current(): Promise<string> {
    if (!this.cached || Date.now() - this.cached.readAt > TOKEN_TTL_MS) return this.reread();
    return this.cached.value;
  }

  async reread(): Promise<string> {
    const value = (await readFile(this.file, 'utf8')).trim();
    this.cached = { value, readAt: Date.now() };
    return value;
  }
}

/** The Authorization header's secret: AWS SDKs send the token file verbatim, other clients as a Bearer token. */
function presentedSecret(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  return header.replace(/^Bearer\s+/i, '').trim();
}

/**
 * Only the pod's own containers may call: a page in a browser (DNS rebinding) names a foreign
 * Host, and a fetch tool the agent is tricked into using against 127.0.0.1 sends a foreign
 * Origin or Host. Both are refused before any token is looked at.
 */
function checkLoopbackCaller(req: http.IncomingMessage, port: number): void {
  const names = ['127.0.0.1', 'localhost', '[::1]'];
  const hosts = new Set(names.map((n) => `${n}:${port}`));
  if (port === 80) for (const n of names) hosts.add(n);
  const host = req.headers.host?.toLowerCase();
  if (!host || !hosts.has(host)) {
    throw new ChainwardenError('forbidden_host', `the chainwarden agent answers only requests for its loopback address (Host ${[...hosts].join(', ')}), not ${host ?? 'a request without Host'}: a foreign Host is how DNS rebinding reaches a loopback service`);
  }
  const origin = req.headers.origin;
  if (origin !== undefined && !(origin.toLowerCase().startsWith('http://') && hosts.has(origin.toLowerCase().slice('http://'.length)))) {
    throw new ChainwardenError('forbidden_origin', `the chainwarden agent refuses requests with Origin ${origin}: only the pod's own containers may call it (Origin http://127.0.0.1:${port} or a loopback alias), not a web page or a tool fetching on someone else's behalf`);
  }
}

/**
 * `chainwarden agent`: a loopback HTTP endpoint inside the agent pod. The AWS SDKs' container
 * credentials provider accepts plain http only on loopback and ignores custom CA bundles, so
 * the SDK talks to this, and this talks to the broker over TLS with the pod's token. Callers
 * prove they are the agent with the local token (or the pod token); nothing else gets through.
 */
export async function startAgentProxy(options: AgentProxyOptions): Promise<{ url: string; close(): Promise<void> }> {
  if (!isLoopback(options.listen.host)) {
    throw new ChainwardenError('usage', `the chainwarden agent listens on loopback only (127.0.0.1, ::1 or localhost), not ${options.listen.host}: anything else would serve other pods or the node`);
  }
  // Set once the file exists; the file is written only after the listener is up, so an app
  // container that found the file (the startup probe waits for it) finds the sidecar answering.
  let localToken: string | undefined;
  const podToken = new PodToken(options.tokenFile);
  const agent = new https.Agent({ keepAlive: true, ca: options.caPem, maxSockets: 16 });
  let port = options.listen.port;

  const authenticate = async (req: http.IncomingMessage) => {
    const presented = presentedSecret(req.headers.authorization);
    if (!presented) throw new ChainwardenError('unauthenticated', `the chainwarden agent needs an Authorization header: the content of ${options.localTokenFile ? 'the file named by AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE' : 'the pod token file'}`);
    if (options.localTokenFile !== undefined) {
      if (localToken === undefined) throw new ChainwardenError('starting', 'the chainwarden agent is still creating its local token; retry');
      if (sameSecret(presented, localToken)) return;
    } else if (sameSecret(presented, await podToken.current()) || sameSecret(presented, await podToken.reread())) {
      // A mismatch may be a token the kubelet just rotated: read the file again before refusing.
      return;
    }
    throw new ChainwardenError('unauthenticated', 'the Authorization header does not match this pod\'s chainwarden token');
  };

  const send = (target: URL, req: http.IncomingMessage, token: string, body: Buffer) =>
    new Promise<http.IncomingMessage>((resolve, reject) => {
      const upstream = https.request(
        target,
        {
          method: req.method,
          agent,
          headers: {
            authorization: `Bearer ${token}`,
            ...(req.headers['content-type'] ? { 'content-type': req.headers['content-type'] } : {}),
            ...(body.length > 0 ? { 'content-length': String(body.length) } : {}),
            accept: 'application/json',
          },
          timeout: 30_000,
        },
        resolve,
      );
      upstream.on('timeout', () => upstream.destroy(new Error('the broker did not answer within 30s')));
      upstream.on('error', (err) => reject(new ChainwardenError('broker_unreachable', `cannot reach the chainwarden broker at ${options.brokerUrl}: ${err.message}`)));
      upstream.end(body);
    });

  const forward = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    checkLoopbackCaller(req, port);
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    // Unauthenticated, so it says nothing about the task, the broker or the tokens.
    if (path === '/healthz') return sendJson(res, 200, { status: 'ok' });
    await authenticate(req);
    if (!FORWARDED.some((re) => re.test(path))) throw new ChainwardenError('not_found', `the chainwarden agent does not forward ${path}`);
    const body = await readBody(req, MAX_BODY_BYTES);
    const target = new URL(req.url ?? '/', options.brokerUrl);
    const token = await podToken.current();
    let answer = await send(target, req, token, body);
    if (answer.statusCode === 401) {
      // The cached token may have been rotated out from under us: retry once with the file's content.
      const fresh = await podToken.reread();
      if (fresh !== token) {
        answer.resume();
        answer = await send(target, req, fresh, body);
      }
    }
    res.writeHead(answer.statusCode ?? 502, { 'content-type': answer.headers['content-type'] ?? 'application/json', 'cache-control': 'no-store' });
    await new Promise<void>((resolve, reject) => {
      answer.pipe(res);
      answer.on('end', resolve);
      answer.on('error', reject);
    });
  };

  const server = http.createServer((req, res) => {
    forward(req, res).catch((err: unknown) => {
      if (res.headersSent) return res.destroy();
      if (err instanceof ChainwardenError) return sendError(res, err);
      options.log.error({ err }, 'agent proxy failed');
      sendError(res, new ChainwardenError('internal', 'the chainwarden agent failed; see its log'));
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.listen.port, options.listen.host, () => resolve());
  });
  port = (server.address() as AddressInfo).port;
  if (options.localTokenFile !== undefined) {
    try {
      localToken = await ensureLocalToken(options.localTokenFile);
    } catch (err) {
      server.close();
      agent.destroy();
      throw err;
    }
  }
  const host = options.listen.host.includes(':') ? `[${options.listen.host}]` : options.listen.host;
  return {
    url: `http://${host}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        agent.destroy();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
