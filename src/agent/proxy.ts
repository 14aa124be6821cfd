import { randomBytes } from 'node:crypto';
import { chmod, link, readFile, unlink, writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { ChainwardenError } from '../errors.js';
import type { Logger } from '../log.js';
import { readBody, sendError, sendJson } from '../server/http.js';
import { brokerAwsSigner, createAwsGateway } from './aws-gateway.js';
import { BrokerClient, sameSecret } from './broker-client.js';
import { assertLoopbackListen, checkLoopbackCaller, closeServer, httpUrl, listenOn, mainListenerTimeouts, type CallerBounds, type ListenAddress } from './loopback.js';
import { brokerMcpForwarder } from './mcp-forwarder.js';
import { McpGateway, type McpGatewayOptions } from './mcp-gateway.js';
import { brokerTaskProbe, TaskWatch, type TaskWatchOptions } from './task-watch.js';
import { UnboundUploads } from './unbound-uploads.js';

export { sameSecret };

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
  listen: ListenAddress;
  /** The AWS signing gateway's loopback address (`AWS_ENDPOINT_URL`); none when absent. */
  awsListen?: ListenAddress;
  /** The MCP gateway's timings; its defaults are for production. */
  mcp?: Pick<McpGatewayOptions, 'answerTimeoutMs' | 'pollMs' | 'progressMs' | 'maxHeld' | 'maxHeldBytes'>;
  /** The timings of the watch that ends open exchanges when the task ends; its defaults are for production. */
  watch?: Pick<TaskWatchOptions, 'startAfterMs' | 'waitSeconds' | 'staleAfterMs' | 'retryMs'>;
  /** How many connections each listener keeps open at once (256); one past it is closed at once. */
  maxConnections?: number;
  /** How long a caller may take over a request on either listener while sending nothing; production's unless told. */
  callerBounds?: CallerBounds;
  log: Logger;
}

/** An agent's SDKs open a few dozen connections at most (the AWS SDK's pool is 50). */
const MAX_CONNECTIONS = 256;

export interface RunningAgent {
  url: string;
  /** The AWS listener's URL, when there is one. */
  awsUrl?: string;
  close(): Promise<void>;
}

/**
 * What the sidecar forwards; anything else is a 404 here, never a request to the broker. Every
 * segment is spelled in the characters its names take, so no `..`, `\\`, `%` or `#` can make the
 * broker's URL parser resolve the path to another endpoint.
 */
