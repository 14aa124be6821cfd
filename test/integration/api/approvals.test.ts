import type { AgentApproval } from '../../../src/api/schema.js';
import { exampleApproval, examplePolicy, exampleTask } from '../../builders/examples.js';
import { boundExampleAgent, pendingRefund } from '../../env/hops.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { create, grant, objectsApi, read, rejection } from '../../env/kube.js';

describe('AgentApproval records who approved, from the authenticated request only', () => {
  test('two users each get their own identity stamped, whatever the body claims', async ({ admin, env, namespace, userKubeConfig }) => {
    const agent = await boundExampleAgent(admin, env, namespace);
    const [hopA, hopB] = [await pendingRefund(agent, '1'), await pendingRefund(agent, '2')];
    await grant(admin, namespace, ['alice@example.com', 'bob@example.com'], ['agentapprovals'], ['create', 'get', 'update', 'patch']);
    const alice = await userKubeConfig('alice@example.com', ['support-leads']);
    const bob = await userKubeConfig('bob@example.com', ['finance', 'approvers']);

    const byAlice = exampleApproval(namespace);
    byAlice.metadata.name = 'by-alice';
    byAlice.spec.hopId = hopA;
    const storedAlice = await create(alice, byAlice);
    expect(storedAlice.spec.approver).toEqual({ username: 'alice@example.com', groups: ['support-leads', 'system:authenticated'] });

    // Bob claims to be the CFO; admission overwrites the claim with who he is.
    const byBob: AgentApproval = exampleApproval(namespace);
    byBob.metadata.name = 'by-bob';
    byBob.spec.hopId = hopB;
    byBob.spec.approver = { username: 'cfo@example.com', groups: ['system:masters'] };
    await create(bob, byBob);
    const storedBob = await read(admin, byBob);
    expect(storedBob.spec.approver).toEqual({ username: 'bob@example.com', groups: ['finance', 'approvers', 'system:authenticated'] });
  });

  test('an update can neither change the approver nor the decision', async ({ admin, env, namespace, userKubeConfig }) => {
    const agent = await boundExampleAgent(admin, env, namespace);
    await grant(admin, namespace, ['alice@example.com', 'mallory@example.com'], ['agentapprovals'], ['create', 'get', 'update', 'patch']);
    const alice = await userKubeConfig('alice@example.com');
    const mallory = await userKubeConfig('mallory@example.com');
    const approval = exampleApproval(namespace);
    approval.spec.hopId = await pendingRefund(agent);
    await create(alice, approval);

    // Mallory rewrites the approver to herself: the stamped approver is put back.
    const current = await read(mallory, exampleApproval(namespace));
    current.spec.approver = { username: 'mallory@example.com', groups: [] };
    await objectsApi(mallory).replace(current as never);
    expect((await read(admin, exampleApproval(namespace))).spec.approver?.username).toBe('alice@example.com');

    // Flipping the decision is refused outright.
    const flipped = await read(mallory, exampleApproval(namespace));
    flipped.spec.decision = 'Reject';
    expect(await rejection(mallory, flipped, 'replace')).toMatch(/immutable once created/);
    expect((await read(admin, exampleApproval(namespace))).spec.decision).toBe('Approve');
  });

  test('a user without RBAC on approvals cannot create one at all', async ({ admin, namespace, userKubeConfig }) => {
    await create(admin, examplePolicy(namespace));
    await create(admin, exampleTask(namespace));
    const eve = await userKubeConfig('eve@example.com');
    expect(await rejection(eve, exampleApproval(namespace))).toMatch(/forbidden/);
  });
});
