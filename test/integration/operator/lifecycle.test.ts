import { CoreV1Api, CustomObjectsApi } from '@kubernetes/client-node';
import { examplePolicy, exampleTask } from '../../builders/examples.js';
import { brokerRequest, createAgentPod, createServiceAccount, getJson, podToken, startAgentProcess } from '../../env/agents.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { create, grant } from '../../env/kube.js';
import { rawRequest } from '../../../src/kube/raw.js';
import { condition, eventReasons, waitForTask } from './helpers.js';

describe('AgentTask lifecycle', () => {
  test('Pending → Bound → Completed when the agent reports completion, with conditions and Events', async ({ admin, env, namespace }) => {
    await create(admin, examplePolicy(namespace));
    await createServiceAccount(admin, namespace, 'support-agent');
    const created = await create(admin, exampleTask(namespace));
    // On the task from its first write (admission), before the controller has seen it.
    expect(created.metadata?.finalizers).toEqual(['chainwarden.io/revoke']);

    const pending = await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.state === 'Pending');
    expect(pending.metadata.finalizers).toContain('chainwarden.io/revoke');
    expect(pending.status?.spiffeID).toBe(`spiffe://cluster.local/ns/${namespace}/sa/support-agent/task/ticket-4711`);
    expect(Date.parse(pending.status?.deadline ?? '') - Date.parse(pending.metadata.creationTimestamp ?? '')).toBe(30 * 60_000);
    expect(condition(pending, 'Ready')).toMatchObject({ status: 'False', reason: 'WaitingForPods' });
    expect(pending.status?.observedGeneration).toBe(pending.metadata.generation);

    const pod = await createAgentPod(admin, namespace, { name: 'agent-0', task: 'ticket-4711', serviceAccount: 'support-agent' });
    const bound = await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.state === 'Bound');
    expect(bound.status?.boundPods).toEqual([{ name: 'agent-0', uid: pod.metadata?.uid }]);
    expect(condition(bound, 'IdentityBound')).toMatchObject({ status: 'True', reason: 'PodsBound' });
    expect(condition(bound, 'Ready')).toMatchObject({ status: 'True', reason: 'Bound' });

    const agent = await startAgentProcess(env, await podToken(admin, pod));
    try {
      expect((await getJson(`${agent.url}/v1/svid?audience=tickets`, { headers: await agent.headers() })).status).toBe(200);
      const done = await getJson(`${agent.url}/v1/tasks/${namespace}/ticket-4711/complete`, { method: 'POST', headers: await agent.headers() });
      expect(done).toEqual({ status: 200, body: { state: 'Completed' } });

      const completed = await waitForTask(admin, namespace, 'ticket-4711', (t) => condition(t, 'IdentityBound')?.reason === 'Released');
      expect(completed.status?.state).toBe('Completed');
      expect(condition(completed, 'Completed')).toMatchObject({ status: 'True', reason: 'AgentReported' });
      expect(condition(completed, 'Ready')).toMatchObject({ status: 'False', reason: 'Ended' });
      expect(completed.status?.boundPods).toEqual([]);

      const after = await getJson(`${agent.url}/v1/svid?audience=tickets`, { headers: await agent.headers() });
      expect(after.status).toBe(403);
      expect(after.body).toMatchObject({ error: { code: 'task_not_active' } });
    } finally {
      await agent.stop();
    }
    // One Event per transition, no more.
    await expect.poll(async () => (await eventReasons(admin, namespace, 'ticket-4711')).sort(), { timeout: 10_000 }).toEqual(['Bound', 'Completed', 'Revoked', 'WaitingForPods']);
  });

  test('a task expires at its deadline and its pods lose their identity', async ({ admin, namespace }) => {
    await create(admin, examplePolicy(namespace));
    await createServiceAccount(admin, namespace, 'support-agent');
    const task = exampleTask(namespace);
    task.spec.ttl = '4s';
    await create(admin, task);
    await createAgentPod(admin, namespace, { name: 'agent-0', task: 'ticket-4711', serviceAccount: 'support-agent' });
    await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.state === 'Bound');
    const expired = await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.state === 'Expired', 15_000);
    expect(condition(expired, 'Expired')).toMatchObject({ status: 'True', reason: 'DeadlinePassed' });
    expect(expired.status?.boundPods).toEqual([]);
    await expect.poll(() => eventReasons(admin, namespace, 'ticket-4711'), { timeout: 10_000 }).toContain('Expired');
  });

  test('a task completes when its agent pods finish', async ({ admin, namespace }) => {
    await create(admin, examplePolicy(namespace));
    await createServiceAccount(admin, namespace, 'support-agent');
    await create(admin, exampleTask(namespace));
    await createAgentPod(admin, namespace, { name: 'agent-0', task: 'ticket-4711', serviceAccount: 'support-agent' });
    await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.state === 'Bound');
    // No kubelet here: report the pod finished the way the kubelet would.
    const res = await rawRequest(admin, 'PATCH', `/api/v1/namespaces/${namespace}/pods/agent-0/status`, { status: { phase: 'Succeeded' } }, 'application/merge-patch+json');
    expect(res.status).toBe(200);
    const done = await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.state === 'Completed');
    expect(condition(done, 'Completed')).toMatchObject({ status: 'True', reason: 'PodsFinished' });
  });

  test('a pod replaced mid-task re-binds, and the old pod\'s token stops working', async ({ admin, env, namespace }) => {
    await create(admin, examplePolicy(namespace));
    await createServiceAccount(admin, namespace, 'support-agent');
    await create(admin, exampleTask(namespace));
    const first = await createAgentPod(admin, namespace, { name: 'agent-0', task: 'ticket-4711', serviceAccount: 'support-agent' });
    await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.boundPods?.[0]?.uid === first.metadata?.uid);
    const oldToken = await podToken(admin, first);
    const svid = (token: string) => brokerRequest(env, 'GET', '/v1/svid?audience=x', { token });
    const first200 = await svid(oldToken);
    expect(first200, JSON.stringify(first200.body)).toMatchObject({ status: 200 });

    await admin.makeApiClient(CoreV1Api).deleteNamespacedPod({ name: 'agent-0', namespace, gracePeriodSeconds: 0 });
    const second = await createAgentPod(admin, namespace, { name: 'agent-1', task: 'ticket-4711', serviceAccount: 'support-agent' });
    const rebound = await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.boundPods?.[0]?.uid === second.metadata?.uid);
    expect(rebound.status?.boundPods).toEqual([{ name: 'agent-1', uid: second.metadata?.uid }]);

    const refused = await svid(oldToken);
    expect(refused.status).toBe(401);
    expect(JSON.stringify(refused.body)).toMatch(/agent-0 .* no longer exists/);
    expect((await svid(await podToken(admin, second))).status).toBe(200);
  });

  test('a task whose pod comes with it is bound in one step, with no WaitingForPods on the way', async ({ admin, namespace }) => {
    await create(admin, examplePolicy(namespace));
    await createServiceAccount(admin, namespace, 'support-agent');
    await create(admin, exampleTask(namespace));
    await createAgentPod(admin, namespace, { name: 'agent-0', task: 'ticket-4711', serviceAccount: 'support-agent' });
    const bound = await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.state === 'Bound');
    expect(condition(bound, 'Ready')).toMatchObject({ status: 'True', reason: 'Bound' });
    await expect.poll(() => eventReasons(admin, namespace, 'ticket-4711')).toContain('Bound');
    expect(await eventReasons(admin, namespace, 'ticket-4711')).toEqual(['Bound']);
  });

  test('a task whose policy is missing stays Pending and says which policy to create', async ({ admin, env, namespace }) => {
    await create(admin, examplePolicy(namespace));
    await createServiceAccount(admin, namespace, 'support-agent');
    await create(admin, exampleTask(namespace));
    await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.state === 'Pending');
    await admin.makeApiClient(CustomObjectsApi).deleteNamespacedCustomObject({
      group: 'chainwarden.io',
      version: 'v1alpha1',
      namespace,
      plural: 'agentpolicies',
      name: 'support-agent',
    });
    const pod = await createAgentPod(admin, namespace, { name: 'agent-0', task: 'ticket-4711', serviceAccount: 'support-agent' });
    const stuck = await waitForTask(admin, namespace, 'ticket-4711', (t) => condition(t, 'Ready')?.reason === 'PolicyNotFound');
    expect(stuck.status?.state).toBe('Pending');
    expect(condition(stuck, 'Ready')?.message).toMatch(/AgentPolicy "support-agent" does not exist .*create it/);
    expect(stuck.status?.boundPods).toEqual([]);
    // Its agent hears why, on credentials within the second an SDK waits for them, on hops at once.
    const token = await podToken(admin, pod);
    const started = performance.now();
    const credentials = await brokerRequest(env, 'GET', '/v1/credentials', { token });
    expect(performance.now() - started).toBeLessThan(1_000);
    expect(credentials).toMatchObject({ status: 403, body: { error: { code: 'pod_not_bound', message: expect.stringMatching(/not bound to AgentTask ticket-4711 \(state Pending\)/) as unknown } } });
    const hopAsked = performance.now();
    expect(await brokerRequest(env, 'POST', '/v1/hops', { token, body: { tool: 'tickets', action: 'read', resource: 'ticket/1' } })).toMatchObject({ status: 403, body: { error: { code: 'pod_not_bound' } } });
    // Not held: well under the credentials' wait.
    expect(performance.now() - hopAsked).toBeLessThan(400);
  });

  test('a tenant cannot make a task escape its revocation finalizer: not at creation, not by taking it off later, which is refused; an administrator\'s is put back', async ({ admin, namespace, userKubeConfig }) => {
    await create(admin, examplePolicy(namespace));
    await grant(admin, namespace, ['dev@example.com'], ['agenttasks'], ['create', 'get', 'patch']);
    const dev = await userKubeConfig('dev@example.com');
    // A task that arrives with finalizers of its own gets ours after them.
    const task = exampleTask(namespace);
    const created = await create(dev, { ...task, metadata: { ...task.metadata, finalizers: ['example.com/hold'] } });
    expect(created.metadata?.finalizers).toEqual(['example.com/hold', 'chainwarden.io/revoke']);
    await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.state === 'Pending');
    // Metadata edits do not reach the webhooks; the chart's admission policy refuses this one. The tenant's own finalizer is theirs to take off.
    const path = `/apis/chainwarden.io/v1alpha1/namespaces/${namespace}/agenttasks/ticket-4711`;
    const stripped = await rawRequest(dev, 'PATCH', path, { metadata: { finalizers: null } }, 'application/merge-patch+json');
    expect(stripped.status).toBe(403);
    expect(JSON.stringify(stripped.body)).toContain('dev@example.com may not: delete the task, and the operator lets it go once that is done');
    const own = await rawRequest(dev, 'PATCH', path, { metadata: { finalizers: ['chainwarden.io/revoke'] } }, 'application/merge-patch+json');
    expect(own.status).toBe(200);
    // An administrator may take it off (to unstick a deletion); the controller puts it back on a live task.
    expect((await rawRequest(admin, 'PATCH', path, { metadata: { finalizers: null } }, 'application/merge-patch+json')).status).toBe(200);
    const back = await waitForTask(admin, namespace, 'ticket-4711', (t) => (t.metadata.finalizers ?? []).includes('chainwarden.io/revoke'));
    expect(back.metadata.finalizers).toEqual(['chainwarden.io/revoke']);
  });
});
