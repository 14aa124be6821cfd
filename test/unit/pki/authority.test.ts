import { X509Certificate } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { CertificateAuthority } from '../../../src/pki/authority.js';

describe('CertificateAuthority', () => {
  it('issues client certificates that name the user as CN and each group as O', async () => {
    const ca = await CertificateAuthority.create('test-ca');
    const pair = await ca.issueClient('alice@example.com', ['approvers', 'team:payments,eu']);
    const cert = new X509Certificate(pair.certPem);
    const caCert = new X509Certificate(ca.certPem);
    expect(cert.subject.split('\n')).toEqual(['CN=alice@example.com', 'O=approvers', 'O=team:payments\\,eu']);
    expect(cert.checkIssued(caCert)).toBe(true);
    expect(cert.verify(caCert.publicKey)).toBe(true);
    expect(cert.keyUsage).toEqual(['1.3.6.1.5.5.7.3.2']);
    expect(cert.ca).toBe(false);
  });

  it('issues serving certificates for the names and addresses asked for', async () => {
    const ca = await CertificateAuthority.create('test-ca');
    const cert = new X509Certificate((await ca.issueServing('webhook', { dnsNames: ['svc.ns.svc'], ips: ['127.0.0.1'] })).certPem);
    expect(cert.subjectAltName).toBe('DNS:svc.ns.svc, IP Address:127.0.0.1');
    expect(cert.checkHost('svc.ns.svc')).toBe('svc.ns.svc');
    expect(cert.checkIP('127.0.0.1')).toBe('127.0.0.1');
    expect(cert.checkHost('other.example')).toBeUndefined();
  });

  it('signs with a CA loaded back from PEM', async () => {
    const original = await CertificateAuthority.create('test-ca');
    const loaded = await CertificateAuthority.load({ certPem: original.certPem, keyPem: original.keyPem });
    const cert = new X509Certificate((await loaded.issueClient('bob')).certPem);
    expect(cert.verify(new X509Certificate(original.certPem).publicKey)).toBe(true);
  });
});
