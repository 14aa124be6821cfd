import { CoreV1Api, type KubeConfig } from '@kubernetes/client-node';
import type { EnvironmentDescription } from '../../../src/controlplane/environment.js';
import { rawRequest } from '../../../src/kube/raw.js';
import { brokerRequest, createAgentPod, createServiceAccount, podToken } from '../../env/agents.js';
import { describe, expect, test } from '../../env/fixtures.js';

/** Sums the samples of a Prometheus text exposition whose name and labels match. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number {
  return text
    .split('\n')
    .filter((line) => line.startsWith(`${name}{`) || line.startsWith(`${name} `))
    .filter((line) => Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`)))
    .reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(' ') + 1)), 0);
}

/** What unknown callers have cost so far: as the operator counts it, and as the API server counts the pod reads it served. */
async function costs(env: EnvironmentDescription, admin: KubeConfig) {
  const operator = (await brokerRequest(env, 'GET', '/metrics')).body as string;
  const apiServer = (await rawRequest(admin, 'GET', '/metrics')).body as string;
  const podGets = (code: string) => sample(apiServer, 'apiserver_request_total', { resource: 'pods', scope: 'resource', subresource: '', verb: 'GET', code });
  return {
    verifications: sample(operator, 'chainwarden_agent_token_verifications_total'),
    podReads: sample(operator, 'chainwarden_agent_pod_reads_total'),
    fromMemory: sample(operator, 'chainwarden_agent_refusals_remembered_total'),
    apiPodGets: { found: podGets('200'), missing: podGets('404') },
  };
}

const delta = (before: Awaited<ReturnType<typeof costs>>, after: Awaited<ReturnType<typeof costs>>) => ({
  verifications: after.verifications - before.verifications,
  podReads: after.podReads - before.podReads,
  fromMemory: after.fromMemory - before.fromMemory,
  apiPodGets: { found: after.apiPodGets.found - before.apiPodGets.found, missing: after.apiPodGets.missing - before.apiPodGets.missing },
});

/** `n` requests at once, then `n` one after another; every status. */
async function flood(send: () => Promise<{ status: number }>, n: number): Promise<number[]> {
  const statuses = (await Promise.all(Array.from({ length: n }, send))).map((r) => r.status);
  for (let i = 0; i < n; i++) statuses.push((await send()).status);
  return statuses;
}

/** A real projected token with its signature's last characters changed: well formed, signed by a known key id, not valid. */
const forge = (token: string) => `${token.slice(0, -8)}${token.slice(-8) === 'AAAAAAAA' ? 'BBBBBBBB' : 'AAAAAAAA'}`;

describe('malformed broker paths cost nothing', () => {
  test('a path that cannot name anything is a 400 naming the part at fault, with no token verified', async ({ admin, env, namespace }) => {
    await createServiceAccount(admin, namespace, 'support-agent');
    const pod = await createAgentPod(admin, namespace, { name: 'agent-0', task: 'ticket-4711', serviceAccount: 'support-agent' });
    const forged = forge(await podToken(admin, pod));
    const malformed: [string, string, string, string][] = [
      ['GET', '/v1/hops/not-a-hop-id', 'invalid_hop', 'hopId'],
      ['GET', '/v1/hops/h01_AAAAAAAAAAAA_BBBBBBBBBBBBBBBB', 'invalid_hop', 'hopId'],
      ['GET', '/v1/hops/%zz', 'invalid_hop', 'hopId'],
      ['GET', '/v1/credentials/%E0%A4%A', 'invalid_request', 'name'],
      ['GET', '/v1/credentials/Default', 'invalid_request', 'name'],
      ['POST', `/v1/tasks/${namespace.toUpperCase()}/ticket-4711/complete`, 'invalid_request', 'namespace'],
      ['POST', `/v1/tasks/${namespace}/ticket_4711/complete`, 'invalid_request', 'name'],
      ['POST', `/v1/tasks/${namespace}/${'a'.repeat(254)}/complete`, 'invalid_request', 'name'],
    ];
    const before = await costs(env, admin);
    for (const [method, path, code, field] of malformed) {
      for (let i = 0; i < 5; i++) expect(await brokerRequest(env, method, path, { token: forged }), path).toMatchObject({ status: 400, body: { error: { code, field } } });
    }
    expect(delta(before, await costs(env, admin))).toMatchObject({ verifications: 0, podReads: 0 });

    // The same token on a well-formed path is verified, and refused.
    expect((await brokerRequest(env, 'GET', '/v1/hops/h1_AAAAAAAAAAAA_BBBBBBBBBBBBBBBB', { token: forged })).status).toBe(401);
    expect(delta(before, await costs(env, admin)).verifications).toBe(1);
  });
});

