import { rawRequest } from '../../../src/kube/raw.js';
import { examplePolicy, exampleTask } from '../../builders/examples.js';
import { describe, expect, test } from '../../env/fixtures.js';
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
