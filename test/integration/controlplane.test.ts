import https from 'node:https';
import { AuthenticationV1Api, CoreV1Api, type KubeConfig } from '@kubernetes/client-node';
import { CreateRoleCommand, GetRoleCommand, IAMClient } from '@aws-sdk/client-iam';
import { AssumeRoleCommand, GetCallerIdentityCommand, STSClient } from '@aws-sdk/client-sts';
import { SERVICE_ACCOUNT_ISSUER } from '../../src/controlplane/apiserver.js';
import { resetMoto } from '../../src/controlplane/moto.js';
import { recordedRequests } from '../env/aws.js';
import { describe, expect, test } from '../env/fixtures.js';

const region = 'us-east-1';
const baseCredentials = { accessKeyId: 'AKIAIOSFODNN7EXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' };

async function podWithServiceAccount(kc: KubeConfig, namespace: string, sa: string, pod: string) {
  const core = kc.makeApiClient(CoreV1Api);
  await core.createNamespacedServiceAccount({ namespace, body: { metadata: { name: sa } } });
  return core.createNamespacedPod({
    namespace,
    body: {
      metadata: { name: pod, labels: { app: 'agent' } },
      spec: { serviceAccountName: sa, containers: [{ name: 'agent', image: 'example.invalid/agent:1' }] },
    },
  });
}

async function podBoundToken(kc: KubeConfig, namespace: string, sa: string, pod: { name: string; uid: string }) {
  const res = await kc.makeApiClient(CoreV1Api).createNamespacedServiceAccountToken({
    name: sa,
    namespace,
    body: {
      spec: {
        audiences: ['chainwarden'],
        expirationSeconds: 600,
        boundObjectRef: { apiVersion: 'v1', kind: 'Pod', name: pod.name, uid: pod.uid },
      },
    },
  });
  return res.status?.token ?? '';
}

async function review(kc: KubeConfig, token: string, audiences = ['chainwarden']) {
  const res = await kc.makeApiClient(AuthenticationV1Api).createTokenReview({ body: { spec: { token, audiences } } });
  return res.status ?? {};
}

