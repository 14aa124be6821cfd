import net from 'node:net';
import tls from 'node:tls';
import https from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChainwardenError } from '../../../src/errors.js';
import { silentLogger } from '../../../src/log.js';
import { CertificateAuthority } from '../../../src/pki/authority.js';
import { serveHttps, type RunningServer } from '../../../src/server/https.js';
import { dripHeaders } from '../../builders/slow-client.js';

let server: RunningServer;
let ca: string;

function get(path: string): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    https
      .get(`${server.url}${path}`, { ca }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as unknown }));
      })
      .on('error', reject);
  });
}

beforeAll(async () => {
  const authority = await CertificateAuthority.create('test-ca');
  ca = authority.certPem;
  const tls = await authority.issueServing('test', { dnsNames: ['localhost'], ips: ['127.0.0.1'] });
  server = await serveHttps(
    {
      // A handler that throws before it returns a promise, as a metrics render on a half-built registry could.
      '/sync-throw': () => {
        throw new Error('boom');
      },
      '/coded': () => Promise.reject(new ChainwardenError('task_not_active', 'AgentTask ns/t is Completed')),
      '/ok': (_req, res) => Promise.resolve(void res.end('{"ok":true}')),
      '/prefix/': (_req, res) => Promise.resolve(void res.end('{"prefix":true}')),
    },
    tls,
    { host: '127.0.0.1', port: 0 },
    silentLogger(),
  );
});
afterAll(() => server.close());

describe('serveHttps', () => {
  it('answers a handler that throws synchronously with a 500 and keeps serving', async () => {
    expect(await get('/sync-throw')).toEqual({ status: 500, body: { error: { code: 'internal', message: 'internal error; see the operator logs' } } });
    expect(await get('/ok')).toEqual({ status: 200, body: { ok: true } });
  });

  it('maps a coded error to its status from the catalogue', async () => {
    expect(await get('/coded')).toEqual({ status: 403, body: { error: { code: 'task_not_active', message: 'AgentTask ns/t is Completed' } } });
  });

  it('routes exact paths, then prefixes, and 404s the rest', async () => {
    expect((await get('/prefix/x/y')).body).toEqual({ prefix: true });
    expect(await get('/nothing')).toMatchObject({ status: 404, body: { error: { code: 'not_found' } } });
  });
});

describe('serveHttps limits', () => {
  it('drops a connection that never starts its TLS handshake, within the headers timeout rather than Node\'s two minutes', async () => {
    const authority = await CertificateAuthority.create('test-ca');
    const material = await authority.issueServing('test', { dnsNames: ['localhost'], ips: ['127.0.0.1'] });
    const limited = await serveHttps({ '/ok': (_req, res) => Promise.resolve(void res.end('{}')) }, material, { host: '127.0.0.1', port: 0 }, silentLogger(), { headersTimeoutMs: 300, requestTimeoutMs: 600 });
    try {
      const closed = await new Promise<boolean>((resolve, reject) => {
        const socket = net.connect(limited.port, '127.0.0.1');
        const giveUp = setTimeout(() => {
          socket.destroy();
          resolve(false);
        }, 5_000);
        socket.on('close', () => {
          clearTimeout(giveUp);
          resolve(true);
        });
        socket.on('error', reject);
      });
      expect(closed).toBe(true);
    } finally {
      await limited.close();
    }
  });

  it('drops a client that keeps its request headers coming (slowloris) once the headers timeout passes', async () => {
    const authority = await CertificateAuthority.create('test-ca');
    const material = await authority.issueServing('test', { dnsNames: ['localhost'], ips: ['127.0.0.1'] });
    const limited = await serveHttps({ '/ok': (_req, res) => Promise.resolve(void res.end('{}')) }, material, { host: '127.0.0.1', port: 0 }, silentLogger(), { headersTimeoutMs: 300, requestTimeoutMs: 600 });
    try {
      const started = performance.now();
      const answer = await dripHeaders({ host: '127.0.0.1', port: limited.port, ca: authority.certPem, servername: 'localhost', path: '/ok', everyMs: 100 });
      expect(answer).toMatch(/^HTTP\/1.1 408/);
      expect(performance.now() - started).toBeLessThan(3_000);
    } finally {
      await limited.close();
    }
  });
});

describe('serveHttps with a bound on connections per address', () => {
  let bounded: RunningServer;
  let caPem: string;
  beforeAll(async () => {
    const authority = await CertificateAuthority.create('test-ca');
    caPem = authority.certPem;
    const tls = await authority.issueServing('test', { dnsNames: ['localhost'], ips: ['127.0.0.1'] });
    bounded = await serveHttps({ '/ok': (_req, res) => Promise.resolve(void res.end('{"ok":true}')) }, tls, { host: '0.0.0.0', port: 0 }, silentLogger(), { maxConnectionsPerSource: 3 });
  });
  afterAll(() => bounded.close());

  /** A TLS connection from `from`, resolved once its handshake ends (true) or it is closed first (false). */
  const connect = (from: string, sockets: tls.TLSSocket[]) =>
    new Promise<boolean>((resolve) => {
      const socket = tls.connect({ socket: net.connect({ host: '127.0.0.1', port: bounded.port, localAddress: from }), ca: caPem, servername: 'localhost' });
      sockets.push(socket);
      socket.once('secureConnect', () => resolve(true));
      socket.once('error', () => resolve(false));
      socket.once('close', () => resolve(false));
    });

  it('closes a connection from an address that holds the bound before its handshake; other addresses, and the same once one closes, still connect', async () => {
    const sockets: tls.TLSSocket[] = [];
    try {
      for (let i = 0; i < 3; i++) expect(await connect('127.0.0.1', sockets)).toBe(true);
      // The attacker's fourth: closed at once, nothing served on it.
      expect(await connect('127.0.0.1', sockets)).toBe(false);
      // Another pod's address is not held up by it.
      expect(await connect('127.0.0.2', sockets)).toBe(true);
      // One of the three closes; its address may open one again.
      const first = sockets[0] as tls.TLSSocket;
      await new Promise<void>((r) => first.end(() => r()));
      await new Promise((r) => setTimeout(r, 50));
      expect(await connect('127.0.0.1', sockets)).toBe(true);
    } finally {
      for (const s of sockets) s.destroy();
    }
  });
});
