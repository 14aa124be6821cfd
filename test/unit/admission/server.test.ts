import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { admissionRoutes, runChain } from '../../../src/admission/server.js';
import { allow, type AdmissionPlugin, type AdmissionRequest } from '../../../src/admission/review.js';
import { silentLogger } from '../../../src/log.js';

const request: AdmissionRequest = {
  uid: 'u1',
  kind: { group: 'chainwarden.io', version: 'v1alpha1', kind: 'AgentTask' },
  resource: { group: 'chainwarden.io', version: 'v1alpha1', resource: 'agenttasks' },
  operation: 'CREATE',
  userInfo: { username: 'alice' },
  object: {},
};
const plugin = (name: string, admit: AdmissionPlugin['admit']): AdmissionPlugin => ({ name, resources: ['agenttasks'], operations: ['CREATE'], admit });

describe('runChain', () => {
  it('refuses the request when a plugin throws (fails closed) and says which plugin', async () => {
    const verdict = await runChain([plugin('boom', () => Promise.reject(new Error('policy store unreachable')))], request, silentLogger());
    expect(verdict).toMatchObject({ allowed: false, code: 500 });
    expect(!verdict.allowed && verdict.message).toMatch(/\(boom\) could not decide: policy store unreachable/);
  });

  it('adds up patches and stops at the first denial', async () => {
    const seen: string[] = [];
    const chain = [
      plugin('a', () => (seen.push('a'), Promise.resolve(allow([{ op: 'add', path: '/x', value: 1 }])))),
      plugin('b', () => (seen.push('b'), Promise.resolve({ allowed: false, message: 'no' }))),
      plugin('c', () => (seen.push('c'), Promise.resolve(allow()))),
    ];
    expect(await runChain(chain, request, silentLogger())).toEqual({ allowed: false, message: 'no' });
    expect(seen).toEqual(['a', 'b']);
  });

  it('skips plugins for other resources and for subresources', async () => {
    const chain = [plugin('never', () => Promise.reject(new Error('called')))];
    expect((await runChain(chain, { ...request, resource: { ...request.resource, resource: 'pods' } }, silentLogger())).allowed).toBe(true);
    expect((await runChain(chain, { ...request, subResource: 'status' }, silentLogger())).allowed).toBe(true);
  });

  it('shows a plugin the subresources it names, and only those', async () => {
    const watching: AdmissionPlugin = { ...plugin('ephemeral', () => Promise.resolve({ allowed: false, message: 'seen' })), subResources: ['ephemeralcontainers'] };
    expect((await runChain([watching], { ...request, subResource: 'ephemeralcontainers' }, silentLogger())).allowed).toBe(false);
    expect((await runChain([watching], { ...request, subResource: 'status' }, silentLogger())).allowed).toBe(true);
  });
});

describe('admission HTTP endpoint', () => {
  let server: http.Server;
  let base: string;
  beforeAll(async () => {
    const routes = admissionRoutes({ validate: [plugin('deny-all', () => Promise.resolve({ allowed: false, message: 'x', code: 422, violations: [{ field: 'spec.ttl', message: 'bad' }] }))], mutate: [] }, silentLogger());
    server = http.createServer((req, res) => void routes[req.url ?? '']?.(req, res));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  const post = (path: string, body: string) => fetch(`${base}${path}`, { method: 'POST', body, headers: { 'content-type': 'application/json' } });

  it('answers a denial as an AdmissionReview with the field in the status causes', async () => {
    const res = await post('/validate', JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request }));
    expect(res.status).toBe(200);
    const review = (await res.json()) as { response: { uid: string; allowed: boolean; status: { code: number; details: { causes: { field: string }[] } } } };
    expect(review.response).toMatchObject({ uid: 'u1', allowed: false, status: { code: 422 } });
    expect(review.response.status.details.causes[0]?.field).toBe('spec.ttl');
  });

  it('answers a review nested past the limit with 400 json_too_deep, and one over 4 MiB with 413', async () => {
    const deep = await post('/validate', JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: { ...request, object: 0 } }).replace('"object":0', `"object":${'['.repeat(100_000)}`));
    expect(deep.status).toBe(400);
    expect(((await deep.json()) as { error: { code: string; message: string } }).error).toMatchObject({ code: 'json_too_deep', message: expect.stringMatching(/more than 100 deep/) as unknown });
    const big = await post('/validate', JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: { ...request, object: { data: 'x'.repeat(4 * 1024 * 1024) } } }));
    expect(big.status).toBe(413);
  });

  it('answers 400 with a reason for a body that is not an AdmissionReview', async () => {
    const res = await post('/validate', JSON.stringify({ kind: 'Pod' }));
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { code: string; message: string } }).error.message).toMatch(/expected an admission.k8s.io\/v1 AdmissionReview/);
    expect((await post('/validate', '{not json')).status).toBe(400);
  });
});
