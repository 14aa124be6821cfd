import https from 'node:https';
import type { KubeConfig } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SecretReader } from '../../../src/mcp/secrets.js';
import { CertificateAuthority } from '../../../src/pki/authority.js';
import { kubeConfigFor } from '../../builders/kubeconfig.js';

/** A scripted Secret endpoint (a unit-test stand-in, not an API server): one Secret, every GET recorded. */
let server: https.Server;
let kc: KubeConfig;
const paths: string[] = [];

beforeAll(async () => {
  const ca = await CertificateAuthority.create('test');
  const pair = await ca.issueServing('localhost', { ips: ['127.0.0.1'] });
  server = https.createServer({ cert: pair.certPem, key: pair.keyPem }, (req, res) => {
    paths.push(req.url ?? '');
    // As an API server answers an operator installed without the MCP gateway's grants.
    if (req.url === '/api/v1/namespaces/support/secrets/forbidden' || req.url === '/apis/authorization.k8s.io/v1/subjectaccessreviews') {
      return void res.writeHead(403, { 'content-type': 'application/json' }).end('{"kind":"Status","code":403}');
    }
    if (req.url !== '/api/v1/namespaces/support/secrets/tickets-mcp') return void res.writeHead(404, { 'content-type': 'application/json' }).end('{"kind":"Status","code":404}');
    const data = { token: 's3cr3t', fromFile: 's3cr3t\n', crlf: 's3cr3t\r\n', twoLines: 's3cr3t\nX-Injected: yes', cyrillic: 'токен' };
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ kind: 'Secret', data: Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v).toString('base64')])) }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  kc = kubeConfigFor(server, ca.certPem);
});

afterAll(() => {
  server.closeAllConnections();
  server.close();
});

describe('the Secret reader', () => {
  const field = 'spec.systems[0].mcp.credentials.secretRef';

  it('reads the key of the Secret in the namespace it is given', async () => {
    await expect(new SecretReader(kc, { now: () => 0 }).value('support', 'tickets-mcp', 'token', field)).resolves.toBe('s3cr3t');
    expect(paths.at(-1)).toBe('/api/v1/namespaces/support/secrets/tickets-mcp');
  });

  it('drops the line break a file ends with, and refuses a credential no header can carry, naming the Secret and the key', async () => {
    const reader = new SecretReader(kc, { now: () => 0 });
    await expect(reader.value('support', 'tickets-mcp', 'fromFile', field)).resolves.toBe('s3cr3t');
    await expect(reader.value('support', 'tickets-mcp', 'crlf', field)).resolves.toBe('s3cr3t');
    await expect(reader.value('support', 'tickets-mcp', 'twoLines', field)).rejects.toMatchObject({ code: 'mcp_credential_missing', field, message: expect.stringMatching(/^Secret support\/tickets-mcp key twoLines .* holds a line break/) as unknown });
    await expect(reader.value('support', 'tickets-mcp', 'cyrillic', field)).rejects.toMatchObject({ code: 'mcp_credential_missing', field });
  });

  it('a Secret the operator may not read, or may not ask about, is refused naming what grants it', async () => {
    const reader = new SecretReader(kc, { now: () => 0 });
    await expect(reader.value('support', 'forbidden', 'token', field)).rejects.toMatchObject({ code: 'mcp_credential_missing', field, message: expect.stringMatching(/may not read Secret support\/forbidden.*mcpGateway\.enabled=true and mcpGateway\.secretNamespaces/) as unknown });
    await expect(reader.mayRead({ username: 'alice' }, 'support', 'tickets-mcp')).rejects.toMatchObject({ code: 'mcp_credential_missing', message: expect.stringMatching(/may not ask whether alice may read Secret support\/tickets-mcp \(it is not granted create on subjectaccessreviews\); grant it, as the Helm chart does/) as unknown });
  });

  it.each(['constructor', 'toString', '__proto__', 'hasOwnProperty'])('a key %s the Secret does not have is missing, named, like any other', async (key) => {
    await expect(new SecretReader(kc, { now: () => 0 }).value('support', 'tickets-mcp', key, field)).rejects.toMatchObject({ code: 'mcp_credential_missing', field, message: `Secret support/tickets-mcp has no key ${key} (${field}); add it or name the key that holds the credential` });
  });
});
