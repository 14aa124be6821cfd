import type { ClientRequest } from 'node:http';
import https from 'node:https';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { brokerRoutes, type BrokerDeps } from '../../../src/broker/routes.js';
import { ChainwardenError } from '../../../src/errors.js';
import { silentLogger } from '../../../src/log.js';
import { CertificateAuthority } from '../../../src/pki/authority.js';
import { systemClock } from '../../../src/runtime/clock.js';
import { serveHttps, type RunningServer } from '../../../src/server/https.js';
import { MAX_SIGN_REQUEST_BYTES } from '../../../src/aws/sign-api.js';

const authenticate = vi.fn<BrokerDeps['auth']['authenticate']>();
const untouchable = new Proxy({}, { get: (_t, name) => () => Promise.reject(new Error(`${String(name)} must not be called`)) });
let server: RunningServer;
let ca: string;

function call(method: string, path: string, body?: string): Promise<{ status: number; body: { error?: { code: string; field?: string; message: string } } }> {
  return new Promise((resolve, reject) => {
    const req = https.request(`${server.url}${path}`, { method, ca, headers: { authorization: 'Bearer forged' } }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as { error?: { code: string; field?: string; message: string } } }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

beforeAll(async () => {
  const authority = await CertificateAuthority.create('test-ca');
  ca = authority.certPem;
  const deps = { auth: { authenticate }, credentials: untouchable, hops: untouchable, issuer: untouchable, status: untouchable, clock: systemClock, log: silentLogger(), trustDomain: 'cluster.local' } as unknown as BrokerDeps;
  server = await serveHttps(brokerRoutes(deps), await authority.issueServing('test', { dnsNames: ['localhost'], ips: ['127.0.0.1'] }), { host: '127.0.0.1', port: 0 }, silentLogger());
});
afterAll(() => server.close());
beforeEach(() => {
  authenticate.mockReset();
  authenticate.mockRejectedValue(new ChainwardenError('unauthenticated', 'the token was refused'));
});

const HOP = 'h1_AAAAAAAAAAAA_BBBBBBBBBBBBBBBB';

describe('broker paths are checked before the caller is authenticated', () => {
  it.each([
    ['GET', '/v1/hops/not-a-hop-id', 'invalid_hop', 'hopId'],
    ['GET', `/v1/hops/${HOP.replace('h1_', 'h01_')}`, 'invalid_hop', 'hopId'],
    ['GET', '/v1/hops/%zz', 'invalid_hop', 'hopId'],
    ['GET', '/v1/hops/', 'invalid_hop', 'hopId'],
    ['GET', `/v1/hops/${HOP}/again`, 'invalid_hop', 'hopId'],
    ['GET', `/v1/hops/${'h'.repeat(10_000)}`, 'invalid_hop', 'hopId'],
    ['GET', '/v1/credentials/%E0%A4%A', 'invalid_request', 'name'],
    ['GET', '/v1/credentials/Default', 'invalid_request', 'name'],
    ['GET', '/v1/credentials/', 'invalid_request', 'name'],
    ['GET', '/v1/credentials/a/b', 'invalid_request', 'name'],
    ['GET', `/v1/credentials/${'a'.repeat(64)}`, 'invalid_request', 'name'],
    ['POST', '/v1/tasks/Support/ticket-4711/complete', 'invalid_request', 'namespace'],
    ['POST', `/v1/tasks/${'a'.repeat(64)}/ticket-4711/complete`, 'invalid_request', 'namespace'],
    ['POST', '/v1/tasks/support/ticket_4711/complete', 'invalid_request', 'name'],
    ['POST', '/v1/tasks/support/%74icket/complete', 'invalid_request', 'name'],
    ['POST', `/v1/tasks/support/${'a'.repeat(254)}/complete`, 'invalid_request', 'name'],
    ['GET', '/v1/task?waitSeconds=21', 'invalid_request', 'waitSeconds'],
    ['GET', '/v1/task?waitSeconds=-1', 'invalid_request', 'waitSeconds'],
    ['GET', '/v1/task?waitSeconds=1e1', 'invalid_request', 'waitSeconds'],
    ['GET', '/v1/task?waitSeconds=', 'invalid_request', 'waitSeconds'],
    ['GET', `/v1/task?waitSeconds=${'9'.repeat(400)}`, 'invalid_request', 'waitSeconds'],
    ['GET', '/v1/task?waitSeconds=20&touched=-1', 'invalid_request', 'touched'],
    ['GET', '/v1/task?waitSeconds=20&touched=1e3', 'invalid_request', 'touched'],
    ['GET', '/v1/task?waitSeconds=20&touched=', 'invalid_request', 'touched'],
    ['GET', `/v1/task?touched=${'9'.repeat(400)}`, 'invalid_request', 'touched'],
  ])('%s %s is a 400 %s naming %s', async (method, path, code, field) => {
    const answer = await call(method, path);
    expect(answer).toMatchObject({ status: 400, body: { error: { code, field } } });
    expect(authenticate).not.toHaveBeenCalled();
  });

  it.each([
    ['POST', '/v1/tasks/support/ticket-4711/finish'],
    ['POST', '/v1/tasks/support/ticket-4711'],
    ['POST', '/v1/tasks/support/ticket-4711/complete/now'],
  ])('%s %s names no endpoint: 404, unauthenticated', async (method, path) => {
    expect(await call(method, path)).toMatchObject({ status: 404, body: { error: { code: 'not_found' } } });
    expect(authenticate).not.toHaveBeenCalled();
  });

  it.each([
    ['GET', `/v1/hops/${HOP}`],
    ['GET', '/v1/credentials'],
    ['GET', '/v1/credentials/reports-bucket'],
    ['POST', '/v1/tasks/support/ticket-4711/complete'],
    ['POST', '/v1/tasks/support/agents.ticket-4711/complete'],
  ])('%s %s is well formed: the caller is authenticated (and here refused)', async (method, path) => {
    expect(await call(method, path)).toMatchObject({ status: 401, body: { error: { code: 'unauthenticated' } } });
    expect(authenticate).toHaveBeenCalledOnce();
  });

  it('authenticates a hop request before its body is read: an unknown caller\'s body is never parsed', async () => {
    expect(await call('POST', '/v1/hops', `${'['.repeat(60_000)}`)).toMatchObject({ status: 401, body: { error: { code: 'unauthenticated' } } });
    expect(authenticate).toHaveBeenCalledOnce();
  });
});

/** A request under way: its answer once the broker gives it, and a way to give it up first. */
function held(req: ClientRequest): { answer: Promise<{ status: number; body: string }>; close: () => void } {
  req.on('error', () => undefined);
  const answer = new Promise<{ status: number; body: string }>((resolve) => {
    req.on('response', (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
    });
  });
  return { answer, close: () => req.destroy() };
}

describe('GET /v1/svid', () => {
  it.each(['sts.amazonaws.com', 'cluster.local'])('never mints for audience %s: 403, unauthenticated', async (audience) => {
    // cluster.local, the trust domain, is the audience of transaction tokens, signed with the same key by the same issuer.
    expect(await call('GET', `/v1/svid?audience=${audience}`)).toMatchObject({ status: 403, body: { error: { code: 'forbidden', field: 'audience' } } });
    expect(authenticate).not.toHaveBeenCalled();
  });
});

describe('what the issuer publishes', () => {
  it.each(['POST', 'PUT', 'DELETE'])('%s on /keys or the discovery document is a 405: they are read, never written', async (method) => {
    for (const path of ['/keys', '/.well-known/openid-configuration']) expect(await call(method, path)).toMatchObject({ status: 405, body: { error: { code: 'method_not_allowed' } } });
  });
});

describe("the gateways' bodies the broker holds at once", () => {
  let gateway: RunningServer;
  let gatewayCa: string;
  const sign = vi.fn();
  beforeAll(async () => {
    const authority = await CertificateAuthority.create('gateway-ca');
    const deps = { auth: { authenticate: () => Promise.resolve({ task: { metadata: {} } }) }, credentials: untouchable, hops: untouchable, issuer: untouchable, status: untouchable, clock: systemClock, log: silentLogger(), trustDomain: 'cluster.local', aws: { sign }, gatewayBodiesBytes: MAX_SIGN_REQUEST_BYTES + 1024 * 1024 } as unknown as BrokerDeps;
    gateway = await serveHttps(brokerRoutes(deps), await authority.issueServing('gateway', { ips: ['127.0.0.1'] }), { host: '127.0.0.1', port: 0 }, silentLogger());
    gatewayCa = authority.certPem;
  });
  afterAll(() => gateway.close());

  /** A sign request declaring `length` bytes and sending `sent` of them; it answers when the broker does. */
  const signRequest = (length: number, sent: string) => {
    const req = https.request(`${gateway.url}/v1/aws/sign`, { method: 'POST', ca: gatewayCa, headers: { authorization: 'Bearer pod-token', 'content-type': 'application/json', 'content-length': String(length) } });
    req.write(sent);
    return held(req);
  };

  it('a caller that declares large bodies and sends them slowly holds at most the bound: past it a call is a 503 bodies_held, which SDKs retry, and the room comes back when a call ends', async () => {
    const slow = signRequest(MAX_SIGN_REQUEST_BYTES, '{"authorization":');
    // Its body is being read: the broker holds its declared size.
    await new Promise((r) => setTimeout(r, 100));
    const refused = await signRequest(MAX_SIGN_REQUEST_BYTES, '{').answer;
    expect(refused.status).toBe(503);
    const error = (JSON.parse(refused.body) as { error: { code: string; message: string } }).error;
    expect(error.code).toBe('bodies_held');
    expect(error.message).toMatch(/holds \d+ KiB of gateway calls' bodies already, its bound being \d+ KiB; retry shortly/);
    // A small call still fits beside it.
    expect((await signRequest(2, '{}').answer).status).toBe(400);
    slow.close();
    await expect.poll(async () => (await signRequest(MAX_SIGN_REQUEST_BYTES - 1, '{}'.padEnd(MAX_SIGN_REQUEST_BYTES - 1)).answer).status, { timeout: 5_000 }).toBe(400);
    expect(sign).not.toHaveBeenCalled();
  });
});

describe("a pod's decisions in flight at once", () => {
  let broker: RunningServer;
  let brokerCa: string;
  /** Each decision waits until released: a pod that sends without waiting piles them up. */
  const waiting: (() => void)[] = [];
  const principal = (pod: string) => ({ podUid: `uid-${pod}`, podName: pod, task: { metadata: { name: 't', namespace: 'ns' } } });
  beforeAll(async () => {
    const authority = await CertificateAuthority.create('in-flight-ca');
    const hops = {
      decide: () => new Promise((resolve) => waiting.push(() => resolve({ hopId: HOP, decision: 'allow', reasons: [] }))),
      touched: () => 0,
    };
    const deps = { auth: { authenticate: (header: string) => Promise.resolve(principal(header.replace('Bearer ', ''))) }, credentials: untouchable, hops, issuer: untouchable, status: untouchable, clock: systemClock, log: silentLogger(), trustDomain: 'cluster.local', maxInFlightPerPod: 3 } as unknown as BrokerDeps;
    broker = await serveHttps(brokerRoutes(deps), await authority.issueServing('in-flight', { ips: ['127.0.0.1'] }), { host: '127.0.0.1', port: 0 }, silentLogger());
    brokerCa = authority.certPem;
  });
  afterAll(() => broker.close());

  const hop = (pod: string) => {
    const req = https.request(`${broker.url}/v1/hops`, { method: 'POST', ca: brokerCa, agent: false, headers: { authorization: `Bearer ${pod}`, 'content-type': 'application/json' } });
    req.end(JSON.stringify({ tool: 'tickets', action: 'read', resource: 'ticket/1' }));
    return held(req);
  };

  it('past the bound a pod is refused with a 429 naming it, while another pod is still answered; the room comes back as answers go out or connections close', async () => {
    const flood = [hop('greedy'), hop('greedy'), hop('greedy')];
    await expect.poll(() => waiting.length).toBe(3);
    const refused = await hop('greedy').answer;
    expect(refused.status).toBe(429);
    expect(JSON.parse(refused.body)).toMatchObject({ error: { code: 'too_many_requests', message: expect.stringMatching(/^pod greedy has 3 requests in flight on this broker, the most a pod may; wait for their answers/) as unknown } });
    // Another pod of the cluster is not held behind the greedy one's count.
    const other = hop('patient');
    await expect.poll(() => waiting.length).toBe(4);
    waiting.pop()?.();
    expect((await other.answer).status).toBe(200);
    // One answered, one given up by its caller: two more fit, and the third is refused again.
    waiting.shift()?.();
    expect((await flood[0]!.answer).status).toBe(200);
    flood[1]!.close();
    await new Promise((r) => setTimeout(r, 100));
    const again = [hop('greedy'), hop('greedy')];
    await expect.poll(() => waiting.length).toBe(4);
    expect((await hop('greedy').answer).status).toBe(429);
    for (const release of waiting.splice(0)) release();
    for (const h of [flood[2]!, ...again]) expect((await h.answer).status).toBe(200);
  });
});
