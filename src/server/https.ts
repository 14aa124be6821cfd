import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import type { Logger } from '../log.js';
import { ChainwardenError } from '../errors.js';
import { sendError, sendFailure, type Handler } from './http.js';

export type Routes = Record<string, Handler>;

const TLS_MIN_VERSION = 'TLSv1.2';

export interface TlsMaterial {
  certPem: string;
  keyPem: string;
}

/** Per-listener bounds on how long a client may take to send a request. */
export interface ListenerLimits {
  /** Drop a connection whose request headers have not all arrived by then. */
  headersTimeoutMs?: number;
  /** Drop a connection whose request has not arrived whole by then. */
  requestTimeoutMs?: number;
  /** Close at once a connection from an address that already has this many open. */
  maxConnectionsPerSource?: number;
}

export interface RunningServer {
  url: string;
  port: number;
  /** Serves a new certificate to connections from now on; open ones keep theirs. */
  reload(tls: TlsMaterial): void;
  close(): Promise<void>;
}

/** Exact paths first, then the longest prefix ending in `/`; fixed once built. */
function router(routes: Routes): (path: string) => Handler | undefined {
  const exact = new Map(Object.entries(routes));
  const prefixes = Object.keys(routes)
    .filter((k) => k.endsWith('/'))
    .sort((a, b) => b.length - a.length);
  return (path) => exact.get(path) ?? exact.get(prefixes.find((p) => path.startsWith(p)) ?? '');
}

/**
 * Closes a connection, before its TLS handshake, from an address with `max` open already. Said
 * once in the log each time an address reaches the bound, not for every connection refused.
 */
function boundPerSource(server: https.Server, max: number, log: Logger): void {
  const open = new Map<string, number>();
  const full = new Set<string>();
  server.on('connection', (socket: Socket) => {
    const source = socket.remoteAddress ?? '';
    const count = open.get(source) ?? 0;
    if (count >= max) {
      if (!full.has(source)) log.warn({ source, open: count }, 'an address holds as many connections to the listener as it may; more are closed at once');
      full.add(source);
      return void socket.destroy();
    }
    open.set(source, count + 1);
    socket.once('close', () => {
      const left = (open.get(source) ?? 1) - 1;
      if (left > 0) open.set(source, left);
      else open.delete(source);
      if (left < max) full.delete(source);
    });
  });
}

/**
 * One HTTPS listener (the operator runs two: the broker's and the admission webhooks'), built
 * from a complete route table and only then listening: nothing is added after the first request
 * can arrive. A handler's failure, thrown synchronously or not, is a JSON error; it never
 * crashes the process.
 */
export async function serveHttps(routes: Routes, tls: TlsMaterial, listen: { host: string; port: number }, log: Logger, limits: ListenerLimits = {}): Promise<RunningServer> {
  const route = router(routes);
  const timeouts = {
    ...(limits.headersTimeoutMs === undefined ? {} : { headersTimeout: limits.headersTimeoutMs }),
    ...(limits.requestTimeoutMs === undefined ? {} : { requestTimeout: limits.requestTimeoutMs }),
    // Node looks for overdue requests this often (30 s by default, longer than these timeouts).
    ...(limits.headersTimeoutMs === undefined && limits.requestTimeoutMs === undefined ? {} : { connectionsCheckingInterval: Math.min(1_000, limits.headersTimeoutMs ?? Infinity, limits.requestTimeoutMs ?? Infinity) }),
  };
  // With limits, the TLS handshake is bounded too (Node allows two minutes): they would start only after it.
  const handshake = limits.headersTimeoutMs === undefined ? {} : { handshakeTimeout: limits.headersTimeoutMs };
  const server = https.createServer({ cert: tls.certPem, key: tls.keyPem, minVersion: TLS_MIN_VERSION, ...timeouts, ...handshake }, (req, res) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const handler = route(path);
    if (!handler) return sendError(res, new ChainwardenError('not_found', `no endpoint at ${path}`));
    // Called inside a promise so that a synchronous throw is answered like an asynchronous one.
    Promise.resolve()
      .then(() => handler(req, res))
      .catch((err: unknown) => sendFailure(res, err, (e) => log.error({ err: e, path }, 'request failed')));
  });
  server.keepAliveTimeout = 65_000;
  if (limits.maxConnectionsPerSource !== undefined) boundPerSource(server, limits.maxConnectionsPerSource, log);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const host = listen.host.includes(':') ? `[${listen.host}]` : listen.host;
  return {
    url: `https://${host}:${port}`,
    port,
    reload: (next) => server.setSecureContext({ cert: next.certPem, key: next.keyPem, minVersion: TLS_MIN_VERSION }),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
