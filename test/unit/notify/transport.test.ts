import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeFailure } from '../../../src/notify/notifier.js';
import { boundedResolve, forbiddenReceiverAddress, MAX_RECEIVER_LOOKUPS, notifyTransport, ReceiverRefused } from '../../../src/notify/transport.js';

/** A receiver on loopback: every request it gets, and a redirect for /moved. */
const received: { path: string; headers: http.IncomingHttpHeaders; body: string }[] = [];
let server: http.Server;
let port = 0;

beforeAll(async () => {
  server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      received.push({ path: req.url ?? '', headers: req.headers, body });
      if (req.url === '/moved') return void res.writeHead(307, { location: `http://127.0.0.1:${port}/elsewhere` }).end();
      res.writeHead(202).end('taken');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as AddressInfo).port;
});

afterAll(() => {
  server.closeAllConnections();
  server.close();
});

const request = (signal = AbortSignal.timeout(5_000)) => ({ headers: { 'content-type': 'application/json', authorization: 'Bearer s3cr3t' }, body: '{"text":"hop h1 waits"}', signal });

describe('the approval notification transport', () => {
  it('posts the body with the credential header and answers the status; a redirect is not followed, so the credential goes nowhere else', async () => {
    received.length = 0;
    const post = notifyTransport();
    await expect(post(`http://127.0.0.1:${port}/hooks/chainwarden`, request())).resolves.toEqual({ status: 202 });
    expect(received).toEqual([{ path: '/hooks/chainwarden', headers: expect.objectContaining({ authorization: 'Bearer s3cr3t', 'content-length': '23' }) as unknown, body: '{"text":"hop h1 waits"}' }]);
    await expect(post(`http://127.0.0.1:${port}/moved`, request())).resolves.toEqual({ status: 307 });
    expect(received.map((r) => r.path)).toEqual(['/hooks/chainwarden', '/moved']);
  });

  it('never posts to a link-local address, where clouds serve instance metadata, however it is written', async () => {
    const post = notifyTransport();
    for (const url of ['http://169.254.169.254/latest/meta-data', 'http://0xA9FEA9FE/', 'http://2852039166/', 'http://[::ffff:169.254.169.254]/', 'http://[fd00:ec2::254]/latest', 'http://[fe80::1]:8080/', 'http://[64:ff9b::a9fe:a9fe]/', 'http://[::169.254.169.254]/', 'http://[2002:a9fe:a9fe::1]/', 'http://[fd00:ec2::23]/', 'http://[fd00:ec2::253]/', 'http://100.100.100.200/latest/meta-data', 'http://168.63.129.16/machine', 'http://[64:ff9b::6464:64c8]/', 'http://[64:ff9b::a83f:8110]/', 'http://[2002:6464:64c8::1]/']) {
      await expect(post(url, request()), url).rejects.toBeInstanceOf(ReceiverRefused);
    }
    expect(forbiddenReceiverAddress('10.0.0.5')).toBe(false);
    expect(forbiddenReceiverAddress('127.0.0.1')).toBe(false);
  });

  it('refuses a name that resolves to a link-local address when it connects, and uses the others a name has', async () => {
    received.length = 0;
    const metadata = notifyTransport((_host, callback) => callback(null, [{ address: '169.254.169.254', family: 4 }]));
    const failure = await metadata(`http://hooks.example.com:${port}/x`, request()).catch((err: unknown) => err);
    expect(failure).toBeInstanceOf(ReceiverRefused);
    // What the Warning Event on the task says.
    expect(describeFailure(failure, 10_000)).toBe("its address 169.254.169.254 is link-local, or another where a cloud serves instance metadata and credentials; chainwarden does not post there");
    const none = notifyTransport((_host, callback) => callback(null, []));
    expect(describeFailure(await none(`http://hooks.example.com:${port}/x`, request()).catch((err: unknown) => err), 10_000)).toBe('ENOTFOUND');
    const both = notifyTransport((_host, callback) => callback(null, [{ address: '169.254.169.254', family: 4 }, { address: '127.0.0.1', family: 4 }]));
    await expect(both(`http://hooks.example.com:${port}/y`, request())).resolves.toEqual({ status: 202 });
    expect(received.map((r) => [r.path, r.headers.host])).toEqual([['/y', `hooks.example.com:${port}`]]);
  });

  it('gives up on a receiver that does not answer in time', async () => {
    const silent = http.createServer(() => undefined);
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    try {
      const failure = await notifyTransport()(`http://127.0.0.1:${(silent.address() as AddressInfo).port}/`, request(AbortSignal.timeout(1_000))).catch((err: unknown) => err);
      expect(describeFailure(failure, 1_000)).toBe('no answer within 1s');
    } finally {
      silent.closeAllConnections();
      silent.close();
    }
  });

  it("a receiver whose name never resolves holds at most one lookup, and all receivers' names at most two: the operator's other lookups and files keep their threads", () => {
    // A resolver the tenant's names hang in (their DNS never answers); others answer when the test says.
    const pending = new Map<string, (addresses: { address: string; family: number }[]) => void>();
    const started: string[] = [];
    const resolve = boundedResolve((hostname, callback) => {
      started.push(hostname);
      pending.set(hostname, (addresses) => callback(null, addresses));
    });
    const answers: string[] = [];
    const ask = (host: string) => resolve(host, (err, addresses) => answers.push(`${host}:${err ? 'error' : addresses.map((a) => a.address).join(',')}`));
    // Eight attempts to one hung name, then two more names, then an ordinary one.
    for (let i = 0; i < 8; i++) ask('hook.tenant-a.example');
    ask('hook2.tenant-a.example');
    ask('hook3.tenant-a.example');
    ask('receiver.tenant-b.example');
    expect(started).toEqual(['hook.tenant-a.example', 'hook2.tenant-a.example']);
    expect(MAX_RECEIVER_LOOKUPS).toBe(2);
    // A hung lookup that finally answers gives its slot to the next name waiting, in order.
    pending.get('hook.tenant-a.example')?.([{ address: '192.0.2.1', family: 4 }]);
    expect(answers.filter((a) => a.startsWith('hook.tenant-a.example'))).toHaveLength(8);
    expect(started).toEqual(['hook.tenant-a.example', 'hook2.tenant-a.example', 'hook3.tenant-a.example']);
    pending.get('hook3.tenant-a.example')?.([{ address: '192.0.2.3', family: 4 }]);
    expect(started.at(-1)).toBe('receiver.tenant-b.example');
    pending.get('receiver.tenant-b.example')?.([{ address: '192.0.2.9', family: 4 }]);
    expect(answers.at(-1)).toBe('receiver.tenant-b.example:192.0.2.9');
  });

  it('a resolver that throws at once answers with the error and gives its slot back', () => {
    let calls = 0;
    const resolve = boundedResolve((hostname, callback) => {
      calls++;
      if (hostname.startsWith('bad')) throw new TypeError('not a hostname');
      callback(null, [{ address: '192.0.2.1', family: 4 }]);
    }, 1);
    const answers: string[] = [];
    resolve('bad.example', (err) => answers.push(err ? err.message : 'ok'));
    resolve('good.example', (err, addresses) => answers.push(err ? err.message : addresses[0]?.address ?? ''));
    expect(answers).toEqual(['not a hostname', '192.0.2.1']);
    expect(calls).toBe(2);
  });
});