describe('unknown callers are remembered', () => {
  test('a flood of one forged token costs one verification, and every request is still a 401', async ({ admin, env, namespace }) => {
    await createServiceAccount(admin, namespace, 'support-agent');
    const pod = await createAgentPod(admin, namespace, { name: 'agent-0', task: 'ticket-4711', serviceAccount: 'support-agent' });
    const forged = forge(await podToken(admin, pod));
    const before = await costs(env, admin);
    const statuses = await flood(() => brokerRequest(env, 'GET', '/v1/credentials', { token: forged }), 100);
    expect(statuses).toEqual(Array(200).fill(401));
    const spent = delta(before, await costs(env, admin));
    expect(spent.verifications).toBe(1);
    // Those that came while the one verification ran shared it; every later one was refused from memory.
    expect(spent.fromMemory).toBeGreaterThanOrEqual(100);
  });

  test('a pod that is no agent (no task label) costs one pod read, however often its token is sent', async ({ admin, env, namespace }) => {
    await createServiceAccount(admin, namespace, 'bystander');
    // Any pod may project a token with audience chainwarden; this one was never admitted as an agent.
    const pod = await admin.makeApiClient(CoreV1Api).createNamespacedPod({ namespace, body: { metadata: { name: 'bystander-0' }, spec: { serviceAccountName: 'bystander', containers: [{ name: 'app', image: 'example.invalid/app:1' }] } } });
    const token = await podToken(admin, pod);
    const before = await costs(env, admin);
    const statuses = await flood(() => brokerRequest(env, 'GET', '/v1/svid?audience=x', { token }), 50);
    expect(statuses).toEqual(Array(100).fill(403));
    const spent = delta(before, await costs(env, admin));
    expect(spent).toMatchObject({ verifications: 1, podReads: 1 });
    // The API server saw one read of a pod, not a hundred.
    expect(spent.apiPodGets.found).toBe(1);
  });

  test('the token of a deleted pod costs at most one pod read, and is a 401', async ({ admin, env, namespace }) => {
    await createServiceAccount(admin, namespace, 'support-agent');
    const pod = await createAgentPod(admin, namespace, { name: 'agent-0', task: 'ticket-4711', serviceAccount: 'support-agent' });
    const token = await podToken(admin, pod);
    const before = await costs(env, admin);
    await admin.makeApiClient(CoreV1Api).deleteNamespacedPod({ name: 'agent-0', namespace, gracePeriodSeconds: 0 });
    // 403 (no such task) while the operator's cache still holds the pod; 401 once its watch has shown the deletion.
    await expect.poll(async () => (await brokerRequest(env, 'GET', '/v1/credentials', { token })).status, { timeout: 5_000, interval: 20 }).toBe(401);
    const statuses = await flood(() => brokerRequest(env, 'GET', '/v1/credentials', { token }), 50);
    expect(statuses).toEqual(Array(100).fill(401));
    const spent = delta(before, await costs(env, admin));
    expect(spent.podReads).toBeLessThanOrEqual(1);
    expect(spent.apiPodGets.missing).toBeLessThanOrEqual(1);
    expect(spent.verifications).toBeLessThanOrEqual(1);
  });
});
