import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAwsGateway, type AwsSigner } from '../../../src/agent/aws-gateway.js';
import { awsErrorOf } from '../../../src/agent/aws-errors.js';
import type { AwsSignRequest } from '../../../src/aws/sign-api.js';
import { silentLogger } from '../../../src/log.js';

/** Every call the broker is asked about, refused: what is measured here is what the sidecar holds before it asks. */
const asked: AwsSignRequest[] = [];
const signer: AwsSigner = {
  sign: (request) => {
    asked.push(request);
    return Promise.resolve({ ok: false, error: awsErrorOf('hop_denied', 'denied by no-writes', 403) });
  },
};
const BOUND = 1024 * 1024;
let gateway: ReturnType<typeof createAwsGateway>;
let server: http.Server;
const port = () => (server.address() as AddressInfo).port;

beforeAll(async () => {
  gateway = createAwsGateway({ signer, port, log: silentLogger(), maxHeldBytes: BOUND });
  server = gateway.server;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
});

afterAll(() => {
  gateway.close();
  server.close();
});

/** A DynamoDB PutItem whose body of `length` bytes is sent, by `start`, all but its last KiB: the sidecar holds what it read meanwhile. */
function putItem(length: number, to = port()) {
  const req = http.request({
    host: '127.0.0.1',
    port: to,
    method: 'POST',
    path: '/',
    agent: false,
    headers: {
      host: `127.0.0.1:${to}`,
      authorization: `AWS4-HMAC-SHA256 Credential=CWPLACEHOLDERKEY0001/20261121/us-east-1/dynamodb/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=${'0'.repeat(64)}`,
      'x-amz-date': '20261121T081159Z',
      'x-amz-target': 'DynamoDB_20120810.PutItem',
      'content-type': 'application/x-amz-json-1.0',
      'content-length': String(length),
    },
  });
  const answer = new Promise<{ status: number; body: string }>((resolve, reject) => {
    req.on('response', (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
  });
  const body = Buffer.alloc(length, 0x20);
  body.write('{"TableName":"orders"}');
  return { answer, start: () => req.write(body.subarray(0, length - 1024)), finish: () => req.end(body.subarray(length - 1024)), abandon: () => req.destroy() };
}

describe('the request bodies the sidecar holds at once', () => {
  it('are bounded: a call past the bound is a 503 the SDK retries, nothing is asked of the broker for it, and the room comes back as calls end', async () => {
    const first = putItem(700 * 1024);
    first.start();
    await new Promise((r) => setTimeout(r, 100));
    const second = putItem(700 * 1024);
    second.start();
    const refused = await second.answer;
    expect(refused.status).toBe(503);
    expect(JSON.parse(refused.body)).toMatchObject({ __type: 'ServiceUnavailable', message: expect.stringContaining('holds 699 KiB of request bodies already, its bound being 1024 KiB; retry') as unknown });
    expect(asked).toHaveLength(0);
    first.finish();
    expect((await first.answer).status).toBe(403);
    expect(asked).toHaveLength(1);
    // The first call's room is back: the same call now goes as far as the broker.
    const third = putItem(700 * 1024);
    third.start();
    third.finish();
    expect((await third.answer).status).toBe(403);
    expect(asked).toHaveLength(2);
  });
});

describe('what a request only declares', () => {
  it('holds nothing: two that declare 16 MiB each, the bound in all, and send nothing do not keep an ordinary call from the broker', async () => {
    let to = 0;
    // The production bound: 32 MiB.
    const roomy = createAwsGateway({ signer, port: () => to, log: silentLogger() });
    const roomyServer = roomy.server;
    await new Promise<void>((resolve) => roomyServer.listen(0, '127.0.0.1', resolve));
    to = (roomyServer.address() as AddressInfo).port;
    try {
      const stalled = [lambdaInvoke(16 * 1024 * 1024, to), lambdaInvoke(16 * 1024 * 1024, to)];
      await new Promise((r) => setTimeout(r, 100));
      const before = asked.length;
      const ordinary = putItem(4 * 1024, to);
      ordinary.start();
      ordinary.finish();
      expect((await ordinary.answer).status).toBe(403);
      expect(asked).toHaveLength(before + 1);
      for (const request of stalled) request.destroy();
    } finally {
      roomy.close();
      roomyServer.closeAllConnections();
      roomyServer.close();
    }
  });
});

/** A Lambda Invoke declaring a body of `length` bytes (held whole, up to 16 MiB) that sends none of it. */
function lambdaInvoke(length: number, to: number): http.ClientRequest {
  const req = http.request({
    host: '127.0.0.1',
    port: to,
    method: 'POST',
    path: '/2015-03-31/functions/summarize/invocations',
    agent: false,
    headers: {
      host: `127.0.0.1:${to}`,
      authorization: `AWS4-HMAC-SHA256 Credential=CWPLACEHOLDERKEY0001/20261121/us-east-1/lambda/aws4_request, SignedHeaders=host;x-amz-date, Signature=${'0'.repeat(64)}`,
      'x-amz-date': '20261121T081159Z',
      'content-type': 'application/json',
      'content-length': String(length),
    },
  });
  req.on('error', () => undefined);
  req.flushHeaders();
  return req;
}
