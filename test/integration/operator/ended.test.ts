import { AdmissionregistrationV1Api, CustomObjectsApi, type KubeConfig } from '@kubernetes/client-node';
import { brokerRequest } from '../../env/agents.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { boundExampleAgent, type BoundAgent } from '../../env/hops.js';
import { brokersOf, leaderlessReplica, readTask, type Broker } from './helpers.js';

/** A ValidatingAdmissionPolicy in `namespace` only, removed by the returned function. */
async function clusterPolicy(admin: KubeConfig, namespace: string, name: string, resources: string[], expression: string, message: string): Promise<() => Promise<void>> {
  const api = admin.makeApiClient(AdmissionregistrationV1Api);
  const full = `${name}-${namespace}`;
  await api.createValidatingAdmissionPolicy({
    body: {
      metadata: { name: full },
      spec: { failurePolicy: 'Fail', matchConstraints: { resourceRules: [{ apiGroups: ['chainwarden.io'], apiVersions: ['*'], operations: ['UPDATE'], resources }] }, validations: [{ expression, message, reason: 'Invalid' }] },
    },
  });
  await api.createValidatingAdmissionPolicyBinding({ body: { metadata: { name: full }, spec: { policyName: full, validationActions: ['Deny'], matchResources: { namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': namespace } } } } } });
  // A new policy takes effect a moment after it is created.
  await new Promise((r) => setTimeout(r, 1_500));
  return async () => {
    await api.deleteValidatingAdmissionPolicyBinding({ name: full });
    await api.deleteValidatingAdmissionPolicy({ name: full });
  };
}

/** Asks every replica for a hop and for credentials as the agent; returns what each answered. */
async function askEveryReplica(agent: BoundAgent, brokers: Broker[], env: Parameters<typeof brokerRequest>[0]) {
  const answers = [];
  for (const broker of brokers) {
    const at = { ...env, brokerUrl: broker.url, brokerCA: broker.caFile };
    const hop = await brokerRequest(at, 'POST', '/v1/hops', { token: agent.token, body: { tool: 'tickets', action: 'read', resource: 'ticket/1' } });
    const credentials = await brokerRequest(at, 'GET', '/v1/credentials', { token: agent.token });
    answers.push({ hop, credentials });
  }
  return answers;
}

describe('every replica enforces the end of a task itself', () => {
  test('past its deadline, a task gets nothing from any replica, though no controller can record that it expired', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace, { task: (t) => void (t.spec.ttl = '12s') });
    const standby = await leaderlessReplica(env.kubeconfig, namespace);
    // No controller anywhere may write Expired for this namespace's tasks.
    const allowExpiry = await clusterPolicy(admin, namespace, 'no-expiry', ['agenttasks/status'], "!has(object.status) || !has(object.status.state) || object.status.state != 'Expired'", 'expiry may not be recorded here');
    try {
      expect(standby.isLeader()).toBe(false);
      const brokers = await brokersOf(env, standby);
      await expect.poll(async () => (await askEveryReplica(agent, brokers, env)).map((a) => a.hop.status), { timeout: 10_000 }).toEqual([200, 200]);
      const deadline = Date.parse((await readTask(admin, namespace, 'ticket-4711'))?.status?.deadline ?? '');
      await new Promise((r) => setTimeout(r, Math.max(0, deadline - Date.now()) + 200));
      for (const { hop, credentials } of await askEveryReplica(agent, brokers, env)) {
        expect(hop).toMatchObject({ status: 403, body: { error: { code: 'task_not_active', message: expect.stringMatching(/is Expired: its deadline .* has passed/) as string } } });
        expect(credentials).toMatchObject({ status: 403, body: { error: { code: 'task_not_active' } } });
      }
      expect((await readTask(admin, namespace, 'ticket-4711'))?.status?.state).toBe('Bound');
    } finally {
      await allowExpiry();
      await standby.stop();
    }
  });

  test("the replica that took an agent's completion refuses it at once, though its own watch is seconds behind; the answer first waits for that watch, up to 5 s", async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace);
    // Every change reaches this replica's caches 8 s late: a starved process, or a slow watch.
    const lagMs = 8_000;
    const standby = await leaderlessReplica(env.kubeconfig, namespace, lagMs);
    try {
      const [, lagging] = await brokersOf(env, standby);
      const at = { ...env, brokerUrl: lagging?.url ?? '', brokerCA: lagging?.caFile ?? '' };
      const ask = () => brokerRequest(at, 'POST', '/v1/hops', { token: agent.token, body: { tool: 'tickets', action: 'read', resource: 'ticket/1' } });
      await expect.poll(async () => (await ask()).status, { timeout: 10_000 }).toBe(200);
      const asked = Date.now();
      const done = await brokerRequest(at, 'POST', `/v1/tasks/${namespace}/ticket-4711/complete`, { token: agent.token });
      // It waited for its watch to show the completion (the other replicas' watches are fed
      // alike), and answered when 5 s had passed without it.
      expect(done).toMatchObject({ status: 200, body: { state: 'Completed' } });
      expect(Date.now() - asked).toBeGreaterThanOrEqual(4_900);
      // The agent asks again at once: its watch still shows the task live, and it refuses.
      expect(await ask()).toMatchObject({ status: 403, body: { error: { code: 'task_not_active', message: expect.stringMatching(/is Completed: pod agent-0 reported the chain complete/) as string } } });
      expect((await brokerRequest(at, 'GET', '/v1/credentials', { token: agent.token })).status).toBe(403);
      expect(Date.now() - asked).toBeLessThan(lagMs);
    } finally {
      await standby.stop();
    }
  });

  test('a task being deleted gets nothing from any replica while its revocation cannot finish', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace);
    const standby = await leaderlessReplica(env.kubeconfig, namespace);
    // The finalizer stays, as it does while the IAM deny keeps failing: nothing may remove it.
    const keepFinalizer = await clusterPolicy(
      admin,
      namespace,
      'keep-finalizer',
      ['agenttasks'],
      "!has(oldObject.metadata.finalizers) || !('chainwarden.io/revoke' in oldObject.metadata.finalizers) || (has(object.metadata.finalizers) && 'chainwarden.io/revoke' in object.metadata.finalizers)",
      'the revocation finalizer may not be removed here',
    );
    try {
      const brokers = await brokersOf(env, standby);
      await expect.poll(async () => (await askEveryReplica(agent, brokers, env)).map((a) => a.hop.status), { timeout: 10_000 }).toEqual([200, 200]);
      await admin.makeApiClient(CustomObjectsApi).deleteNamespacedCustomObject({ group: 'chainwarden.io', version: 'v1alpha1', namespace, plural: 'agenttasks', name: 'ticket-4711' });
      await expect.poll(async () => (await readTask(admin, namespace, 'ticket-4711'))?.metadata.deletionTimestamp, { timeout: 5_000 }).toBeTruthy();
      await expect
        .poll(async () => (await askEveryReplica(agent, brokers, env)).map((a) => [a.hop.status, a.credentials.status]), { timeout: 5_000, interval: 100 })
        .toEqual([
          [403, 403],
          [403, 403],
        ]);
      for (const { hop } of await askEveryReplica(agent, brokers, env)) expect(JSON.stringify(hop.body)).toMatch(/is being deleted/);
      // Still there: the refusal comes from the deletion itself, not from the task being gone.
      expect((await readTask(admin, namespace, 'ticket-4711'))?.metadata.finalizers).toContain('chainwarden.io/revoke');
    } finally {
      await keepFinalizer();
      await standby.stop();
    }
  });
});
