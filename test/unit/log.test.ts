import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { STSServiceException } from '@aws-sdk/client-sts';
import { afterEach, describe, expect, it } from 'vitest';
import { startAgentProxy } from '../../src/agent/proxy.js';
import type { AgentPolicy, AgentTask, AgentTaskStatus } from '../../src/api/schema.js';
import type { AgentPrincipal } from '../../src/broker/auth.js';
import { TaskJournal } from '../../src/audit/journal.js';
import { GENESIS, linkRecords } from '../../src/audit/record.js';
import { readAuditRecords, verifyChains } from '../../src/audit/verify.js';
import { CredentialBroker } from '../../src/credentials/broker.js';
import { AwsStsPort } from '../../src/credentials/sts.js';
import { InMemoryKeyStore, KeyRing } from '../../src/identity/keyring.js';
import { SvidIssuer } from '../../src/identity/svid.js';
import { createLogger, redactSecrets, scrubSecrets, SECRET_FIELDS } from '../../src/log.js';
import { CertificateAuthority } from '../../src/pki/authority.js';
import { serveHttps } from '../../src/server/https.js';

/** A logger whose every line is kept, as an operator's log collector would keep it. */
function capturedLogger(name: string) {
  const lines: string[] = [];
  const log = createLogger({ level: 'trace', name }, { write: (line: string) => void lines.push(line) });
  return { log, text: () => lines.join('') };
}

/** Random secrets shaped like the real ones, so pattern-based scrubbing gets no help from the test. */
const awsSecretKey = () => {
  let key = '';
  while (!/\d/.test(key) || !/[a-z]/.test(key) || !/[A-Z]/.test(key)) key = randomBytes(30).toString('base64');
  return key;
};
const sessionToken = () => randomBytes(300).toString('base64');

const now = Date.parse('2026-11-21T10:00:00Z');
const clock = { now: () => now };
const task: AgentTask = {
  apiVersion: 'chainwarden.io/v1alpha1',
  kind: 'AgentTask',
  metadata: { name: 't', namespace: 'ns', uid: '6f1c0d8e-0000-0000-0000-000000000001', creationTimestamp: new Date(now - 60_000).toISOString(), generation: 1 },
  spec: { serviceAccountName: 'sa', policyRef: { name: 'p' }, ttl: '30m', credentials: [{ name: 'default', aws: { roleArn: 'arn:aws:iam::123456789012:role/agent', webIdentity: true } }] },
  status: { state: 'Bound', spiffeID: 'spiffe://cluster.local/ns/ns/sa/sa/task/t' },
};
const policy: AgentPolicy = { apiVersion: 'chainwarden.io/v1alpha1', kind: 'AgentPolicy', metadata: { name: 'p' }, spec: { aws: { allowedRoleArns: ['arn:aws:iam::123456789012:role/*'], maxDuration: '1h' } } };
const who: AgentPrincipal = { namespace: 'ns', podName: 'pod', podUid: 'u', serviceAccount: 'sa', task, spiffeId: task.status?.spiffeID ?? '' };

const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const close of closers.splice(0)) await close();
});

