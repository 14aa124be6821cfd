import { mkdtemp, mkdir, writeFile } from 'node:fs/promises';
import type https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { describe, expect, it, vi } from 'vitest';
import { lightAccess, loadKubeAccess, type KubeAccess } from '../../../src/kube/access.js';

const PEM = (what: string) => `-----BEGIN ${what}-----\n${Buffer.from(`${what} bytes`).toString('base64')}\n-----END ${what}-----\n`;
const b64 = (text: string) => Buffer.from(text).toString('base64');

async function dir(): Promise<string> {
  return mkdtemp(path.join(os.tmpdir(), 'cw-access-'));
}

async function kubeconfig(at: string, cluster: Record<string, unknown>, user: Record<string, unknown>): Promise<string> {
  const file = path.join(at, 'config');
  await writeFile(
    file,
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'other', cluster: { server: 'https://wrong.example:6443' } }, { name: 'c', cluster }],
      users: [{ name: 'u', user }],
      contexts: [{ name: 'ctx', context: { cluster: 'c', user: 'u' } }],
      'current-context': 'ctx',
    }),
  );
  return file;
}

/** What a request to the API server would carry. */
async function applied(access: KubeAccess) {
  const options: https.RequestOptions = {};
  await access.applyToHTTPSOptions(options);
  const text = (v: unknown) => (v === undefined ? undefined : Buffer.isBuffer(v) ? v.toString() : typeof v === 'string' ? v : JSON.stringify(v));
  const headers = (options.headers ?? {}) as Record<string, string>;
  return { server: access.getCurrentCluster()?.server, ca: text(options.ca), cert: text(options.cert), key: text(options.key), rejectUnauthorized: options.rejectUnauthorized, authorization: headers.Authorization ?? headers.authorization };
}

async function clientNode(file: string) {
  const kc = new KubeConfig();
  kc.loadFromFile(file);
  return applied(kc);
}

describe('the operator reads its kubeconfig as client-node would', () => {
  it('client certificates and CAs inline and as files (relative to the kubeconfig or absolute), tokens, skipping TLS verification', async () => {
    const at = await dir();
    await mkdir(path.join(at, 'pki'));
    await writeFile(path.join(at, 'pki', 'ca.crt'), PEM('CA'));
    await writeFile(path.join(at, 'pki', 'client.crt'), PEM('CERT'));
    await writeFile(path.join(at, 'pki', 'client.key'), PEM('KEY'));
    const forms: [Record<string, unknown>, Record<string, unknown>][] = [
      [{ server: 'https://10.0.0.1:6443', 'certificate-authority-data': b64(PEM('CA')) }, { 'client-certificate-data': b64(PEM('CERT')), 'client-key-data': b64(PEM('KEY')) }],
      [{ server: 'https://10.0.0.1:6443', 'certificate-authority': 'pki/ca.crt' }, { 'client-certificate': 'pki/client.crt', 'client-key': 'pki/client.key' }],
      [{ server: 'https://api.example:443', 'certificate-authority-data': b64(PEM('CA')) }, { token: 'abc.def' }],
      [{ server: 'https://api.example:443', 'certificate-authority': path.join(at, 'pki', 'ca.crt') }, { token: 'abs-ca' }],
      [{ server: 'https://api.example:443', 'insecure-skip-tls-verify': true }, { token: 't' }],
    ];
    for (const [cluster, user] of forms) {
      const file = await kubeconfig(at, cluster, user);
      const light = lightAccess({ file });
      // Read here, not handed to client-node: that is the point of the light loader.
      expect(light, JSON.stringify({ cluster, user })).toBeDefined();
      expect(await applied(light as KubeAccess), JSON.stringify({ cluster, user })).toEqual(await clientNode(file));
    }
  });

  it('hands client-node what only it supports: exec plugins, auth providers, proxies, several files in $KUBECONFIG', async () => {
    const at = await dir();
    const exec = await kubeconfig(at, { server: 'https://10.0.0.1:6443' }, { exec: { apiVersion: 'client.authentication.k8s.io/v1', command: 'aws', args: ['eks', 'get-token'] } });
    expect(lightAccess({ file: exec })).toBeUndefined();
    expect(lightAccess({ file: await kubeconfig(at, { server: 'https://10.0.0.1:6443' }, { tokenFile: '/var/run/token' }) })).toBeUndefined();
    expect(await loadKubeAccess({ file: exec })).toBeInstanceOf(KubeConfig);
    const proxied = await kubeconfig(await dir(), { server: 'https://10.0.0.1:6443', 'proxy-url': 'http://proxy:3128' }, { token: 't' });
    expect(lightAccess({ file: proxied })).toBeUndefined();
    expect(lightAccess({ env: { KUBECONFIG: [proxied, exec].join(path.delimiter) } })).toBeUndefined();
  });

  it('in a pod: the service account, its CA, and its token read again once the kubelet has rotated it', async () => {
    const sa = await dir();
    await writeFile(path.join(sa, 'ca.crt'), PEM('CA'));
    await writeFile(path.join(sa, 'token'), 'first');
    const home = await dir();
    const access = lightAccess({ env: { KUBERNETES_SERVICE_HOST: 'fd00::1', KUBERNETES_SERVICE_PORT: '443' }, home, serviceAccountDir: sa }) as KubeAccess;
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      expect(await applied(access)).toMatchObject({ server: 'https://[fd00::1]:443', ca: PEM('CA'), authorization: 'Bearer first' });
      await writeFile(path.join(sa, 'token'), 'second\n');
      expect((await applied(access)).authorization).toBe('Bearer first');
      vi.setSystemTime(Date.now() + 61_000);
      expect((await applied(access)).authorization).toBe('Bearer second');
    } finally {
      vi.useRealTimers();
    }
    // Without the service's address the pod cannot reach the API server: say so, naming the fix.
    expect(() => lightAccess({ env: {}, home, serviceAccountDir: sa })).toThrow(/KUBERNETES_SERVICE_HOST.*--kubeconfig/);
  });

  it('says which part of a kubeconfig is missing', async () => {
    const at = await dir();
    const file = path.join(at, 'config');
    await writeFile(file, 'apiVersion: v1\nkind: Config\ncontexts: []\n');
    expect(() => lightAccess({ file })).toThrow(/sets no current-context.*kubectl config use-context/);
    await writeFile(file, 'apiVersion: v1\nkind: Config\ncurrent-context: gone\ncontexts: []\n');
    expect(() => lightAccess({ file })).toThrow(/no context named "gone"/);
    expect(() => lightAccess({ file: path.join(at, 'absent') })).toThrow(/cannot read the kubeconfig/);
  });
});
