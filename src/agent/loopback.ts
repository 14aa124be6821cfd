import type http from 'node:http';
import type { AddressInfo } from 'node:net';
import { ChainwardenError } from '../errors.js';

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
