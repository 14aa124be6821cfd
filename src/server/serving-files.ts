import { readFile } from 'node:fs/promises';
import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import tls from 'node:tls';
import type { Logger } from '../log.js';
import type { TlsMaterial } from './https.js';

/** The serving certificate's files, as the Secret mounted in the operator's pod holds them. */
export interface ServingFilePaths {
  certFile: string;
  keyFile: string;
  /** The CA agents' sidecars and the API server trust; the certificate itself when absent. */
  caFile?: string;
}

export interface ServingMaterial extends TlsMaterial {
  caPem: string;
}

/** When the certificate stops being valid, in seconds since the epoch. */
export function notAfterSeconds(certPem: string): number {
  return Math.floor(Date.parse(new X509Certificate(certPem).validTo) / 1000);
}

/**
 * Reads the three files and checks that they make a usable pair: a key that is not the
 * certificate's (one file replaced before the other) or a certificate that does not parse is an
 * error naming the file, and the caller keeps what it serves.
 */
export async function readServingFiles(paths: ServingFilePaths): Promise<ServingMaterial> {
  const [certPem, keyPem, caPem] = await Promise.all([readFile(paths.certFile, 'utf8'), readFile(paths.keyFile, 'utf8'), paths.caFile ? readFile(paths.caFile, 'utf8') : undefined]);
  // An empty file (one caught between truncation and write) would pass createSecureContext, which
  // skips an empty cert or key, and the server would then fail every handshake: each must parse.
  let cert: X509Certificate;
  let key: KeyObject;
  try {
    cert = new X509Certificate(certPem);
  } catch (err) {
    throw new Error(`${paths.certFile} holds no certificate (${err instanceof Error ? err.message : String(err)})`);
  }
  try {
    key = createPrivateKey(keyPem);
  } catch (err) {
    throw new Error(`${paths.keyFile} holds no private key (${err instanceof Error ? err.message : String(err)})`);
  }
  try {
    if (!cert.checkPrivateKey(key)) throw new Error('the key does not match the certificate');
    tls.createSecureContext({ cert: certPem, key: keyPem });
  } catch (err) {
    throw new Error(`${paths.certFile} and ${paths.keyFile} are not a certificate and its key (${err instanceof Error ? err.message : String(err)})`);
  }
  if (caPem !== undefined) {
    try {
      // The file may hold several CAs (a new one beside the old, while pods roll).
      tls.createSecureContext({ ca: caPem });
      new X509Certificate(caPem);
    } catch (err) {
      throw new Error(`${paths.caFile ?? ''} holds no certificate (${err instanceof Error ? err.message : String(err)})`);
    }
  }
  return { certPem, keyPem, caPem: caPem ?? certPem };
}

const PEM_BLOCK = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g;
const certificates = (pem: string): X509Certificate[] => (pem.match(PEM_BLOCK) ?? []).map((block) => new X509Certificate(block));

/**
 * Whether the certificate (with the intermediates its file holds) was issued under one of the
 * CAs in `caPem`: what a sidecar given that CA file will accept.
 */
export function chainsTo(certPem: string, caPem: string): boolean {
  const [leaf, ...intermediates] = certificates(certPem);
  const anchors = certificates(caPem);
  if (!leaf) return false;
  let cert = leaf;
  for (let depth = 0; depth < 5; depth++) {
    const issuedBy = (c: X509Certificate) => cert.checkIssued(c) && cert.verify(c.publicKey);
    if (anchors.some((a) => a.fingerprint256 === cert.fingerprint256 || issuedBy(a))) return true;
    const next = intermediates.find(issuedBy);
    if (!next || next === cert) return false;
    cert = next;
  }
  return false;
}

/**
 * Reads the serving files again every `everyMs` and hands a changed, usable set to `apply`.
 * cert-manager renews a certificate well before it expires and the kubelet updates the mounted
 * Secret's files in place; an operator that read them once would go on serving the old
 * certificate until it expired, and every webhook call and sidecar would then fail. A set that
 * does not yet make a pair (the files caught mid-update) is logged and tried again next time,
 * while the last good one is served.
 */
export function watchServingFiles(paths: ServingFilePaths, initial: ServingMaterial, everyMs: number, apply: (material: ServingMaterial) => void, log: Logger): () => void {
  let served = initial;
  let failing = '';
  // Files read while the kubelet swaps them may be of two generations: a certificate the CA file
  // does not vouch for is taken as caught mid-update, unless the first ones did not chain either.
  const mustChain = chainsTo(initial.certPem, initial.caPem);
  let busy = false;
  const check = async () => {
    if (busy) return;
    busy = true;
    try {
      const read = await readServingFiles(paths);
      if (mustChain && !chainsTo(read.certPem, read.caPem)) throw new Error(`${paths.certFile} was not issued under the CAs in ${paths.caFile ?? paths.certFile}`);
      failing = '';
      if (read.certPem === served.certPem && read.keyPem === served.keyPem && read.caPem === served.caPem) return;
      apply(read);
      const caDropped = !read.caPem.includes(served.caPem.trim());
      served = read;
      log.info({ certFile: paths.certFile, notAfter: new Date(notAfterSeconds(read.certPem) * 1000).toISOString() }, 'serving certificate reloaded');
      // Sidecars carry the CA they were injected with: a CA that no longer includes it cuts them off the broker.
      if (caDropped) log.warn({ caFile: paths.caFile ?? paths.certFile }, 'the serving CA changed and no longer includes the previous one: sidecars injected before trust only that one and cannot reach the broker until their pods are created again; rotate the leaf under a lasting CA, or serve both CAs while pods roll');
    } catch (err) {
      const why = err instanceof Error ? err.message : String(err);
      // Once per failure, not every few seconds while it lasts.
      if (why !== failing) log.warn({ reason: why }, 'serving certificate files unusable; still serving the last good certificate');
      failing = why;
    } finally {
      busy = false;
    }
  };
  const timer = setInterval(() => void check(), everyMs);
  timer.unref();
  return () => clearInterval(timer);
}
