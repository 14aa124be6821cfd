import https from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../log.js';
import { HttpError, sendError, type Handler } from './http.js';

export type Routes = Record<string, Handler>;

export interface TlsMaterial {
  certPem: string;
  keyPem: string;
}

export interface RunningServer {
  url: string;
  port: number;
  close(): Promise<void>;
}

/**
 * One HTTPS server for everything the operator serves (webhooks, broker, health). Routes match
 * on exact path first, then on the longest registered prefix ending in `/`. Unhandled errors
 * are 500s with a JSON body; they never crash the process.
 */
export async function startHttpsServer(routes: Routes, tls: TlsMaterial, listen: { host: string; port: number }, log: Logger): Promise<RunningServer> {
  // Routes may be added after start (handlers that need the server's own URL); read them per request.
  const prefixFor = (path: string) => {
    let best = '';
    for (const key of Object.keys(routes)) if (key.endsWith('/') && path.startsWith(key) && key.length > best.length) best = key;
    return best;
  };
  const server = https.createServer({ cert: tls.certPem, key: tls.keyPem, minVersion: 'TLSv1.2' }, (req, res) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const handler = routes[path] ?? routes[prefixFor(path)];
    if (!handler) return sendError(res, new HttpError(404, 'not_found', `no endpoint at ${path}`));
    handler(req, res).catch((err: unknown) => {
      if (err instanceof HttpError) return sendError(res, err);
      log.error({ err, path }, 'request failed');
      if (!res.headersSent) sendError(res, new HttpError(500, 'internal', 'internal error; see the operator logs'));
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const host = listen.host.includes(':') ? `[${listen.host}]` : listen.host;
  return {
    url: `https://${host}:${port}`,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
