import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { ChainwardenError } from '../errors.js';

export type Handler = (req: IncomingMessage, res: ServerResponse) => Promise<void>;

/** About one connection alone (RFC 9110 §7.6.1): never passed on by a gateway, in either direction. */
export const HOP_BY_HOP: ReadonlySet<string> = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'proxy-authenticate', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'expect']);

/**
 * Reads a request body up to `limit` bytes; a larger one is a 413 without reading the rest, and
 * the request is destroyed. A request that ends early (the client went away) rejects.
 */
export async function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const tooLarge = () => new ChainwardenError('body_too_large', `request body is over ${limit} bytes`);
  if (Number(req.headers['content-length'] ?? '0') > limit) throw tooLarge();
  try {
    return await readBoundedBody(req, limit, tooLarge);
  } catch (err) {
    req.destroy();
    throw err;
  }
}

/**
 * The whole body of a request (or of an answer), up to `maxBytes`; past that it rejects with
 * `tooLarge()` but leaves the stream alive: the caller answers (a 413) and drains the rest, so the
 * client reads the refusal and its keep-alive connection stays usable (`readBody` above destroys
 * the request instead). A stream closed before its body ended rejects. Listeners, not an async iterator: every hop reads a body,
 * and an iterator's promises and stream plumbing cost more than the body does. `count`, when
 * given, is told each part's size as it arrives, and refuses the body by throwing.
 */
export function readBoundedBody(req: Readable, maxBytes: number, tooLarge: () => Error, count?: (bytes: number) => void): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = () => req.off('data', onData).off('end', onEnd).off('error', stop).off('close', onClose);
    const stop = (err: Error) => {
      done();
      req.pause();
      reject(err);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > maxBytes) return stop(tooLarge());
      if (count) {
        try {
          count(chunk.length);
        } catch (err) {
          return stop(err instanceof Error ? err : new Error(String(err)));
        }
      }
      chunks.push(chunk);
    };
    const onEnd = () => {
      done();
      resolve(Buffer.concat(chunks));
    };
    const onClose = () => stop(new Error('the request was closed before its body ended'));
    req.on('data', onData).on('end', onEnd).on('error', stop).on('close', onClose);
  });
}

/** How deeply a request body may nest arrays and objects unless its endpoint says otherwise; a hop request nests 2 deep. */
export const DEFAULT_MAX_JSON_DEPTH = 64;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const [OPEN_ARRAY, OPEN_OBJECT, CLOSE_ARRAY, CLOSE_OBJECT] = [0x5b, 0x7b, 0x5d, 0x7d];

/**
 * Refuses JSON nested more than `maxDepth` arrays and objects deep, in one pass over the bytes
 * and without recursion, before anything parses it. JSON.parse itself copes with a million `[`,
 * but it spends a second of the event loop on a few MiB of them, and whatever walks the value
 * afterwards (deep equality, JSON.stringify, structuredClone) overflows the stack. The scan stops
 * at the first bracket past the limit. Inside strings every byte is skipped but `"` and `\`, and
 * a UTF-8 continuation byte is never one of those, so no multi-byte character confuses it.
 */
export function assertJsonDepth(body: Uint8Array, maxDepth: number): void {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < body.length; i++) {
    const byte = body[i] as number;
    if (inString) {
      if (byte === BACKSLASH) i++;
      else if (byte === QUOTE) inString = false;
    } else if (byte === QUOTE) {
      inString = true;
    } else if (byte === OPEN_ARRAY || byte === OPEN_OBJECT) {
      if (++depth > maxDepth) throw new ChainwardenError('json_too_deep', `request body nests arrays and objects more than ${maxDepth} deep (at byte ${i}); nothing this endpoint takes nests that deep`, { field: 'body' });
    } else if (byte === CLOSE_ARRAY || byte === CLOSE_OBJECT) {
      depth--;
    }
  }
}

/** Parses a request body as JSON nested at most `maxDepth` deep; anything else is a coded 400. */
export function parseJson(body: Buffer, maxDepth = DEFAULT_MAX_JSON_DEPTH): unknown {
  assertJsonDepth(body, maxDepth);
  try {
    return JSON.parse(body.toString('utf8'));
  } catch (err) {
    throw new ChainwardenError('invalid_json', `request body is not valid JSON: ${(err as Error).message}`, { field: 'body' });
  }
}

export async function readJson(req: IncomingMessage, limit: number, maxDepth = DEFAULT_MAX_JSON_DEPTH): Promise<unknown> {
  return parseJson(await readBody(req, limit), maxDepth);
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

/** Errors as `{error: {code, message, field?}}`, the broker API's one error shape; the status comes from the catalogue. */
export function sendError(res: ServerResponse, err: ChainwardenError): void {
  sendJson(res, err.status, { error: { code: err.code, message: err.message, ...(err.field ? { field: err.field } : {}) } });
}

/**
 * The HTTP answer to whatever a handler threw: a coded error as its catalogue status, anything
 * else as a 500 that says where to look (the details go to the log, never to the caller).
 */
export function sendFailure(res: ServerResponse, err: unknown, onUnexpected: (err: unknown) => void, where = 'the operator logs'): void {
  if (err instanceof ChainwardenError) {
    if (!res.headersSent) return sendError(res, err);
    res.destroy();
    return;
  }
  onUnexpected(err);
  if (!res.headersSent) sendError(res, new ChainwardenError('internal', `internal error; see ${where}`));
  else res.destroy();
}
