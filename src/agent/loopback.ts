import type http from 'node:http';
import type { AddressInfo } from 'node:net';
import { ChainwardenError } from '../errors.js';
import type { Logger } from '../log.js';

/** A host:port the sidecar listens on. */
export interface ListenAddress {
  host: string;
  port: number;
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** The sidecar serves only the containers of its own pod: anything but loopback would serve other pods or the node. */
export function assertLoopbackListen(listen: ListenAddress, flag: string): void {
  if (!isLoopback(listen.host)) {
    throw new ChainwardenError('usage', `the chainwarden agent listens on loopback only (127.0.0.1, ::1 or localhost), not ${listen.host} (${flag}): anything else would serve other pods or the node`);
  }
}

/**
 * Only the pod's own containers may call: a page in a browser (DNS rebinding) names a foreign
 * Host, and a fetch tool the agent is tricked into using against 127.0.0.1 sends a foreign
 * Origin or Host. Both are refused before any credential is looked at.
 */
export function checkLoopbackCaller(req: http.IncomingMessage, port: number): void {
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

/** Listens and answers the port actually bound (the address may ask for port 0). */
export async function listenOn(server: http.Server, listen: ListenAddress): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return (server.address() as AddressInfo).port;
}

export function httpUrl(host: string, port: number): string {
  return `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
}

export function closeServer(server: http.Server): Promise<void> {
  return new Promise<void>((resolve) => {
    if (!server.listening) return resolve();
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

/**
 * How long a caller may hold a connection to a sidecar listener while sending nothing. Each
 * listener keeps a bounded number of connections, and any process on the pod's loopback can open
 * them: one that sends nothing must give its place back soon. Between requests, Node's keep-alive
 * timeout (5 s) closes an idle connection; once a request has arrived whole, the time its answer
 * takes is not the caller's.
 */
export interface CallerBounds {
  /** Both listeners: from the connection's start, or a request's first byte, to the end of its headers (10 s). */
  headersMs?: number;
  /** The main listener: a whole request, its body at most 1 MiB (60 s: more than the broker's 30 s, which a request may wait on, for its pod token, before its body is read). */
  requestMs?: number;
  /** The AWS listener: how long a body being read may send nothing (30 s). A body that keeps coming is never cut, however long it takes: an S3 upload may stream for hours. */
  bodyIdleMs?: number;
}

const HEADERS_MS = 10_000;
const REQUEST_MS = 60_000;
/** S3 itself closes an upload that sends nothing for about 20 s. */
const BODY_IDLE_MS = 30_000;

/** Node looks for overdue requests every `connectionsCheckingInterval` (30 s unless told, longer than the bounds): every second, or sooner for a shorter bound. */
const checkedEvery = (...bounds: number[]) => Math.max(1, Math.min(1_000, ...bounds));

/** The main listener's bounds: its requests are small, so each arrives whole within `requestMs` or its connection is closed. */
export function mainListenerTimeouts(bounds: CallerBounds | undefined): Pick<http.ServerOptions, 'headersTimeout' | 'requestTimeout' | 'connectionsCheckingInterval'> {
  const headersMs = bounds?.headersMs ?? HEADERS_MS;
  const requestMs = Math.max(headersMs, bounds?.requestMs ?? REQUEST_MS);
  return { headersTimeout: headersMs, requestTimeout: requestMs, connectionsCheckingInterval: checkedEvery(headersMs, requestMs) };
}

/**
 * The AWS listener's bounds: its headers only. Node's `requestTimeout` would bound the whole
 * request, cutting a long upload that is still sending; a body is bounded by `closeWhenBodyStalls`
 * instead, by how long it sends nothing.
 */
export function awsListenerTimeouts(bounds: CallerBounds | undefined): Pick<http.ServerOptions, 'headersTimeout' | 'requestTimeout' | 'connectionsCheckingInterval'> {
  const headersMs = bounds?.headersMs ?? HEADERS_MS;
  return { headersTimeout: headersMs, requestTimeout: 0, connectionsCheckingInterval: checkedEvery(headersMs) };
}

/** Whether a request carries a body at all, framed by its length or in chunks. */
const framesBody = (req: http.IncomingMessage) => req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? '0') !== 0;

/**
 * Closes the connection of a request whose body sends nothing for `bodyIdleMs` while the sidecar
 * reads it; whatever reads the body sees why. Only time the sidecar reads counts (the request
 * flowing): a body not read yet (the broker deciding) or held back (AWS not taking it yet) is not
 * the caller's to hurry. Checked every quarter of the bound, so a stalled body is cut within 1.25
 * times it. Called as the request arrives; it ends with the request.
 */
export function closeWhenBodyStalls(req: http.IncomingMessage, bounds: CallerBounds | undefined, log: Logger): void {
  if (!framesBody(req)) return;
  const idleMs = bounds?.bodyIdleMs ?? BODY_IDLE_MS;
  const { socket } = req;
  let seen = socket.bytesRead;
  let quietSince = Date.now();
  const check = setInterval(() => {
    if (req.complete || socket.destroyed) return clearInterval(check);
    if (socket.bytesRead !== seen || req.readableFlowing !== true) {
      seen = socket.bytesRead;
      quietSince = Date.now();
    } else if (Date.now() - quietSince >= idleMs) {
      clearInterval(check);
      log.info({ method: req.method, idleMs }, 'a request body sent nothing for too long; its connection was closed');
      req.destroy(new ChainwardenError('invalid_request', `the request's body sent nothing for ${idleMs / 1000}s; the chainwarden agent closed its connection`));
    }
  }, Math.max(1, Math.ceil(idleMs / 4)));
  req.once('close', () => clearInterval(check));
}
