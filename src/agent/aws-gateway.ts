import { createHash } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { PassThrough, type Duplex, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import { awsChunkedReencoder } from '../aws/aws-chunked.js';
import { CONNECTION_HEADERS, MAX_SIGN_REQUEST_BYTES, type AwsSignAnswer, type AwsSignRefusal, type AwsSignRequest } from '../aws/sign-api.js';
import { ChainwardenError } from '../errors.js';
import type { Logger } from '../log.js';
import { readBoundedBody } from '../server/http.js';
import { kib, MemoryBudget } from './budget.js';
import { awsErrorOf, awsErrorOfRefusal, protocolOf, renderAwsError, type AwsError, type AwsProtocol } from './aws-errors.js';
import { planAwsRequest, tooLarge, unboundBody, type AwsRequestPlan } from './aws-request.js';
import type { BrokerClient } from './broker-client.js';
import { awsListenerTimeouts, checkLoopbackCaller, closeWhenBodyStalls, type CallerBounds } from './loopback.js';
import { checkedBrokerHeaders, downstreamHeaders, endTogether } from './relay.js';
import type { TaskWatch } from './task-watch.js';
import type { UnboundUploads } from './unbound-uploads.js';

/** The broker's side of the gateway, as the sidecar sees it: one call, allow or an AWS-shaped refusal. */
export interface AwsSigner {
  /** `chainTouched`: what the task's chain had touched once the call was decided, when the broker says. */
  sign(request: AwsSignRequest): Promise<{ ok: true; answer: AwsSignAnswer; chainTouched?: number } | { ok: false; error: AwsError }>;
}

/** A broker answer is a few headers; anything bigger is not one. */
const MAX_SIGN_ANSWER_BYTES = 64 * 1024;
/** An upstream that sends nothing for this long, mid-request or mid-answer, is gone. */
const UPSTREAM_IDLE_MS = 120_000;
/** Never sent on, whatever the SDK sent: the credentials the broker replaces, and headers about this hop's connection alone. */
const REPLACED = new Set(['authorization', 'x-amz-date', 'x-amz-security-token', 'host']);
/**
 * The headers an SDK leaves unsigned that still go on: about the client, or framing this sidecar
 * keeps true to the body it sends, or S3 object metadata (an SDK never signs Cache-Control). Any
 * other unsigned header stays here: the broker decides the call on what the SDK signed, and a
 * header it never saw (an X-Amz-Target, a Content-Type) must not change what AWS does.
 */
const UNSIGNED_PASSED = new Set(['user-agent', 'x-amzn-trace-id', 'content-length']);
/** S3 alone stores it as object metadata; elsewhere (API Gateway) it can ask for more than the decided call. */
const UNSIGNED_PASSED_S3 = new Set([...UNSIGNED_PASSED, 'cache-control']);

/** A refusal that already has its AWS face (the broker's, or the way to AWS failing). */
class AwsRefusal extends Error {
  constructor(readonly aws: AwsError) {
    super(aws.message);
  }
}

const unusableAnswer = (what: string) => new ChainwardenError('internal', `the chainwarden broker's answer to /v1/aws/sign is not usable: ${what}`);

/** The broker's allow, checked once: where the request may go and the headers it goes with. */
export function parseSignAnswer(value: unknown): AwsSignAnswer {
  const answer = value as Partial<AwsSignAnswer> | undefined;
  if (typeof answer !== 'object' || answer === null || answer.decision !== 'allow' || typeof answer.hopId !== 'string') throw unusableAnswer('it is not an allow with a hopId');
  let url: URL;
  try {
    url = new URL(String(answer.url));
  } catch {
    throw unusableAnswer('url is not a URL');
  }
  if ((url.protocol !== 'https:' && url.protocol !== 'http:') || url.username || url.password || url.pathname !== '/' || url.search || url.hash) throw unusableAnswer('url is not an http(s) origin');
  const headers = checkedBrokerHeaders(answer.headers, unusableAnswer);
  if (typeof headers.authorization !== 'string' || typeof headers.host !== 'string') throw unusableAnswer('it has no authorization or host header');
  return { hopId: answer.hopId, decision: 'allow', reasons: Array.isArray(answer.reasons) ? answer.reasons : [], url: url.origin, headers };
}

/** `POST /v1/aws/sign` on the broker, with the pod token. */
export function brokerAwsSigner(broker: BrokerClient): AwsSigner {
  return {
    async sign(request) {
      const sent = Buffer.from(JSON.stringify(request));
      // A form within its bound can still escape past the broker's: one made mostly of quotes, backslashes or control characters.
      if (sent.length > MAX_SIGN_REQUEST_BYTES) {
        throw new ChainwardenError('body_too_large', `the body comes to over ${MAX_SIGN_REQUEST_BYTES} bytes escaped as JSON, to be shown to the broker, which reads the bodies of query- and JSON-protocol calls to decide them; send fewer quotes, backslashes or control characters, or a smaller body`);
      }
      const { status, body, chainTouched } = await broker.postJson('/v1/aws/sign', sent, MAX_SIGN_ANSWER_BYTES);
      if (status === 200) return { ok: true, answer: parseSignAnswer(body), ...(chainTouched === undefined ? {} : { chainTouched }) };
      return { ok: false, error: awsErrorOfRefusal(status, body as AwsSignRefusal | undefined) };
    },
  };
}

/** The head of a request in the shape the planner reads. */
function headOf(req: http.IncomingMessage) {
  let headerBytes = 0;
  for (const part of req.rawHeaders) headerBytes += Buffer.byteLength(part) + 2;
  return { method: req.method ?? 'GET', url: req.url ?? '/', headers: req.headersDistinct as Record<string, string[]>, headerBytes };
}

/**
 * The SDK's signed headers as they go to AWS: without what the broker replaces, with the broker's
 * changes and signature, framed by this sidecar alone. A body streamed on without a length goes in
 * chunks whatever the method: Node sends a GET's or a DELETE's body unframed, and AWS would read
 * the bytes after the decided request as a second one that nobody decided.
 */
function upstreamHeaders(req: http.IncomingMessage, plan: AwsRequestPlan, answer: AwsSignAnswer, bodyLength: number | undefined): http.OutgoingHttpHeaders {
  const out: http.OutgoingHttpHeaders = {};
  const unsignedPassed = plan.authorization.service === 's3' ? UNSIGNED_PASSED_S3 : UNSIGNED_PASSED;
  for (const [name, values] of Object.entries(req.headersDistinct)) {
    if (REPLACED.has(name) || CONNECTION_HEADERS.has(name) || !(plan.signedHeaders.has(name) || unsignedPassed.has(name)) || values === undefined) continue;
    // A repeated header goes on as one, its values joined as SigV4 joins them: the value the broker decided and signed, not lines AWS might take one of.
    out[name] = values.join(',');
  }
  for (const [name, value] of Object.entries(plan.sign.forward?.headers ?? {})) {
    if (value === null) delete out[name];
    else out[name] = value;
  }
  if (bodyLength !== undefined) out['content-length'] = String(bodyLength);
  else if (out['content-length'] === undefined && carriesBody(req)) out['transfer-encoding'] = 'chunked';
  return { ...out, ...answer.headers };
}

/** Whether the SDK's request has a body at all, framed by its length or in chunks. */
const carriesBody = (req: http.IncomingMessage) => declaredLength(req) !== 0;

export interface AwsGatewayOptions {
  signer: AwsSigner;
  /** The port the listener is bound to, known once it listens. */
  port: () => number;
  log: Logger;
  /** Ends what is on its way to or from AWS when the task ends; without it, a request runs its course. */
  watch?: Pick<TaskWatch, 'track'>;
  /** Cuts uploads whose bodies their signature does not bind when the chain touches something new; without it, they run their course. */
  uploads?: Pick<UnboundUploads, 'mark' | 'check' | 'track'>;
  /** The request bodies held at once, in bytes (32 MiB). */
  maxHeldBytes?: number;
  /** How long a caller may take over its headers, and a body may send nothing; production's unless told. */
  callerBounds?: Pick<CallerBounds, 'headersMs' | 'bodyIdleMs'>;
}

/**
 * The sidecar's AWS listener, `AWS_ENDPOINT_URL` of the agent's SDKs. Every request is parsed
 * and checked here (loopback Host, a SigV4 Authorization, bounded headers and body), then the
 * broker decides the hop and signs it with the task's session, and only then does anything go to
 * AWS: the SDK's request with the broker's signature, its body streamed (S3) or as read. A
 * refusal is the AWS error the SDK turns into the exception its user would catch.
 */
export function createAwsGateway(options: AwsGatewayOptions): { server: http.Server; close(): void } {
  const agents = { 'http:': new http.Agent({ keepAlive: true, maxSockets: 64 }), 'https:': new https.Agent({ keepAlive: true, maxSockets: 64 }) };

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse, exchange: Exchange) => {
    checkLoopbackCaller(req, options.port());
    const plan = planAwsRequest(headOf(req));
    exchange.protocol = plan.protocol;
    let body: Buffer | undefined;
    const sign: AwsSignRequest = { ...plan.sign, payloadHash: plan.sign.payloadHash ?? '' };
    if (plan.body.kind === 'buffer') {
      const held = plan.body;
      exchange.checkRoom(Math.min(declaredLength(req) ?? 0, held.maxBytes));
      exchange.continueBody();
      body = await readBoundedBody(req, held.maxBytes, () => tooLarge(held.maxBytes, held.form), (bytes) => exchange.hold(bytes));
      Object.assign(sign, heldPayload(body, held));
    }
    // Without a count in its answer (a broker of an earlier version), what answers had said when it was asked.
    const asked = options.uploads?.mark() ?? 0;
    const decision = await options.signer.sign(sign);
    if (!decision.ok) throw new AwsRefusal(decision.error);
    exchange.hopId = decision.answer.hopId;
    const unbound = unboundBody(plan) ? options.uploads : undefined;
    // What the chain had touched as this was decided: an upload decided on less than an answer
    // since says is refused, before the SDK is asked for the body it holds back and before
    // anything goes to AWS.
    const since = decision.chainTouched ?? asked;
    unbound?.check(since);
    exchange.continueBody();
    const source = body ?? bodySource(req, plan);
    await sendUpstream(res, plan, decision.answer, upstreamHeaders(req, plan, decision.answer, body?.length), source, agents, options.watch, unbound && { uploads: unbound, since });
    options.log.debug({ hopId: decision.answer.hopId, service: plan.authorization.service, method: req.method, status: res.statusCode }, 'aws request passed on');
  };

  const bodies = new MemoryBudget(options.maxHeldBytes ?? MAX_HELD_BYTES);
  const respond = (req: http.IncomingMessage, res: http.ServerResponse, expectsContinue: boolean) => {
    closeWhenBodyStalls(req, options.callerBounds, options.log);
    const exchange = new Exchange(res, expectsContinue, bodies);
    handle(req, res, exchange).finally(() => exchange.release()).catch((err: unknown) => {
      const aws = err instanceof AwsRefusal ? err.aws : err instanceof ChainwardenError ? awsErrorOf(err.code, err.message, err.status, exchange.hopId) : undefined;
      if (!aws) options.log.error({ err }, 'aws gateway failed');
      const error = aws ?? awsErrorOf('internal', 'the chainwarden agent failed; see its log');
      options.log.info({ code: error.code, status: error.status, hopId: exchange.hopId, method: req.method }, 'aws request refused');
      if (res.headersSent) return res.destroy();
      const protocol = exchange.protocol ?? protocolOf(req, (req.url ?? '').split('?')[1] ?? '');
      const out = renderAwsError(protocol, error, req.headers['content-type']);
      // A body the client still holds back (Expect: 100-continue) will not come: say so rather than wait for it.
      const close = expectsContinue && !exchange.continued ? { connection: 'close' } : {};
      res.writeHead(out.status, { ...out.headers, 'content-length': Buffer.byteLength(out.body), ...close });
      res.end(out.body);
      // The rest of a body sent with the request is read and dropped, so the SDK, still sending, reads this answer rather than a reset.
      if (!req.complete) {
        req.unpipe();
        req.resume();
      }
    });
  };

  const server = http.createServer({ maxHeaderSize: 64 * 1024, ...awsListenerTimeouts(options.callerBounds) }, (req, res) => respond(req, res, false));
  server.on('checkContinue', (req: http.IncomingMessage, res: http.ServerResponse) => respond(req, res, true));
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => rejectUnparsable(err, socket));
  return {
    server,
    close: () => {
      agents['http:'].destroy();
      agents['https:'].destroy();
    },
  };
}

