import https from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KubeConfig } from '@kubernetes/client-node';
import { CertificateAuthority } from '../../../src/pki/authority.js';
import { applyStatus } from '../../../src/runtime/apply.js';
import { kubeConfigFor } from '../../builders/kubeconfig.js';

/** An API server that answers every status apply with the scripted failure. */
let answer = { code: 500, message: '' };
let server: https.Server;
let kc: KubeConfig;

beforeAll(async () => {
  const ca = await CertificateAuthority.create('test');
  const pair = await ca.issueServing('localhost', { ips: ['127.0.0.1'] });
  server = https.createServer({ cert: pair.certPem, key: pair.keyPem }, (req, res) => {
    req.resume();
    res.writeHead(answer.code, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ kind: 'Status', apiVersion: 'v1', status: 'Failure', message: answer.message, code: answer.code }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  kc = kubeConfigFor(server, ca.certPem);
});
afterAll(() => server.close());

const ref = { apiVersion: 'chainwarden.io/v1alpha1', kind: 'AgentTask', namespace: 'ns', name: 't', path: '/apis/chainwarden.io/v1alpha1/namespaces/ns/agenttasks/t' };

describe('a status write the API server answers with an error', () => {
  it('is a refusal, given up on rather than retried forever, when etcd finds the object too large (the API server says so with a 500)', async () => {
    answer = { code: 500, message: 'etcdserver: request is too large' };
    await expect(applyStatus(kc, ref, 'journal', { x: 1 })).rejects.toMatchObject({ code: 'api_refused', message: expect.stringContaining('request is too large') as string });
  });

  it('is an error to retry when the 500 is anything else', async () => {
    answer = { code: 500, message: 'Internal error occurred: etcdserver: leader changed' };
    await expect(applyStatus(kc, ref, 'journal', { x: 1 })).rejects.toMatchObject({ code: 'api_error' });
  });
});
