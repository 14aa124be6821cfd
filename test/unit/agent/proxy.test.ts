import { mkdtemp, readdir, stat, writeFile } from 'node:fs/promises';
import https from 'node:https';
import net, { type AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BrokerClient } from '../../../src/agent/broker-client.js';
import { ensureLocalToken, sameSecret, startAgentProxy, type RunningAgent } from '../../../src/agent/proxy.js';
import { silentLogger } from '../../../src/log.js';
import { CertificateAuthority } from '../../../src/pki/authority.js';

const freshFile = async () => path.join(await mkdtemp(path.join(os.tmpdir(), 'local-token-')), 'token');

describe('ensureLocalToken', () => {
  it('creates one secret, readable by every container and writable by none, even when raced', async () => {
    const file = await freshFile();
    const tokens = await Promise.all(Array.from({ length: 8 }, () => ensureLocalToken(file)));
    expect(new Set(tokens).size).toBe(1);
    expect(tokens[0]).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect((await stat(file)).mode & 0o777).toBe(0o444);
    // No temp files left beside it.
    expect(await readdir(path.dirname(file))).toEqual(['token']);
  });

  it('keeps the secret a previous sidecar wrote, and refuses an empty one', async () => {
    const file = await freshFile();
    await writeFile(file, 'kept-secret-from-before-restart\n');
    expect(await ensureLocalToken(file)).toBe('kept-secret-from-before-restart');
    const empty = await freshFile();
    await writeFile(empty, '');
    await expect(ensureLocalToken(empty)).rejects.toMatchObject({ code: 'local_token_invalid' });
  });
});

describe('sameSecret', () => {
  it('compares content, whatever the lengths', () => {
    expect(sameSecret('abc', 'abc')).toBe(true);
    expect(sameSecret('abc', 'abd')).toBe(false);
    expect(sameSecret('abc', 'abcd')).toBe(false);
    expect(sameSecret('', 'abc')).toBe(false);
  });
});

describe('what the sidecar forwards to the broker', () => {
  let broker: https.Server;
  let sidecar: RunningAgent;
  let localToken = '';
  let brokerUrl = '';
  let caPem = '';
  let tokenFile = '';
  const reached: string[] = [];

  beforeAll(async () => {
    const ca = await CertificateAuthority.create('proxy-paths-test');
    caPem = ca.certPem;
    const serving = await ca.issueServing('broker', { ips: ['127.0.0.1'] });
    broker = https.createServer({ cert: serving.certPem, key: serving.keyPem }, (req, res) => {
      reached.push(`${req.method ?? ''} ${req.url ?? ''} ${req.headers.authorization ?? ''}`);
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
    });
    await new Promise<void>((resolve) => broker.listen(0, '127.0.0.1', resolve));
    brokerUrl = `https://127.0.0.1:${(broker.address() as AddressInfo).port}`;
    const dir = await mkdtemp(path.join(os.tmpdir(), 'proxy-paths-'));
    tokenFile = path.join(dir, 'pod-token');
    await writeFile(tokenFile, 'the-pod-token');
    sidecar = await startAgentProxy({ brokerUrl, caPem, tokenFile, localTokenFile: path.join(dir, 'local'), listen: { host: '127.0.0.1', port: 0 }, log: silentLogger() });
    localToken = await ensureLocalToken(path.join(dir, 'local'));
  });

  afterAll(async () => {
    await sidecar.close();
    broker.close();
  });

  /** A request line sent as it is, with the agent's local token: no client library tidies the target first. */
  const raw = (target: string) =>
    new Promise<number>((resolve, reject) => {
      const { port } = new URL(sidecar.url);
      const socket = net.connect(Number(port), '127.0.0.1', () => socket.write(`POST ${target} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: ${localToken}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`));
      let answer = '';
      socket.on('data', (c: Buffer) => (answer += c.toString()));
      socket.on('close', () => resolve(Number(/^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1] ?? 0)));
      socket.on('error', reject);
    });

  it('never lets a path the broker would resolve elsewhere carry the pod token to the gateways\' own endpoints', async () => {
    reached.length = 0;
    const attacks = [
      '/v1/tasks/..\\..\\v1\\mcp\\forward#/x/complete',
      '/v1/tasks/..\\..\\v1\\aws\\sign#/x/complete',
      '/v1/tasks/%2e%2e/%2e%2e%2fv1%2faws%2fsign%23/complete',
      '/v1/tasks/a/..%5C..%5Cv1%5Cmcp%5Cforward%23/complete',
      '/v1/tasks/./../complete',
      '/v1/credentials/../../v1/aws/sign',
      '/v1/hops/..%2F..%2Fv1%2Fmcp%2Fforward',
      '/mcp/../v1/mcp/forward',
    ];
    for (const target of attacks) expect([target, await raw(target)]).toEqual([target, 404]);
    expect(reached).toEqual([]);
  });

  it('forwards the endpoints an agent uses exactly as it asked for them', async () => {
    reached.length = 0;
    expect(await raw('/v1/tasks/support/ticket-4711.v2/complete')).toBe(200);
    expect(await raw('/v1/hops')).toBe(200);
    expect(reached).toEqual(['POST /v1/tasks/support/ticket-4711.v2/complete Bearer the-pod-token', 'POST /v1/hops Bearer the-pod-token']);
  });

  it('the broker client itself sends no path its URL parser would change', async () => {
    reached.length = 0;
    const client = new BrokerClient({ brokerUrl, caPem, tokenFile });
    for (const bad of ['/v1/tasks/a/..\\..\\v1\\aws\\sign#/complete', '/v1/x/../aws/sign', '//elsewhere.example/v1/hops', '/v1/hops#frag']) {
      await expect(client.request({ method: 'POST', path: bad, body: Buffer.from('{}') }, 1024)).rejects.toMatchObject({ code: 'invalid_request' });
    }
    expect(reached).toEqual([]);
  });
});

