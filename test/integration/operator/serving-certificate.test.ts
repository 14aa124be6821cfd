import { X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { KubeConfig } from '@kubernetes/client-node';
import { describe, expect, test } from '../../env/fixtures.js';
import { createLogger } from '../../../src/log.js';
import { startOperator } from '../../../src/operator/operator.js';
import { CertificateAuthority } from '../../../src/pki/authority.js';

/** The serial of the certificate a new connection to `url` is served, trusting `caPem`. */
function servedSerial(url: string, caPem: string): Promise<string> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: hostname, port: Number(port), ca: caPem, servername: 'localhost' }, () => {
      resolve(socket.getPeerX509Certificate()?.serialNumber ?? '');
      socket.end();
    });
    socket.on('error', reject);
  });
}

describe('the serving certificate', () => {
  test('a renewed certificate under a new CA is served by the broker and the webhook listener without a restart, and /metrics says when it expires', async ({ env, namespace }) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'chainwarden-test-serving-'));
    const files = { certFile: path.join(dir, 'tls.crt'), keyFile: path.join(dir, 'tls.key'), caFile: path.join(dir, 'ca.crt') };
    const issue = (ca: CertificateAuthority, days: number) => ca.issueServing('chainwarden', { dnsNames: ['localhost'], ips: ['127.0.0.1'] }, days);
    const firstCa = await CertificateAuthority.create('serving-ca-1');
    const first = await issue(firstCa, 30);
    await Promise.all([writeFile(files.certFile, first.certPem), writeFile(files.keyFile, first.keyPem, { mode: 0o600 }), writeFile(files.caFile, firstCa.certPem)]);

    const kc = new KubeConfig();
    kc.loadFromString(await readFile(env.kubeconfig, 'utf8'));
    const operator = await startOperator({ kc, log: createLogger({ level: 'silent' }), namespace, watchNamespace: namespace, controllers: false, tls: files, tlsReloadIntervalMs: 200 });
    try {
      const expiry = () => /chainwarden_serving_certificate_expiry_timestamp_seconds (\d+)/.exec(operator.metrics.render())?.[1];
      const notAfter = (pem: string) => String(Math.floor(Date.parse(new X509Certificate(pem).validTo) / 1000));
      expect(await servedSerial(operator.url, firstCa.certPem)).toBe(new X509Certificate(first.certPem).serialNumber);
      expect(expiry()).toBe(notAfter(first.certPem));

      // The CA rotated, the file holding the new CA and the old one while pods roll.
      const nextCa = await CertificateAuthority.create('serving-ca-2');
      const renewed = await issue(nextCa, 60);
      await Promise.all([writeFile(files.certFile, renewed.certPem), writeFile(files.keyFile, renewed.keyPem), writeFile(files.caFile, `${nextCa.certPem.trim()}\n${firstCa.certPem}`)]);
      const serial = new X509Certificate(renewed.certPem).serialNumber;
      await expect.poll(() => servedSerial(operator.url, nextCa.certPem).catch(() => ''), { timeout: 10_000 }).toBe(serial);
      expect(await servedSerial(operator.webhookUrl, nextCa.certPem)).toBe(serial);
      expect(expiry()).toBe(notAfter(renewed.certPem));
      // What the operator hands pods and devenv is the CA file as it is now.
      expect(operator.caPem).toBe(`${nextCa.certPem.trim()}\n${firstCa.certPem}`);
    } finally {
      await operator.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