/**
 * The request bodies held at once (non-S3 bodies are read whole, to be hashed and shown to the
 * broker): bounded in all, so that an agent sending many large calls at once is asked to retry
 * rather than have the sidecar outgrow its memory limit and restart. Two of the largest bodies
 * fit, or many ordinary ones. A body counts as it arrives, not by the length it declares: two
 * requests that declare 16 MiB and send nothing hold nothing.
 */
const MAX_HELD_BYTES = 32 * 1024 * 1024;

/** The body's length as its request declares it, when it does. */
function declaredLength(req: http.IncomingMessage): number | undefined {
  if (req.headers['transfer-encoding'] !== undefined) return undefined;
  const length = Number(req.headers['content-length'] ?? '0');
  return Number.isSafeInteger(length) && length >= 0 ? length : undefined;
}

/** What one request has come to so far, for the answer if it fails. */
class Exchange {
  protocol: AwsProtocol | undefined;
  hopId: string | undefined;
  continued = false;
  private held = 0;
  constructor(
    private readonly res: http.ServerResponse,
    private readonly expectsContinue: boolean,
    private readonly bodies: MemoryBudget,
  ) {}

  /** Refuses a body of `bytes` that would not fit in what the sidecar holds now, before it is asked for. Counts nothing. */
  checkRoom(bytes: number): void {
    if (this.bodies.held + bytes > this.bodies.max) throw this.bodiesHeld();
  }

