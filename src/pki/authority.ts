import 'reflect-metadata';
import { randomBytes, webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

x509.cryptoProvider.set(globalThis.crypto);

const EC = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY_MS = 24 * 60 * 60 * 1000;

/** A certificate and its private key, both PEM. */
export interface KeyPairPem {
  certPem: string;
  keyPem: string;
}

export interface ServingNames {
  dnsNames?: readonly string[];
  ips?: readonly string[];
}

async function generateKeys(): Promise<CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify']));
}

async function privateKeyPem(key: CryptoKey): Promise<string> {
  const der = await webcrypto.subtle.exportKey('pkcs8', key);
  return x509.PemConverter.encode(der, 'PRIVATE KEY');
}

function serialNumber(): string {
  // Positive, 128 bits: the high bit is cleared so DER does not read it as negative.
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] ?? 0) & 0x7f;
  return bytes.toString('hex');
}

function validity(days: number): { notBefore: Date; notAfter: Date } {
  // Back-date a little so a peer whose clock lags by seconds still accepts a fresh certificate.
  const now = Date.now();
  return { notBefore: new Date(now - 60_000), notAfter: new Date(now + days * DAY_MS) };
}

/** One subject RDN per value, so group names need no escaping. */
function subjectName(commonName: string, organizations: readonly string[] = []): x509.Name {
  return new x509.Name([{ CN: [commonName] }, ...organizations.map((o) => ({ O: [o] }))]);
}

/** Generates a P-256 key for signing tokens; returns the private and the public key as PEM. */
export async function generateSigningKeyPem(): Promise<{ privateKeyPem: string; publicKeyPem: string }> {
  const keys = await generateKeys();
  const spki = await webcrypto.subtle.exportKey('spki', keys.publicKey);
  return { privateKeyPem: await privateKeyPem(keys.privateKey), publicKeyPem: x509.PemConverter.encode(spki, 'PUBLIC KEY') };
}

/**
 * A small ECDSA certificate authority: the local control plane's cluster CA, and the
 * development CA of the webhook and broker servers. Client certificates carry the Kubernetes
 * user as CN and its groups as O, which is how the API server reads them.
 */
export class CertificateAuthority {
  private constructor(
    private readonly cert: x509.X509Certificate,
    private readonly key: CryptoKey,
    readonly keyPem: string,
  ) {}

  get certPem(): string {
    return this.cert.toString('pem');
  }

  static async create(commonName: string, days = 365): Promise<CertificateAuthority> {
    const keys = await generateKeys();
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: serialNumber(),
      name: subjectName(commonName),
      ...validity(days),
      signingAlgorithm: EC,
      keys,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    return new CertificateAuthority(cert, keys.privateKey, await privateKeyPem(keys.privateKey));
  }

  static async load(pair: KeyPairPem): Promise<CertificateAuthority> {
    const cert = new x509.X509Certificate(pair.certPem);
    const der = x509.PemConverter.decodeFirst(pair.keyPem);
    const key = await webcrypto.subtle.importKey('pkcs8', der, EC, true, ['sign']);
    return new CertificateAuthority(cert, key, pair.keyPem);
  }

  private async issue(subject: x509.Name, extensions: x509.Extension[], days: number): Promise<KeyPairPem> {
    const keys = await generateKeys();
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serialNumber(),
      subject,
      issuer: this.cert.subjectName,
      ...validity(days),
      signingAlgorithm: EC,
      publicKey: keys.publicKey,
      signingKey: this.key,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        await x509.AuthorityKeyIdentifierExtension.create(this.cert),
        ...extensions,
      ],
    });
    return { certPem: cert.toString('pem'), keyPem: await privateKeyPem(keys.privateKey) };
  }

  /** A TLS server certificate for the given DNS names and IP addresses. */
  async issueServing(commonName: string, names: ServingNames, days = 365): Promise<KeyPairPem> {
    const alternatives: x509.JsonGeneralName[] = [
      ...(names.dnsNames ?? []).map((value) => ({ type: 'dns' as const, value })),
      ...(names.ips ?? []).map((value) => ({ type: 'ip' as const, value })),
    ];
    return this.issue(
      subjectName(commonName),
      [
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
        new x509.SubjectAlternativeNameExtension(alternatives),
      ],
      days,
    );
  }

  /** A client certificate that authenticates as `user` in `groups`. */
  async issueClient(user: string, groups: readonly string[] = [], days = 365): Promise<KeyPairPem> {
    return this.issue(
      subjectName(user, groups),
      [
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
      ],
      days,
    );
  }
}