describe('connections an agent may hold open', () => {
  it('each listener closes a connection past its bound at once, and takes new ones once others close', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'proxy-connections-'));
    await writeFile(path.join(dir, 'pod-token'), 'the-pod-token');
    const sidecar = await startAgentProxy({ brokerUrl: 'https://127.0.0.1:1', caPem: '', tokenFile: path.join(dir, 'pod-token'), localTokenFile: path.join(dir, 'local'), listen: { host: '127.0.0.1', port: 0 }, awsListen: { host: '127.0.0.1', port: 0 }, maxConnections: 5, log: silentLogger() });
    try {
      for (const url of [sidecar.url, sidecar.awsUrl ?? '']) {
        const { port } = new URL(url);
        const open = (): Promise<{ socket: net.Socket; closedAtOnce: boolean }> =>
          new Promise((resolve) => {
            const socket = net.connect(Number(port), '127.0.0.1');
            const timer = setTimeout(() => resolve({ socket, closedAtOnce: false }), 300);
            socket.on('close', () => {
              clearTimeout(timer);
              resolve({ socket, closedAtOnce: true });
            });
            socket.on('error', () => undefined);
          });
        const held: net.Socket[] = [];
        for (let i = 0; i < 5; i++) {
          const { socket, closedAtOnce } = await open();
          expect(closedAtOnce).toBe(false);
          held.push(socket);
        }
        // The sixth, idle like the rest, is closed by the sidecar.
        expect((await open()).closedAtOnce).toBe(true);
        held.pop()?.destroy();
        await new Promise((r) => setTimeout(r, 50));
        const again = await open();
        expect(again.closedAtOnce).toBe(false);
        for (const socket of [...held, again.socket]) socket.destroy();
      }
    } finally {
      await sidecar.close();
    }
  });
});


describe('callers that hold a connection and send nothing', () => {
  /** A connection that sends `what` and then nothing; when the sidecar closed it, counted from its opening. */
  const idle = (port: number, what: string): Promise<number> =>
    new Promise((resolve) => {
      const opened = Date.now();
      const socket = net.connect(port, '127.0.0.1', () => socket.write(what));
      socket.on('data', () => undefined);
      socket.on('error', () => undefined);
      socket.on('close', () => resolve(Date.now() - opened));
    });

  it('each listener closes a connection that sends nothing, or half its headers, within its bound; the places they held are free again', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'proxy-idle-'));
    await writeFile(path.join(dir, 'pod-token'), 'the-pod-token');
    const sidecar = await startAgentProxy({
      brokerUrl: 'https://127.0.0.1:1',
      caPem: '',
      tokenFile: path.join(dir, 'pod-token'),
      localTokenFile: path.join(dir, 'local'),
      listen: { host: '127.0.0.1', port: 0 },
      awsListen: { host: '127.0.0.1', port: 0 },
      maxConnections: 4,
      callerBounds: { headersMs: 150, requestMs: 300, bodyIdleMs: 150 },
      log: silentLogger(),
    });
    try {
      for (const url of [sidecar.url, sidecar.awsUrl ?? '']) {
        const port = Number(new URL(url).port);
        // Every place the listener has, held by callers that send nothing or stop inside their headers.
        const closed = await Promise.all(['', '', 'PUT /bucket/key HTTP/1.1\r\n', `PUT /bucket/key HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Le`].map((what) => idle(port, what)));
        for (const afterMs of closed) expect(afterMs).toBeGreaterThanOrEqual(140);
        for (const afterMs of closed) expect(afterMs).toBeLessThan(800);
        const answer = await fetch(`${url}/healthz`);
        expect(answer.status).toBeLessThan(500);
      }
    } finally {
      await sidecar.close();
    }
  });

  it('the main listener closes a connection whose request does not arrive whole within its bound', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'proxy-idle-'));
    await writeFile(path.join(dir, 'pod-token'), 'the-pod-token');
    const sidecar = await startAgentProxy({ brokerUrl: 'https://127.0.0.1:1', caPem: '', tokenFile: path.join(dir, 'pod-token'), localTokenFile: path.join(dir, 'local'), listen: { host: '127.0.0.1', port: 0 }, callerBounds: { headersMs: 150, requestMs: 300 }, log: silentLogger() });
    try {
      const port = Number(new URL(sidecar.url).port);
      const token = await ensureLocalToken(path.join(dir, 'local'));
      const closedAfter = await idle(port, `POST /v1/hops HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: ${token}\r\nContent-Length: 100\r\n\r\n{"tool":`);
      expect(closedAfter).toBeGreaterThanOrEqual(290);
      expect(closedAfter).toBeLessThan(900);
    } finally {
      await sidecar.close();
    }
  });
});