  /** Counts `bytes` more of the body as they arrive, or refuses the request when the sidecar holds enough. */
  hold(bytes: number): void {
    if (!this.bodies.tryTake(bytes)) throw this.bodiesHeld();
    this.held += bytes;
  }

  private bodiesHeld(): ChainwardenError {
    return new ChainwardenError('bodies_held', `the chainwarden gateway holds ${kib(this.bodies.held)} KiB of request bodies already, its bound being ${kib(this.bodies.max)} KiB; retry, or send fewer large calls at once`);
  }

  /** The request is done with its body. */
  release(): void {
    this.bodies.give(this.held);
    this.held = 0;
  }

  /** The body is wanted now: a client waiting on Expect: 100-continue may send it. */
  continueBody(): void {
    if (this.expectsContinue && !this.continued) this.res.writeContinue();
    this.continued = true;
  }
}

/** What the broker is told of a body held here: its hash (which must be the one the SDK claims, if it claims one) and a form. */
function heldPayload(body: Buffer, plan: Extract<AwsRequestPlan['body'], { kind: 'buffer' }>): Pick<AwsSignRequest, 'payloadHash' | 'form'> {
  const payloadHash = createHash('sha256').update(body).digest('hex');
  if (plan.declaredHash !== undefined && plan.declaredHash !== payloadHash) {
    throw new ChainwardenError('aws_request_invalid', 'x-amz-content-sha256 is not the SHA-256 of the body the request carries', { field: 'x-amz-content-sha256' });
  }
  return { payloadHash, ...(plan.form ? { form: body.toString('utf8') } : {}) };
}

