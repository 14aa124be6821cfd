import type { IncomingMessage, ServerResponse } from 'node:http';
import { ChainwardenError } from '../errors.js';

export type Handler = (req: IncomingMessage, res: ServerResponse) => Promise<void>;

/** Reads a request body up to `limit` bytes; a larger one is a 413 without reading the rest. */
export async function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? '0');
  if (declared > limit) throw new ChainwardenError('body_too_large', `request body is over ${limit} bytes`);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw new ChainwardenError('body_too_large', `request body is over ${limit} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

export async function readJson(req: IncomingMessage, limit: number): Promise<unknown> {
  const body = await readBody(req, limit);
  try {
    return JSON.parse(body.toString('utf8'));
  } catch (err) {
    throw new ChainwardenError('invalid_json', `request body is not valid JSON: ${(err as Error).message}`);
  }
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
