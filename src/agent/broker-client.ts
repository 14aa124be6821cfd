import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type http from 'node:http';
import https from 'node:https';
import { ChainwardenError, errorMessage } from '../errors.js';
import { readBoundedBody } from '../server/http.js';
import { refusalOf } from './refusal.js';
import { CHAIN_TOUCHED_HEADER, chainTouchedOf } from './unbound-uploads.js';

/** How long the pod token is trusted from memory before the file is read again. */
const TOKEN_TTL_MS = 10_000;
/** A broker call is a decision, not a transfer: anything slower is a broker in trouble. */
const BROKER_TIMEOUT_MS = 30_000;

/**
 * Equal in constant time. Hashing first gives equal-length inputs, so neither the content nor
 * the length of the secret leaks through timing.
 */
export function sameSecret(presented: string, expected: string): boolean {
  const digest = (s: string) => createHash('sha256').update(s).digest();
  return timingSafeEqual(digest(presented), digest(expected));
}

/** The pod token from its file, cached briefly; the kubelet replaces the file as it rotates the token. */
export class PodToken {
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

export interface BrokerClientOptions {
  brokerUrl: string;
  /** PEM of the CA that signed the broker's certificate; the system roots when absent. */
  caPem?: string;
  /** The pod's projected service-account token; only the sidecar reads it and sends it to the broker. */
  tokenFile: string;
  /** How long a connection to the broker may stay silent during a call; 30 s when absent. */
  timeoutMs?: number;
}

/** One call to the broker: the method, the path (with query) and a body small enough to send twice. */
export interface BrokerCall {
  method: string;
  path: string;
  body: Buffer;
  contentType?: string;
}

/** The broker's answer, read whole: every broker answer is a small JSON document. */
export interface BrokerAnswer {
  status: number;
  contentType: string | undefined;
  body: Buffer;
  /** What the task's chain had touched once the call was decided, when the answer says (`CHAIN_TOUCHED_HEADER`). */
  chainTouched?: number;
}

/** A JSON answer: its status, its body parsed (undefined when it is not JSON), and `BrokerAnswer.chainTouched`. */
export interface JsonAnswer {
  status: number;
  body: unknown;
  chainTouched?: number;
}

/**
 * The sidecar's one way to the broker, shared by its listeners: TLS with the broker's CA, the pod
 * token as a Bearer token, one connection pool. A 401 may be a token the kubelet just rotated, so
 * the call is repeated once with the file's content; the token never appears in an error.
 */
export class BrokerClient {
  private readonly podToken: PodToken;
  private readonly agent: https.Agent;
  private readonly origin: string;
  private taskEnded: ((message: string) => void) | undefined;
  private chainTouched: ((touched: number) => void) | undefined;

  constructor(private readonly options: BrokerClientOptions) {
    this.podToken = new PodToken(options.tokenFile);
    this.origin = new URL(options.brokerUrl).origin;
    this.agent = new https.Agent({ keepAlive: true, ca: options.caPem, maxSockets: 16 });
  }

  /** `listener` is told of any answer that says the task has ended (403 task_not_active), with its message. */
  onTaskEnded(listener: (message: string) => void): void {
    this.taskEnded = listener;
  }

  /**
   * `listener` is told what each answer says the task's chain has touched (`CHAIN_TOUCHED_HEADER`),
   * before the answer is returned: before the call it decided goes on.
   */
  onChainTouched(listener: (touched: number) => void): void {
    this.chainTouched = listener;
  }

  get url(): string {
    return this.options.brokerUrl;
  }

  /** Whether a caller presented the pod token itself; a mismatch may be a token the kubelet just rotated, so the file is read again before saying no. */
  async isPodToken(presented: string): Promise<boolean> {
    return sameSecret(presented, await this.podToken.current()) || sameSecret(presented, await this.podToken.reread());
  }

  /** The broker's answer, its body read whole up to `limit` bytes. */
  async request(call: BrokerCall, limit: number): Promise<BrokerAnswer> {
    const token = await this.podToken.current();
    const first = await this.send(call, token, limit);
    const fresh = first.status === 401 ? await this.podToken.reread() : token;
    const answer = fresh === token ? first : await this.send(call, fresh, limit);
    if (answer.status === 403 && this.taskEnded) this.noticeEnd(answer.body);
    return answer;
  }

