import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../../src/log.js';
import { CertificateAuthority } from '../../../src/pki/authority.js';
import { serveHttps, type RunningServer } from '../../../src/server/https.js';
import { chainsTo, readServingFiles, watchServingFiles, type ServingFilePaths } from '../../../src/server/serving-files.js';

let dir: string;
let files: Required<ServingFilePaths>;
let server: RunningServer | undefined;
let stopWatching: (() => void) | undefined;
let logLines: string[];

const log = () => createLogger({ level: 'info' }, { write: (line: string) => void logLines.push(line) });
const logged = () => logLines.map((l) => JSON.parse(l) as { msg: string; level: number });

async function write(ca: CertificateAuthority, pair: { certPem: string; keyPem: string }, only?: 'cert' | 'key'): Promise<void> {
  if (only !== 'key') await writeFile(files.certFile, pair.certPem);
  if (only !== 'cert') await writeFile(files.keyFile, pair.keyPem, { mode: 0o600 });
  await writeFile(files.caFile, ca.certPem);
}

const issue = (ca: CertificateAuthority) => ca.issueServing('chainwarden', { dnsNames: ['localhost'], ips: ['127.0.0.1'] });

/** The serial number of the certificate a new connection is served, checked against `caPem`. */
function servedSerial(caPem: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port: server?.port ?? 0, ca: caPem, servername: 'localhost' }, () => {
      resolve(socket.getPeerX509Certificate()?.serialNumber ?? '');
      socket.end();
    });
    socket.on('error', reject);
  });
}

const serialOf = (pem: string) => new X509Certificate(pem).serialNumber;

async function until(check: () => Promise<boolean>): Promise<void> {
  const end = Date.now() + 5_000;
  while (!(await check())) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'chainwarden-test-serving-'));
  files = { certFile: path.join(dir, 'tls.crt'), keyFile: path.join(dir, 'tls.key'), caFile: path.join(dir, 'ca.crt') };
  logLines = [];
});
afterEach(async () => {
  stopWatching?.();
  await server?.close();
  server = undefined;
  await rm(dir, { recursive: true, force: true });
});

async function serve(): Promise<void> {
  const material = await readServingFiles(files);
  server = await serveHttps({}, material, { host: '127.0.0.1', port: 0 }, log());
  stopWatching = watchServingFiles(files, material, 25, (next) => server?.reload(next), log());
}