async function listen(server: http.Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  closers.push(() => new Promise((resolve) => server.close(() => resolve())));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function issuer() {
  const ring = new KeyRing(new InMemoryKeyStore(), clock);
  await ring.refresh();
  return new SvidIssuer(ring, 'https://issuer', clock);
}

describe('audit records in the log', () => {
  it('are logged as recorded, so the log verifies as the audit file does, whatever names their fields have', () => {
    const { log, text } = capturedLogger('operator');
    // As an earlier version recorded them, and as a record's free-form fields may name things.
    const records = linkRecords({ key: 'ns/t', uid: task.metadata.uid ?? '' }, GENESIS, 0, [
      { type: 'hop_decided', at: new Date(now).toISOString(), data: { hopId: 'h1_x', attributes: { token: 'kept-as-recorded', user: 'alice' }, decision: 'allow' } },
      { type: 'approval', at: new Date(now).toISOString(), data: { hopId: 'h1_x', reason: 'ok', password: 'also-recorded' } },
    ]);
    for (const record of records) log.info({ audit: record }, 'audit');
    log.info({ other: { token: 'not-an-audit-record' } }, 'something else');
    const { chains, breaks } = verifyChains(readAuditRecords(text()));
    expect(breaks).toEqual([]);
    expect(chains).toMatchObject([{ task: 'ns/t', count: 2, head: records[1]?.hash }]);
    expect(text()).not.toContain('not-an-audit-record');
  });
});

describe('secrets never reach the log', () => {
  it('redacts every secret field name at any depth, and leaves the caller\'s object alone', () => {
    const { log, text } = capturedLogger('t');
    const values: string[] = [];
    const secretsUnder = () => Object.fromEntries(SECRET_FIELDS.map((name) => [name, values[values.push(`s3cr3t-${randomBytes(8).toString('hex')}`) - 1]]));
    const logged = { ...secretsUnder(), a: secretsUnder(), b: { c: secretsUnder(), d: [{ e: { f: secretsUnder() } }] }, req: { headers: { authorization: 'Bearer abc.def' } } };
    const before = JSON.stringify(logged);
    log.info(logged, 'everything');
    for (const value of values) expect(text()).not.toContain(value);
    expect(text()).not.toContain('abc.def');
    expect(JSON.stringify(logged)).toBe(before);
    expect(redactSecrets({ accessKeyId: 'ASIA1', expiration: 'x' })).toEqual({ accessKeyId: 'ASIA1', expiration: 'x' });
  });

  it('an STS error that quotes the web identity token and a secret key: nothing of either in the log', async () => {
    const leaked = awsSecretKey();
    const sent: string[] = [];
    // An STS endpoint whose error quotes the request, as a misbehaving proxy or emulator might.
    const sts = http.createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        const token = new URLSearchParams(body).get('WebIdentityToken') ?? '';
        sent.push(token);
        res.writeHead(400, { 'content-type': 'text/xml' });
        res.end(`<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>WebIdentityToken ${token} rejected; cached SecretAccessKey=${leaked}</Message></Error><RequestId>r-1</RequestId></ErrorResponse>`);
      });
    });
    const endpoint = await listen(sts);
    const { log, text } = capturedLogger('operator');
    // The API server refuses the status write and echoes the value it refused, as its 422s do.
    const status = {
      update: (_ns: string, _name: string, edit: (t: AgentTask) => AgentTaskStatus | undefined) =>
        Promise.reject(new Error(`AgentTask.chainwarden.io "t" is invalid: status: Invalid value: ${JSON.stringify(edit(structuredClone(task)))}`)),
    };
    const port = new AwsStsPort({ region: 'us-east-1', endpoint, credentials: { accessKeyId: 'AKIDBASE', secretAccessKey: awsSecretKey() }, maxAttempts: 1 });
    closers.push(() => Promise.resolve(port.destroy()));
    const journal = new TaskJournal({ writer: status, emit: () => undefined, log });
    const broker = new CredentialBroker({ sts: port, status, events: { recordEvent: () => Promise.resolve() }, issuer: await issuer(), policy: () => policy, clock, log, trustDomain: 'cluster.local', replica: 'r1', journal });

    await expect(broker.credentials(who, 'default')).rejects.toMatchObject({ message: expect.stringContaining('InvalidIdentityToken') as unknown });
    expect(sent[0]).toMatch(/^eyJ/);
    expect(text()).toContain('could not record the credential failure on the task');
    expect(text()).toContain('InvalidIdentityToken');
    expect(text()).not.toContain(sent[0] ?? 'unset');
    expect(text()).not.toContain(sent[0]?.split('.')[2] ?? 'unset');
    expect(text()).not.toContain(leaked);
  });

  it('an SDK exception with credentials in its message and $metadata, failing a broker request: nothing in the log', async () => {
    const secretKey = awsSecretKey();
    const token = sessionToken();
    const podToken = ((await issuer()).mint('spiffe://cluster.local/ns/ns/sa/sa', 'chainwarden')).token;
    const failure = new STSServiceException({ name: 'ExpiredTokenException', $fault: 'client', $metadata: { httpStatusCode: 400, requestId: 'r-2' }, message: `The security token ${token} expired; retry with {"SecretAccessKey":"${secretKey}"}` });
    // What an SDK or an HTTP client hangs on its errors: the request it sent and the answer it got.
    Object.assign(failure.$metadata, { credentials: { secretAccessKey: secretKey, sessionToken: token } });
    Object.assign(failure, { request: { headers: { Authorization: `Bearer ${podToken}`, 'X-Amz-Security-Token': token } }, body: `<Credentials><SessionToken>${token}</SessionToken></Credentials>` });

    const ca = await CertificateAuthority.create('test');
    const tls = await ca.issueServing('broker', { ips: ['127.0.0.1'] });
    const { log, text } = capturedLogger('operator');
    const server = await serveHttps({ '/v1/credentials': () => Promise.reject(failure) }, tls, { host: '127.0.0.1', port: 0 }, log);
    closers.push(() => server.close());

    // The agent's request goes through the real sidecar, which logs too.
    const dir = await mkdtemp(path.join(os.tmpdir(), 'log-test-'));
    await writeFile(path.join(dir, 'token'), podToken);
    const sidecarLog = capturedLogger('agent');
    const sidecar = await startAgentProxy({ brokerUrl: server.url, caPem: ca.certPem, tokenFile: path.join(dir, 'token'), localTokenFile: path.join(dir, 'local'), listen: { host: '127.0.0.1', port: 0 }, log: sidecarLog.log });
    closers.push(() => sidecar.close());
    const local = await readFile(path.join(dir, 'local'), 'utf8');
    expect((await fetch(`${sidecar.url}/v1/credentials`, { headers: { authorization: local } })).status).toBe(500);

    expect(text()).toContain('request failed');
    expect(text()).toContain('ExpiredTokenException');
    for (const secret of [secretKey, token, podToken, podToken.split('.')[2] ?? 'unset', local]) {
      expect(text()).not.toContain(secret);
      expect(sidecarLog.text()).not.toContain(secret);
    }
  });

  it('a refused token, at the sidecar and at the broker: neither the presented nor the pod token in the log', async () => {
    const podToken = ((await issuer()).mint('spiffe://cluster.local/ns/ns/sa/sa', 'chainwarden')).token;
    const ca = await CertificateAuthority.create('test');
    const tls = await ca.issueServing('broker', { ips: ['127.0.0.1'] });
    const { log, text } = capturedLogger('operator');
    // A token verifier that quotes what it refused, as JWT libraries do.
    const server = await serveHttps({ '/v1/svid': (req: http.IncomingMessage) => Promise.reject(new Error(`jwt audience invalid: ${req.headers.authorization ?? ''}`)) }, tls, { host: '127.0.0.1', port: 0 }, log);
    closers.push(() => server.close());
    const dir = await mkdtemp(path.join(os.tmpdir(), 'log-test-'));
    await writeFile(path.join(dir, 'token'), podToken);
    const sidecarLog = capturedLogger('agent');
    const sidecar = await startAgentProxy({ brokerUrl: server.url, caPem: ca.certPem, tokenFile: path.join(dir, 'token'), listen: { host: '127.0.0.1', port: 0 }, log: sidecarLog.log });
    closers.push(() => sidecar.close());

    const guessed = `Bearer ${sessionToken()}`;
    expect((await fetch(`${sidecar.url}/v1/svid`, { headers: { authorization: guessed } })).status).toBe(401);
    expect((await fetch(`${sidecar.url}/v1/svid`, { headers: { authorization: podToken } })).status).toBe(500);
    expect(text()).toContain('jwt audience invalid');
    for (const secret of [podToken, podToken.split('.')[1] ?? 'unset', guessed.slice('Bearer '.length)]) {
      expect(text()).not.toContain(secret);
      expect(sidecarLog.text()).not.toContain(secret);
    }
  });

  it('scrubs credentials out of text in the shapes STS, SDKs and HTTP put them', () => {
    const key = awsSecretKey();
    const token = sessionToken();
    for (const text of [`<SecretAccessKey>${key}</SecretAccessKey>`, `"sessionToken": "${token}"`, `x-amz-security-token=${token}&x=1`, `Authorization: Bearer abc.def-ghi_jkl`, `key ${key} leaked`]) {
      const clean = scrubSecrets(text);
      expect(clean).not.toContain(key);
      expect(clean).not.toContain(token);
      expect(clean).not.toContain('abc.def-ghi_jkl');
      expect(clean).toContain('[redacted]');
    }
    expect(scrubSecrets('AgentTask ns/t is Completed; it gets nothing more')).toBe('AgentTask ns/t is Completed; it gets nothing more');
  });

  it('an OTLP endpoint with a user and password in its URL is logged without them, as the exporter logs a refused batch', () => {
    const lines: string[] = [];
    const log = createLogger({ level: 'warn' }, { write: (l: string) => void lines.push(l) });
    log.warn({ endpoint: 'http://otel:hunter2-collector-password@collector.observability:4318/v1/traces' }, 'spans not accepted by the OTLP endpoint');
    expect(lines.join('')).not.toContain('hunter2');
    expect(JSON.parse(lines[0] ?? '{}')).toMatchObject({ endpoint: 'http://[redacted]@collector.observability:4318/v1/traces' });
    expect(scrubSecrets('see https://collector:4318/v1/traces and mailto:a@b')).toBe('see https://collector:4318/v1/traces and mailto:a@b');
    // A URL quoted in JSON ends at its quote: what follows it is not taken for its user.
    expect(scrubSecrets('{"url":"https://host","user":"x@y"}')).toBe('{"url":"https://host","user":"x@y"}');
    expect(scrubSecrets('{"url":"https://otel:pw@host"}')).toBe('{"url":"https://[redacted]@host"}');
  });
});
