import { mkdtemp, writeFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BrokerClient } from '../../../src/agent/broker-client.js';
import { CertificateAuthority } from '../../../src/pki/authority.js';

const TOKEN = 'the-pod-token-that-must-never-show';

/** A broker whose every answer the test writes: too large, broken off, late, a 401 before a token rotates. */
describe('the sidecar\'s broker client against a broker that misbehaves', () => {
  let server: https.Server;
  let caPem = '';
  let brokerUrl = '';
  let tokenFile = '';
  const seen: string[] = [];
  let answer: (req: IncomingMessage, res: ServerResponse) => void = (_req, res) => res.end('{}');

  beforeAll(async () => {
    const ca = await CertificateAuthority.create('broker-client-test');
    caPem = ca.certPem;
    const serving = await ca.issueServing('broker', { ips: ['127.0.0.1'] });
    server = https.createServer({ cert: serving.certPem, key: serving.keyPem }, (req, res) => {
      seen.push(req.headers.authorization ?? '');
      answer(req, res);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    brokerUrl = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
    tokenFile = path.join(await mkdtemp(path.join(os.tmpdir(), 'broker-client-')), 'token');
    await writeFile(tokenFile, TOKEN);
  });

  afterAll(() => {
    server.closeAllConnections();
    server.close();
  });

  const client = (timeoutMs?: number) => new BrokerClient({ brokerUrl, caPem, tokenFile, ...(timeoutMs === undefined ? {} : { timeoutMs }) });
  const call = { method: 'POST', path: '/v1/hops', body: Buffer.from('{"tool":"t","action":"a"}'), contentType: 'application/json' };
  const refusal = async (promise: Promise<unknown>) => {
    const err = (await promise.then(() => undefined, (e: unknown) => e)) as { code?: string; message?: string } | undefined;
    expect(err, 'the call must fail').toBeDefined();
    expect(err?.message).not.toContain(TOKEN);
    return err;
  };

  it('sends the pod token, the body and the content type, and reads the answer whole', async () => {
    seen.length = 0;
    answer = (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c)).on('end', () => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ echoed: Buffer.concat(chunks).toString(), type: req.headers['content-type'] })));
    };
    const broker = client();
    try {
      const got = await broker.request(call, 1024);
      expect(got.status).toBe(200);
      expect(JSON.parse(got.body.toString())).toEqual({ echoed: '{"tool":"t","action":"a"}', type: 'application/json' });
      expect(seen).toEqual([`Bearer ${TOKEN}`]);
    } finally {
      broker.close();
    }
  });

  it('refuses an answer over its bound, declared or not, as the broker being unusable', async () => {
    const broker = client();
    try {
      answer = (_req, res) => res.writeHead(200, { 'content-type': 'application/json', 'content-length': '5000' }).end('x'.repeat(5000));
      expect(await refusal(broker.request(call, 1024))).toMatchObject({ code: 'broker_unreachable', message: expect.stringContaining('more than 1024 bytes') as string });
      answer = (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json' });
        for (let i = 0; i < 10; i++) res.write('y'.repeat(500));
        res.end();
      };
      expect(await refusal(broker.request(call, 1024))).toMatchObject({ code: 'broker_unreachable', message: expect.stringContaining('more than 1024 bytes') as string });
      // The pool is still usable after both.
      answer = (_req, res) => res.end('{"ok":true}');
      expect((await broker.request(call, 1024)).status).toBe(200);
    } finally {
      broker.close();
    }
  });

  it('says so when the broker breaks off its answer, or never gives one', async () => {
    const broker = client(300);
    try {
      answer = (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': '100' });
        res.write('{"half":');
        setTimeout(() => res.socket?.destroy(), 20);
      };
      expect(await refusal(broker.request(call, 1024))).toMatchObject({ code: 'broker_unreachable', message: expect.stringContaining('broke off its answer') as string });
      answer = () => undefined;
      const started = Date.now();
      expect(await refusal(broker.request(call, 1024))).toMatchObject({ code: 'broker_unreachable', message: expect.stringContaining(brokerUrl) as string });
      expect(Date.now() - started).toBeLessThan(5_000);
    } finally {
      broker.close();
    }
  });

  it('asks once more with the token file\'s new content after a 401, and only then', async () => {
    const broker = client();
    try {
      answer = (req, res) => res.writeHead(req.headers.authorization === 'Bearer rotated-token' ? 200 : 401, { 'content-type': 'application/json' }).end('{}');
      seen.length = 0;
      expect((await broker.request(call, 1024)).status).toBe(401);
      expect(seen).toEqual([`Bearer ${TOKEN}`]);
      await writeFile(tokenFile, 'rotated-token\n');
      seen.length = 0;
      expect((await broker.request(call, 1024)).status).toBe(200);
      expect(seen).toEqual([`Bearer ${TOKEN}`, 'Bearer rotated-token']);
    } finally {
      await writeFile(tokenFile, TOKEN);
      broker.close();
    }
  });

  it('sends nothing to a server whose certificate the broker\'s CA did not sign', async () => {
    const other = await CertificateAuthority.create('someone-else');
    const broker = new BrokerClient({ brokerUrl, caPem: other.certPem, tokenFile });
    seen.length = 0;
    try {
      expect(await refusal(broker.request(call, 1024))).toMatchObject({ code: 'broker_unreachable' });
      expect(seen).toEqual([]);
    } finally {
      broker.close();
    }
  });
});