/**
 * The request body on its way out, re-encoded when the plan says so. Piped rather than put in a
 * pipeline: a failure on the way to AWS must not destroy the SDK's connection, which still has
 * to carry the answer.
 */
function bodySource(req: http.IncomingMessage, plan: AwsRequestPlan): Readable {
  const reencode = plan.body.kind === 'stream' ? plan.body.reencode : undefined;
  const through = reencode ? awsChunkedReencoder(reencode.output, reencode.decodedLength) : new PassThrough();
  // pipe() does not pass errors on: a client that goes away must end the upstream request too.
  req.on('error', (err) => through.destroy(err));
  req.on('aborted', () => through.destroy(new Error('the client went away mid-request')));
  return req.pipe(through);
}

/**
 * Sends the request to AWS and streams the answer back. Settles when the answer is passed on;
 * fails, for the caller to answer, only while nothing of the answer has been sent. A task that
 * ends meanwhile ends it: a body still on its way is cut off, so AWS never completes the upload,
 * and an answer still streaming stops.
 */
function sendUpstream(
  res: http.ServerResponse,
  plan: AwsRequestPlan,
  answer: AwsSignAnswer,
  headers: http.OutgoingHttpHeaders,
  body: Buffer | Readable,
  agents: Record<'http:' | 'https:', http.Agent>,
  watch: AwsGatewayOptions['watch'],
  unbound: { uploads: Pick<UnboundUploads, 'track'>; since: number } | undefined,
): Promise<void> {
  const target = new URL(answer.url);
  const protocol = target.protocol === 'https:' ? 'https:' : 'http:';
  const path = plan.sign.query === '' ? plan.sign.path : `${plan.sign.path}?${plan.sign.query}`;
  return new Promise<void>((resolve, reject) => {
    let answered = false;
    const fail = (err: unknown) => {
      if (answered) return;
      answered = true;
      reject(err instanceof ChainwardenError ? err : new AwsRefusal(awsErrorOf('aws_unreachable', `the chainwarden agent could not complete the request to ${target.origin}: ${(err as Error).message}`)));
    };
    // An unbound body is cut if the chain touches something new before all of it has gone: AWS
    // completes no upload whose body broke off. Tracked (or refused) before anything is sent.
    const sent = unbound?.uploads.track(unbound.since, (error) => end(error));
    const request = (protocol === 'https:' ? https : http).request({ protocol, hostname: target.hostname, port: target.port, method: plan.sign.method, path, headers, agent: agents[protocol], timeout: UPSTREAM_IDLE_MS });
    const end = (error: Error) => {
      request.destroy(error);
      // Once the answer has begun, the SDK can only be told by the connection breaking.
      if (res.headersSent) res.destroy();
    };
    const release = watch?.track(end, { atOnce: sent !== undefined });
    request.once('finish', () => sent?.());
    const over = () => {
      release?.();
      sent?.();
    };
    request.on('timeout', () => request.destroy(new Error(`no answer for ${UPSTREAM_IDLE_MS / 1000}s`)));
    request.on('error', (err) => {
      over();
      fail(err);
    });
    request.on('response', (upstream) => {
      if (answered) return upstream.resume();
      answered = true;
      const status = upstream.statusCode ?? 502;
      if (status >= 400 && plan.sign.method !== 'HEAD') {
        // Read whole, to take the session out of what AWS echoes of the signed request.
        const refused = readBoundedBody(upstream, MAX_ERROR_BODY_BYTES, () => new Error(`AWS's error answer is longer than ${MAX_ERROR_BODY_BYTES} bytes`));
        refused.then(
          (body) => {
            const out = withoutSession(body, upstream.headers['content-encoding'], answer);
            res.writeHead(status, [...downstreamHeaders(upstream.rawHeaders, REWRITTEN_ANSWER), 'content-length', String(out.length)]);
            res.end(out);
          },
          () => res.destroy(),
        ).finally(() => {
          over();
          resolve();
        });
        return;
      }
      res.writeHead(status, downstreamHeaders(upstream.rawHeaders));
      endTogether(upstream, res, () => {
        over();
        resolve();
      });
      upstream.pipe(res);
    });
    if (Buffer.isBuffer(body)) request.end(body);
    else pipeline(body, request).catch(fail);
  });
}