  /** A refusal that says the task has ended, passed on: what the sidecar still has open ends too. */
  private noticeEnd(body: Buffer): void {
    let refusal: ReturnType<typeof refusalOf>;
    try {
      refusal = refusalOf(JSON.parse(body.toString('utf8')));
    } catch {
      return;
    }
    if (refusal?.code === 'task_not_active') this.taskEnded?.(refusal.message);
  }

  /** A JSON call whose answer is read whole, up to `limit` bytes. */
  requestJson(path: string, value: unknown, limit: number): Promise<JsonAnswer> {
    return this.postJson(path, Buffer.from(JSON.stringify(value)), limit);
  }

  /** A POST of JSON already serialized (so that its size could be checked first), its answer read whole up to `limit` bytes. */
  postJson(path: string, body: Buffer, limit: number): Promise<JsonAnswer> {
    return this.json({ method: 'POST', path, body, contentType: 'application/json' }, limit);
  }

  /** A GET whose JSON answer is read whole, up to `limit` bytes. */
  getJson(path: string, limit: number): Promise<JsonAnswer> {
    return this.json({ method: 'GET', path, body: Buffer.alloc(0) }, limit);
  }

  close(): void {
    this.agent.destroy();
  }

  /** The answer's status and its body parsed, or `undefined` when the body is not JSON. */
  private async json(call: BrokerCall, limit: number): Promise<JsonAnswer> {
    const answer = await this.request(call, limit);
    const touched = answer.chainTouched === undefined ? {} : { chainTouched: answer.chainTouched };
    try {
      return { status: answer.status, body: JSON.parse(answer.body.toString('utf8')) as unknown, ...touched };
    } catch {
      return { status: answer.status, body: undefined, ...touched };
    }
  }

  private async send(call: BrokerCall, token: string, limit: number): Promise<BrokerAnswer> {
    const answer = await this.answerOf(call, token);
    const touched = chainTouchedOf(answer.headers[CHAIN_TOUCHED_HEADER]);
    if (touched !== undefined) this.chainTouched?.(touched);
    const contentType = answer.headers['content-type'];
    return { status: answer.statusCode ?? 502, contentType, body: await readAnswer(answer, limit, this.options.brokerUrl), ...(touched === undefined ? {} : { chainTouched: touched }) };
  }

  private answerOf(call: BrokerCall, token: string): Promise<http.IncomingMessage> {
    const target = new URL(call.path, this.options.brokerUrl);
    // The path goes out as it was checked, or not at all: a URL parser that resolved `..` or `\\`,
    // or dropped a fragment, would send the pod token to an endpoint no one chose.
    if (target.pathname !== call.path.split('?')[0] || target.hash !== '' || target.origin !== this.origin) {
      return Promise.reject(new ChainwardenError('invalid_request', `the chainwarden agent does not forward ${JSON.stringify(call.path)}: its path is not in plain form`));
    }
    const timeoutMs = this.options.timeoutMs ?? BROKER_TIMEOUT_MS;
    return new Promise((resolve, reject) => {
      const upstream = https.request(
        target,
        {
          method: call.method,
          agent: this.agent,
          headers: {
            authorization: `Bearer ${token}`,
            ...(call.contentType ? { 'content-type': call.contentType } : {}),
            ...(call.body.length > 0 ? { 'content-length': String(call.body.length) } : {}),
            accept: 'application/json',
          },
          timeout: timeoutMs,
        },
        resolve,
      );
      upstream.on('timeout', () => upstream.destroy(new Error(`the broker sent nothing for ${timeoutMs / 1000}s`)));
      upstream.on('error', (err) => reject(new ChainwardenError('broker_unreachable', `cannot reach the chainwarden broker at ${this.options.brokerUrl}: ${err.message}`)));
      upstream.end(call.body);
    });
  }
}

/** The answer's body, up to `limit` bytes: anything larger, or an answer broken off, is the broker being unusable. */
async function readAnswer(answer: http.IncomingMessage, limit: number, brokerUrl: string): Promise<Buffer> {
  const tooLarge = () => new ChainwardenError('broker_unreachable', `the chainwarden broker at ${brokerUrl} answered with more than ${limit} bytes`);
  try {
    if (Number(answer.headers['content-length'] ?? '0') > limit) throw tooLarge();
    return await readBoundedBody(answer, limit, tooLarge);
  } catch (err) {
    answer.destroy();
    if (err instanceof ChainwardenError) throw err;
    throw new ChainwardenError('broker_unreachable', `the chainwarden broker at ${brokerUrl} broke off its answer: ${errorMessage(err)}`);
  }
}