const FORWARDED = [
  /^\/v1\/credentials(\/[a-z0-9-]+)?$/,
  /^\/v1\/hops$/,
  /^\/v1\/hops\/[A-Za-z0-9_-]+$/,
  /^\/v1\/svid$/,
  /^\/v1\/tasks\/[a-z0-9](?:[-a-z0-9]*[a-z0-9])?\/[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?\/complete$/,
];

/**
 * `/mcp/<system>`, the MCP gateway: a system is named like a DNS label. Anything else under
 * `/mcp/` (`/mcp/a/b`, `/mcp/../v1/credentials`, percent-encoding) matches neither this nor
 * FORWARDED, and is a 404.
 */
const MCP_PATH = /^\/mcp\/([a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)$/;

/** Hop and completion bodies are small; the body is held so a request can be retried once. */
const MAX_BODY_BYTES = 1024 * 1024;
/** The broker's answers to these endpoints are a few KiB of JSON at most. */
const MAX_ANSWER_BYTES = 1024 * 1024;

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

/** The Authorization header's secret: AWS SDKs send the token file verbatim, other clients as a Bearer token. */
function presentedSecret(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  return header.replace(/^Bearer\s+/i, '').trim();
}

/** What the broker-forwarding listener needs; the local token is known only once the listener is up. */
interface BrokerProxyDeps {
  broker: BrokerClient;
  mcp: McpGateway;
  localTokenFile: string | undefined;
  localToken: () => string | undefined;
  port: () => number;
  log: Logger;
}

/**
 * The handler of the sidecar's main listener: callers prove they are the agent with the local
 * token (or the pod token); then `/mcp/<system>` goes to the MCP gateway, and of the rest only
 * the broker endpoints an agent uses are forwarded.
 */
function brokerProxy(deps: BrokerProxyDeps): http.RequestListener {
  const authenticate = async (req: http.IncomingMessage) => {
    const presented = presentedSecret(req.headers.authorization);
    if (!presented) throw new ChainwardenError('unauthenticated', `the chainwarden agent needs an Authorization header: the content of ${deps.localTokenFile ? 'the file named by AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE' : 'the pod token file'}`);
    if (deps.localTokenFile !== undefined) {
      const localToken = deps.localToken();
      if (localToken === undefined) throw new ChainwardenError('starting', 'the chainwarden agent is still creating its local token; retry');
      if (sameSecret(presented, localToken)) return;
    } else if (await deps.broker.isPodToken(presented)) {
      return;
    }
    throw new ChainwardenError('unauthenticated', 'the Authorization header does not match this pod\'s chainwarden token');
  };

  const forward = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    checkLoopbackCaller(req, deps.port());
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    // Unauthenticated, so it says nothing about the task, the broker or the tokens.
    if (path === '/healthz') return sendJson(res, 200, { status: 'ok' });
    await authenticate(req);
    const mcp = MCP_PATH.exec(path);
    if (mcp?.[1] !== undefined) return deps.mcp.handle(req, res, mcp[1]);
    if (!FORWARDED.some((re) => re.test(path))) throw new ChainwardenError('not_found', `the chainwarden agent does not forward ${path}`);
    const body = await readBody(req, MAX_BODY_BYTES);
    const answer = await deps.broker.request({ method: req.method ?? 'GET', path: req.url ?? '/', body, contentType: req.headers['content-type'] }, MAX_ANSWER_BYTES);
    res.writeHead(answer.status, { 'content-type': answer.contentType ?? 'application/json', 'content-length': answer.body.length, 'cache-control': 'no-store' });
    res.end(answer.body);
  };

  return (req, res) => {
    forward(req, res).catch((err: unknown) => {
      if (res.headersSent) return res.destroy();
      if (err instanceof ChainwardenError) return sendError(res, err);
      deps.log.error({ err }, 'agent proxy failed');
      sendError(res, new ChainwardenError('internal', 'the chainwarden agent failed; see its log'));
    });
  };
}

/**
 * `chainwarden agent`: a loopback HTTP endpoint inside the agent pod. The AWS SDKs' container
 * credentials provider accepts plain http only on loopback and ignores custom CA bundles, so
 * the SDK talks to this, and this talks to the broker over TLS with the pod's token. Callers
 * prove they are the agent with the local token (or the pod token); nothing else gets through.
 * With `awsListen`, a second loopback listener is the AWS endpoint of the pod's SDKs (see
 * aws-gateway.ts); both share one broker client, and the main listener serves the MCP gateway
 * (mcp-gateway.ts) at `/mcp/<system>`. Everything is built before anything listens.
 */
export async function startAgentProxy(options: AgentProxyOptions): Promise<RunningAgent> {
  assertLoopbackListen(options.listen, '--listen');
  if (options.awsListen) assertLoopbackListen(options.awsListen, '--aws-listen');
  const broker = new BrokerClient({ brokerUrl: options.brokerUrl, caPem: options.caPem, tokenFile: options.tokenFile });
  // Any broker answer that says the chain touched something new cuts the uploads the S3 calls'
  // signatures do not bind; the watch's long poll is answered at once when another pod's call did.
  const uploads = new UnboundUploads();
  broker.onChainTouched((touched) => uploads.saw(touched));
  // A broker that cannot be heard cannot say another pod's call widened the chain either: those uploads are cut.
  const watch = new TaskWatch({ probe: brokerTaskProbe(broker, () => uploads.mark()), log: options.log, unheard: (reason) => uploads.unheard(reason), ...options.watch });
  // Any broker answer that says the task ended ends what the gateways have open, as the watch's own long poll does.
  broker.onTaskEnded((message) => watch.ended(message));
  // Set once the file exists; the file is written only after the listener is up, so an app
  // container that found the file (the startup probe waits for it) finds the sidecar answering.
  let localToken: string | undefined;
  let port = options.listen.port;
  let awsPort = options.awsListen?.port ?? 0;
  const mcp = new McpGateway({ forwarder: brokerMcpForwarder(broker), log: options.log, watch, ...options.mcp });
  const server = http.createServer(mainListenerTimeouts(options.callerBounds), brokerProxy({ broker, mcp, localTokenFile: options.localTokenFile, localToken: () => localToken, port: () => port, log: options.log }));
  const aws = options.awsListen ? createAwsGateway({ signer: brokerAwsSigner(broker), port: () => awsPort, log: options.log, watch, uploads, callerBounds: options.callerBounds }) : undefined;
  // Each connection holds what is written to it until the caller reads it (in the sidecar, or in
  // the kernel's buffers, charged to its container): a bound on connections bounds that too.
  for (const listener of [server, aws?.server]) if (listener) listener.maxConnections = options.maxConnections ?? MAX_CONNECTIONS;
  const close = async () => {
    watch.close();
    aws?.close();
    mcp.close();
    broker.close();
    await Promise.all([closeServer(server), aws ? closeServer(aws.server) : undefined]);
  };
  try {
    if (aws && options.awsListen) awsPort = await listenOn(aws.server, options.awsListen);
    port = await listenOn(server, options.listen);
    if (options.localTokenFile !== undefined) localToken = await ensureLocalToken(options.localTokenFile);
  } catch (err) {
    await close();
    throw err;
  }
  return { url: httpUrl(options.listen.host, port), ...(aws && options.awsListen ? { awsUrl: httpUrl(options.awsListen.host, awsPort) } : {}), close };
}