/** An error answer is read whole up to this; AWS's are a few hundred bytes. */
const MAX_ERROR_BODY_BYTES = 256 * 1024;
/** Set anew on an error answer this sidecar rewrites. */
const REWRITTEN_ANSWER: ReadonlySet<string> = new Set(['content-length', 'content-encoding']);
const DECODERS: Record<string, (body: Buffer, options: zlib.ZlibOptions) => Buffer> = { gzip: zlib.gunzipSync, 'x-gzip': zlib.gunzipSync, deflate: zlib.inflateSync, br: zlib.brotliDecompressSync };

/**
 * AWS's answer to a request it refused, without the task's session: S3's SignatureDoesNotMatch
 * echoes the canonical request it computed (the session token among its headers, and again in
 * hex) and the key id, and other services' messages quote the canonical string. The agent never
 * holds the session, so both are replaced wherever they appear, in any of the forms AWS writes
 * them. A body in an encoding this cannot read goes on empty, its status intact.
 */
export function withoutSession(body: Buffer, encoding: string | undefined, answer: Pick<AwsSignAnswer, 'headers'>): Buffer {
  const coding = (encoding ?? 'identity').trim().toLowerCase();
  let text: string;
  try {
    const decode = DECODERS[coding];
    text = (coding === 'identity' ? body : decode ? decode(body, { maxOutputLength: 4 * MAX_ERROR_BODY_BYTES }) : Buffer.alloc(0)).toString('latin1');
  } catch {
    text = '';
  }
  const secrets = [
    [answer.headers['x-amz-security-token'], 'the task session token, withheld by the chainwarden gateway'],
    [/Credential=([^/,\s]+)\//.exec(answer.headers.authorization ?? '')?.[1], 'the task session key id, withheld by the chainwarden gateway'],
  ] as const;
  for (const [secret, instead] of secrets) {
    if (!secret) continue;
    const hex = Buffer.from(secret, 'latin1').toString('hex');
    const spaced = hex.replace(/(..)(?!$)/g, '$1 ');
    for (const form of new Set([secret, secret.replaceAll('/', '\\/'), encodeURIComponent(secret), hex, hex.toUpperCase(), spaced, spaced.toUpperCase()])) text = text.replaceAll(form, instead);
  }
  return Buffer.from(text, 'latin1');
}

/**
 * A request Node could not parse never reaches a handler: headers past Node's limit, or not
 * HTTP at all, or headers that did not arrive within the bound. It is still answered as AWS
 * would, in REST-XML (the protocol cannot be known).
 */
function rejectUnparsable(err: NodeJS.ErrnoException, socket: Duplex): void {
  if (err.code === 'ECONNRESET' || !socket.writable) return void socket.destroy();
  const timedOut = err.code === 'ERR_HTTP_REQUEST_TIMEOUT';
  const error = timedOut
    ? awsErrorOf('aws_request_timeout', 'the request\'s headers did not arrive in time; the chainwarden gateway closed the connection')
    : err.code === 'HPE_HEADER_OVERFLOW'
      ? awsErrorOf('aws_headers_too_large', 'the request\'s headers are larger than the chainwarden gateway takes')
      : awsErrorOf('aws_request_invalid', 'the request is not HTTP the chainwarden gateway can read');
  const out = renderAwsError('rest-xml', error);
  const head = [`HTTP/1.1 ${out.status} ${http.STATUS_CODES[out.status] ?? ''}`, ...Object.entries(out.headers).map(([k, v]) => `${k}: ${v}`), `content-length: ${Buffer.byteLength(out.body)}`, 'connection: close'];
  // A caller that sent nothing in time gives its connection back even if it never closes its side.
  socket.end(`${head.join('\r\n')}\r\n\r\n${out.body}`, timedOut ? () => socket.destroy() : undefined);
}