describe('local control plane', () => {
  test('mints a pod-bound token with TokenRequest that TokenReview accepts until the pod is gone', async ({ admin, namespace }) => {
    const pod = await podWithServiceAccount(admin, namespace, 'agent', 'agent-0');
    const ref = { name: 'agent-0', uid: pod.metadata?.uid ?? '' };
    const token = await podBoundToken(admin, namespace, 'agent', ref);

    const claims = JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString()) as Record<string, unknown>;
    expect(claims.iss).toBe(SERVICE_ACCOUNT_ISSUER);
    expect(claims.aud).toEqual(['chainwarden']);

    const ok = await review(admin, token);
    expect(ok.authenticated).toBe(true);
    expect(ok.user?.username).toBe(`system:serviceaccount:${namespace}:agent`);
    expect(ok.user?.extra?.['authentication.kubernetes.io/pod-name']).toEqual(['agent-0']);
    expect(ok.user?.extra?.['authentication.kubernetes.io/pod-uid']).toEqual([ref.uid]);

    // A token for another audience is not accepted for ours.
    expect((await review(admin, token, ['someone-else'])).authenticated).toBeFalsy();

    await admin.makeApiClient(CoreV1Api).deleteNamespacedPod({ name: 'agent-0', namespace, gracePeriodSeconds: 0 });
    // The API server checks the bound pod through its informer cache, so this takes a moment.
    await expect.poll(async () => (await review(admin, token)).authenticated ?? false, { timeout: 30_000, interval: 200 }).toBe(false);
  });

  test('enforces RBAC: a user without a binding is forbidden, an admin is not', async ({ admin, namespace, userKubeConfig }) => {
    const nobody = await userKubeConfig('nobody@example.com', ['developers']);
    await expect(nobody.makeApiClient(CoreV1Api).listNamespacedPod({ namespace })).rejects.toMatchObject({ code: 403 });
    const pods = await admin.makeApiClient(CoreV1Api).listNamespacedPod({ namespace });
    expect(pods.items).toEqual([]);
  });

  test('serves the service-account issuer discovery document and its JWKS', async ({ admin }) => {
    const discovery = (await getJson(admin, '/.well-known/openid-configuration')) as { issuer: string; jwks_uri: string };
    expect(discovery.issuer).toBe(SERVICE_ACCOUNT_ISSUER);
    const jwks = (await getJson(admin, '/openid/v1/jwks')) as { keys: { kty: string; alg: string }[] };
    expect(jwks.keys).toHaveLength(1);
    expect(jwks.keys[0]).toMatchObject({ kty: 'EC', alg: 'ES256' });
  });

  test('assumes a role on the STS emulator and calls GetCallerIdentity with the session', async ({ env }) => {
    const iam = new IAMClient({ region, endpoint: env.stsEndpoint, credentials: baseCredentials });
    const roleName = `agent-${Date.now()}`;
    const role = await iam.send(
      new CreateRoleCommand({
        RoleName: roleName,
        AssumeRolePolicyDocument: JSON.stringify({
          Version: '2012-10-17',
          Statement: [{ Effect: 'Allow', Principal: { AWS: 'arn:aws:iam::123456789012:root' }, Action: 'sts:AssumeRole' }],
        }),
      }),
    );
    const sts = new STSClient({ region, endpoint: env.stsEndpoint, credentials: baseCredentials });
    const assumed = await sts.send(new AssumeRoleCommand({ RoleArn: role.Role?.Arn, RoleSessionName: 'smoke', DurationSeconds: 900 }));
    const creds = assumed.Credentials;
    expect(creds?.AccessKeyId).toMatch(/^ASIA/);
    expect(creds?.Expiration?.getTime()).toBeGreaterThan(Date.now() + 800_000);

    const asAgent = new STSClient({
      region,
      endpoint: env.stsEndpoint,
      credentials: { accessKeyId: creds?.AccessKeyId ?? '', secretAccessKey: creds?.SecretAccessKey ?? '', sessionToken: creds?.SessionToken ?? '' },
    });
    const me = await asAgent.send(new GetCallerIdentityCommand({}));
    expect(me.Arn).toBe(`arn:aws:sts::123456789012:assumed-role/${roleName}/smoke`);
  });

  test("the emulator's reset API forgets what was created", async ({ env }) => {
    const iam = new IAMClient({ region, endpoint: env.stsEndpoint, credentials: baseCredentials });
    await iam.send(new CreateRoleCommand({ RoleName: 'to-forget', AssumeRolePolicyDocument: '{"Version":"2012-10-17","Statement":[]}' }));
    await expect(iam.send(new GetRoleCommand({ RoleName: 'to-forget' }))).resolves.toBeTruthy();
    await resetMoto(env.stsEndpoint);
    await expect(iam.send(new GetRoleCommand({ RoleName: 'to-forget' }))).rejects.toMatchObject({ name: 'NoSuchEntityException' });
  });

  test("the emulator's recording, which tests read to see what reached AWS, stays one request a line when large requests arrive at once", async ({ env }) => {
    // Over 8 KiB each: moto's own recorder wrote such a request in pieces, and two at once interleaved.
    const marker = `recording-${Date.now()}`;
    const pad = 'x'.repeat(20_000);
    await Promise.all(
      Array.from({ length: 16 }, async (_, i) => {
        const res = await fetch(`${env.stsEndpoint}/`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `Action=GetCallerIdentity&Version=2011-06-15&Marker=${marker}-${i}&Pad=${pad}` });
        await res.arrayBuffer();
      }),
    );
    // The tests' reader takes every line as it is (a broken one throws), and each request is there once.
    const bodies = (await recordedRequests(env)).map((e) => (e.body_encoded ? Buffer.from(e.body ?? '', 'base64').toString('utf8') : (e.body ?? '')));
    const ours = bodies.map((b) => new RegExp(`Marker=${marker}-(\\d+)&`).exec(b)?.[1]).filter((m) => m !== undefined);
    expect(ours.sort((a, b) => Number(a) - Number(b))).toEqual(Array.from({ length: 16 }, (_, i) => String(i)));
  });
});

/** GET a non-resource path of the API server as the kubeconfig's user. */
async function getJson(kc: KubeConfig, path: string): Promise<unknown> {
  const options: https.RequestOptions = {};
  await kc.applyToHTTPSOptions(options);
  const url = new URL(path, kc.getCurrentCluster()?.server);
  return new Promise((resolve, reject) => {
    https
      .get(url, options, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => (res.statusCode === 200 ? resolve(JSON.parse(body)) : reject(new Error(`GET ${path}: ${res.statusCode} ${body}`))));
      })
      .on('error', reject);
  });
}
