import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { readFile } from 'node:fs/promises';
import type { Logger } from '../log.js';
import { sendError, sendJson } from '../server/http.js';
import { ChainwardenError } from '../errors.js';

export interface AgentProxyOptions {
  brokerUrl: string;
  /** PEM of the CA that signed the broker's certificate; the system roots when absent. */
  caPem?: string;
  /** The pod's projected service-account token; re-read as the kubelet rotates it. */
  tokenFile: string;
  listen: { host: string; port: number };
  log: Logger;
}

/** What the sidecar forwards; anything else is a 404 here, never a request to the broker. */
const FORWARDED = [/^\/v1\/credentials(\/[a-z0-9-]+)?$/, /^\/v1\/hops$/, /^\/v1\/hops\/[A-Za-z0-9_-]+$/, /^\/v1\/svid$/, /^\/v1\/tasks\/[^/]+\/[^/]+\/complete$/];

const TOKEN_TTL_MS = 10_000;

/**
 * `chainwarden agent`: a loopback HTTP endpoint inside the agent pod. The AWS SDKs' container
 * credentials provider accepts plain http only on loopback and ignores custom CA bundles, so
 * the SDK talks to this, and this talks to the broker over TLS with the pod's token.
 */
export async function startAgentProxy(options: AgentProxyOptions): Promise<{ url: string; close(): Promise<void> }> {
  const agent = new https.Agent({ keepAlive: true, ca: options.caPem, maxSockets: 16 });
  let token: { value: string; readAt: number } | undefined;
  const currentToken = async () => {
    if (!token || Date.now() - token.readAt > TOKEN_TTL_MS) token = { value: (await readFile(options.tokenFile, 'utf8')).trim(), readAt: Date.now() };
    return token.value;
  };

  const forward = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    if (path === '/healthz') return sendJson(res, 200, { status: 'ok' });
    if (!FORWARDED.some((re) => re.test(path))) throw new ChainwardenError('not_found', `the chainwarden agent does not forward ${path}`);
    const bearer = await currentToken();
    // The AWS SDK sends the token file's content as the Authorization header; anything else here is not the agent.
    const presented = req.headers.authorization?.replace(/^Bearer\s+/i, '');
    if (presented !== undefined && presented !== bearer) throw new ChainwardenError('unauthenticated', 'the Authorization header does not match the pod token');
    const target = new URL(req.url ?? '/', options.brokerUrl);
    await new Promise<void>((resolve, reject) => {
      const upstream = https.request(
        target,
        {
          method: req.method,
          agent,
          headers: {
            authorization: `Bearer ${bearer}`,
            ...(req.headers['content-type'] ? { 'content-type': req.headers['content-type'] } : {}),
            ...(req.headers['content-length'] ? { 'content-length': req.headers['content-length'] } : {}),
            accept: 'application/json',
          },
          timeout: 30_000,
        },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, { 'content-type': answer.headers['content-type'] ?? 'application/json', 'cache-control': 'no-store' });
          answer.pipe(res);
          answer.on('end', resolve);
          answer.on('error', reject);
        },
      );
      upstream.on('timeout', () => upstream.destroy(new Error('the broker did not answer within 30s')));
      upstream.on('error', (err) => reject(new ChainwardenError('broker_unreachable', `cannot reach the chainwarden broker at ${options.brokerUrl}: ${err.message}`)));
      req.pipe(upstream);
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
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://${options.listen.host}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        agent.destroy();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