describe('serving certificate files', () => {
  it('serves a renewed certificate to new connections without a restart', async () => {
    const ca = await CertificateAuthority.create('serving-ca');
    const first = await issue(ca);
    await write(ca, first);
    await serve();
    expect(await servedSerial(ca.certPem)).toBe(serialOf(first.certPem));

    const renewed = await issue(ca);
    await write(ca, renewed);
    await until(async () => (await servedSerial(ca.certPem)) === serialOf(renewed.certPem));
    expect(logged().some((l) => l.msg === 'serving certificate reloaded')).toBe(true);
  });

  it('keeps serving the last good certificate while the files do not make a pair, then takes the new one', async () => {
    const ca = await CertificateAuthority.create('serving-ca');
    const first = await issue(ca);
    await write(ca, first);
    await serve();

    // The certificate replaced, its key not yet: a pair that does not match is not served.
    const renewed = await issue(ca);
    await write(ca, renewed, 'cert');
    await until(() => Promise.resolve(logged().some((l) => l.msg.startsWith('serving certificate files unusable'))));
    await new Promise((r) => setTimeout(r, 100));
    expect(await servedSerial(ca.certPem)).toBe(serialOf(first.certPem));
    // Said once while it lasts, not at every read (twice at most, should a read catch a file half written).
    expect(logged().filter((l) => l.msg.startsWith('serving certificate files unusable')).length).toBeLessThanOrEqual(2);

    await write(ca, renewed, 'key');
    await until(async () => (await servedSerial(ca.certPem)) === serialOf(renewed.certPem));
  });

  it('warns that injected sidecars are cut off when the CA changes without keeping the old one', async () => {
    const ca = await CertificateAuthority.create('serving-ca');
    await write(ca, await issue(ca));
    await serve();
    const other = await CertificateAuthority.create('another-ca');
    await write(other, await issue(other));
    await until(async () => (await servedSerial(other.certPem).catch(() => '')) !== '');
    expect(logged().find((l) => l.msg.startsWith('the serving CA changed'))?.level).toBe(40);
  });

  it('does not warn when the new CA file still holds the old CA beside the new one', async () => {
    const ca = await CertificateAuthority.create('serving-ca');
    await write(ca, await issue(ca));
    await serve();
    const next = await CertificateAuthority.create('next-ca');
    const pair = await issue(next);
    await writeFile(files.certFile, pair.certPem);
    await writeFile(files.keyFile, pair.keyPem);
    await writeFile(files.caFile, `${next.certPem}\n${ca.certPem}`);
    await until(async () => (await servedSerial(next.certPem).catch(() => '')) !== '');
    await until(() => Promise.resolve(logged().some((l) => l.msg === 'serving certificate reloaded')));
    expect(logged().some((l) => l.msg.startsWith('the serving CA changed'))).toBe(false);
  });

  it('does not serve a certificate the CA file does not vouch for: files of two generations, read mid-update', async () => {
    const ca = await CertificateAuthority.create('serving-ca');
    const first = await issue(ca);
    await write(ca, first);
    await serve();
    const other = await CertificateAuthority.create('other-ca');
    const stray = await issue(other);
    await writeFile(files.certFile, stray.certPem);
    await writeFile(files.keyFile, stray.keyPem);
    await until(() => Promise.resolve(logged().some((l) => l.msg.startsWith('serving certificate files unusable'))));
    expect(await servedSerial(ca.certPem)).toBe(serialOf(first.certPem));
    expect(chainsTo(stray.certPem, ca.certPem)).toBe(false);
    expect(chainsTo(stray.certPem, `${ca.certPem}\n${other.certPem}`)).toBe(true);
  });

  it('keeps serving while a file is caught empty, between its truncation and its write', async () => {
    const ca = await CertificateAuthority.create('serving-ca');
    const first = await issue(ca);
    await write(ca, first);
    await serve();
    await writeFile(files.keyFile, '');
    await until(() => Promise.resolve(logged().some((l) => l.msg.startsWith('serving certificate files unusable'))));
    expect(await servedSerial(ca.certPem)).toBe(serialOf(first.certPem));
    await writeFile(files.keyFile, first.keyPem);
    await writeFile(files.certFile, '');
    await new Promise((r) => setTimeout(r, 100));
    expect(await servedSerial(ca.certPem)).toBe(serialOf(first.certPem));
  });

  it('refuses at start a key that is not the certificate\'s, naming both files', async () => {
    const ca = await CertificateAuthority.create('serving-ca');
    const one = await issue(ca);
    const two = await issue(ca);
    await writeFile(files.certFile, one.certPem);
    await writeFile(files.keyFile, two.keyPem);
    await writeFile(files.caFile, ca.certPem);
    await expect(readServingFiles(files)).rejects.toThrow(`${files.certFile} and ${files.keyFile} are not a certificate and its key`);
    await writeFile(files.keyFile, '');
    await expect(readServingFiles(files)).rejects.toThrow(`${files.keyFile} holds no private key`);
    await writeFile(files.certFile, '');
    await expect(readServingFiles(files)).rejects.toThrow(`${files.certFile} holds no certificate`);
    await writeFile(files.certFile, one.certPem);
    await writeFile(files.keyFile, one.keyPem);
    await writeFile(files.caFile, 'not a certificate');
    await expect(readServingFiles(files)).rejects.toThrow(`${files.caFile} holds no certificate`);
  });
});
