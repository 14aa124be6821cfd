import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createAwsGateway, type AwsSigner } from '../../../src/agent/aws-gateway.js';
import type { AwsSignRequest } from '../../../src/aws/sign-api.js';
import { silentLogger } from '../../../src/log.js';

/**
 * Callers of the AWS listener that send their bodies slowly, or stop: the listener itself, a
 * broker that allows every call, and an "AWS" that records what arrived whole and what broke off.
 * The bounds are the production ones made short, so that a stall shows in a fraction of a second.
 */

const BODY_IDLE_MS = 150;
const HOP = 'h3_AbCdEfGhIjKl_MnOpQrStUvWxYz01';
let decideAfterMs = 0;
const asked: AwsSignRequest[] = [];
/** What "AWS" received: each request's path, the bytes it got, and whether its body arrived whole. */
const received: { path: string; bytes: number; whole: boolean }[] = [];
let aws: http.Server;
let gateway: ReturnType<typeof createAwsGateway>;
let server: http.Server;
const port = () => (server.address() as AddressInfo).port;

const signer: AwsSigner = {
  sign: async (request) => {
    asked.push(request);
    await new Promise((r) => setTimeout(r, decideAfterMs));
    const headers = { authorization: `AWS4-HMAC-SHA256 Credential=ASIASESSION00000001/20261121/us-east-1/${request.path.startsWith('/uploads') ? 's3' : 'lambda'}/aws4_request, SignedHeaders=host, Signature=${'1'.repeat(64)}`, host: 'aws.example' };
    return { ok: true, answer: { hopId: HOP, decision: 'allow', reasons: [], url: `http://127.0.0.1:${(aws.address() as AddressInfo).port}`, headers } };
  },
};

beforeAll(async () => {
  aws = http.createServer((req, res) => {
    const record = { path: req.url ?? '', bytes: 0, whole: false };
    received.push(record);
    req.on('data', (c: Buffer) => (record.bytes += c.length));
    req.on('end', () => {
      record.whole = true;
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ bytes: record.bytes }));
    });
  });
  await new Promise<void>((resolve) => aws.listen(0, '127.0.0.1', resolve));
  gateway = createAwsGateway({ signer, port, log: silentLogger(), callerBounds: { headersMs: 150, bodyIdleMs: BODY_IDLE_MS } });
  server = gateway.server;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
});

beforeEach(() => {
  decideAfterMs = 0;
  asked.length = 0;
  received.length = 0;
});

afterAll(() => {
  gateway.close();
  server.closeAllConnections();
  server.close();
  aws.closeAllConnections();
  aws.close();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * A request signed as an SDK signs it, with a body of `length` bytes it sends as the test says:
 * an S3 PutObject (UNSIGNED-PAYLOAD, streamed to AWS once decided) or a Lambda Invoke (held whole
 * and hashed before the broker is asked).
 */
function upload(kind: 's3' | 'lambda', length: number) {
  const service = kind === 's3' ? { path: '/uploads/report.csv', method: 'PUT', extra: { 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' }, signed: 'host;x-amz-content-sha256;x-amz-date' } : { path: '/2015-03-31/functions/summarize/invocations', method: 'POST', extra: { 'content-type': 'application/json' }, signed: 'host;x-amz-date' };
  const req = http.request({
    host: '127.0.0.1',
    port: port(),
    method: service.method,
    path: service.path,
    agent: false,
    headers: {
      host: `127.0.0.1:${port()}`,
      authorization: `AWS4-HMAC-SHA256 Credential=CWPLACEHOLDERKEY0001/20261121/us-east-1/${kind}/aws4_request, SignedHeaders=${service.signed}, Signature=${'0'.repeat(64)}`,
      'x-amz-date': '20261121T081159Z',
      'content-length': String(length),
      ...service.extra,
    },
  });
  const answer = new Promise<{ status: number; body: string } | { closed: true; afterMs: number }>((resolve) => {
    const started = Date.now();
    req.on('response', (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', () => resolve({ closed: true, afterMs: Date.now() - started }));
  });
  return { req, answer };
}

/** Sends `length` bytes in `pieces` parts, one every `everyMs`: slower in all than the idle bound, never idle that long. */
async function trickle(req: http.ClientRequest, length: number, pieces: number, everyMs: number): Promise<void> {
  for (let i = 0; i < pieces; i++) {
    req.write(Buffer.alloc(length / pieces, 0x61));
    await sleep(everyMs);
  }
  req.end();
}

describe('a body that keeps coming, however slowly, is never cut; one that stops is', () => {
  it.each(['s3', 'lambda'] as const)('a %s upload sent a piece at a time for far longer than the idle bound arrives whole at AWS', async (kind) => {
    const { req, answer } = upload(kind, 4_000);
    // Ten pieces, one every 60 ms: four times the idle bound in all.
    await trickle(req, 4_000, 10, 60);
    expect(await answer).toEqual({ status: 200, body: '{"bytes":4000}' });
    expect(received).toMatchObject([{ bytes: 4_000, whole: true }]);
  });

  it.each(['s3', 'lambda'] as const)('a %s upload that stops sending halfway has its connection closed within the bound, and AWS completes nothing', async (kind) => {
    const { req, answer } = upload(kind, 4_000);
    req.write(Buffer.alloc(1_000, 0x61));
    const ended = await answer;
    expect(ended).toMatchObject({ closed: true });
    expect((ended as { afterMs: number }).afterMs).toBeLessThan(BODY_IDLE_MS * 1.25 + 400);
    // The held body never went; the streamed one broke off on its way.
    expect(received.filter((r) => r.whole)).toEqual([]);
  });

  it('time the gateway does not read (the broker deciding for longer than the bound) is not the caller\'s stall', async () => {
    decideAfterMs = BODY_IDLE_MS * 4;
    const { req, answer } = upload('s3', 4_000);
    req.end(Buffer.alloc(4_000, 0x61));
    expect(await answer).toEqual({ status: 200, body: '{"bytes":4000}' });
  });
});
