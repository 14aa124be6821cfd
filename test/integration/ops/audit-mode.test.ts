import { readFile } from 'node:fs/promises';
import { ApiextensionsV1Api } from '@kubernetes/client-node';
import { readAuditRecords } from '../../../src/audit/verify.js';
import { exampleApproval, examplePolicy, exampleTask } from '../../builders/examples.js';
import { create } from '../../env/kube.js';
import { boundExampleAgent } from '../../env/hops.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { readTask, waitForTask } from '../operator/helpers.js';

const FREEZE = { tool: 'payments', action: 'admin.freeze', resource: 'account/1' };
const taskName = exampleTask('x').metadata.name ?? '';

describe('AgentPolicy spec.mode: Audit tries a policy before it bites', () => {
  test('under Enforce the hop is denied and the task revoked', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace);
    const answer = await agent.hop(FREEZE);
    expect(answer.body).toMatchObject({ decision: 'deny', reasons: [{ rule: 'never-admin-payments' }] });
    await waitForTask(admin, namespace, taskName, (t) => t.status?.state === 'Violated');
  });

  test('under Audit the same hop is allowed, counted in status.hops.wouldDeny, recorded as wouldDeny, and nothing is revoked', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace, { policy: (p) => void (p.spec.mode = 'Audit') });
    const answer = await agent.hop(FREEZE);
    expect(answer.status).toBe(200);
    expect(answer.body).toMatchObject({ decision: 'allow', wouldDeny: true, reasons: [{ rule: 'never-admin-payments', effect: 'Deny' }] });
    // A hop that needs approval still waits in Audit.
    expect((await agent.hop({ tool: 'payments', action: 'refund', resource: 'order/1' })).body).toMatchObject({ decision: 'pending_approval' });

    const task = await waitForTask(admin, namespace, taskName, (t) => t.status?.hops?.wouldDeny === 1);
    expect(task.status?.hops).toMatchObject({ allowed: 1, denied: 0, wouldDeny: 1, pending: 1 });
    expect(task.status?.recentHops?.find((h) => h.hopId === answer.body.hopId)).toMatchObject({ decision: 'allow', wouldDeny: true, rules: ['never-admin-payments'] });
    const record = async () => readAuditRecords(await readFile(env.auditFile ?? '', 'utf8')).find((e) => e.record.taskUid === task.metadata.uid && e.record.data.hopId === answer.body.hopId)?.record;
    await expect.poll(record, { timeout: 10_000 }).toMatchObject({ type: 'hop_decided', data: { decision: 'allow', wouldDeny: true, reasons: [{ rule: 'never-admin-payments', effect: 'Deny' }] } });
    // Nothing is revoked: a second later the task is still Bound with no violation.
    await new Promise((r) => setTimeout(r, 1000));
    const later = await readTask(admin, namespace, taskName);
    expect(later?.status?.state).toBe('Bound');
    expect(later?.status?.violation).toBeUndefined();
  });

  test('under Audit a refund after a customer read, which a Deny rule would refuse and a RequireApproval rule holds, waits for a person, and is allowed once one approves it', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace, {
      policy: (p) => {
        p.spec.mode = 'Audit';
        (p.spec.rules ??= []).push({ name: 'no-refunds-after-customer-data', effect: 'Deny', tools: ['payments'], actions: ['refund'], when: { afterDataClasses: ['pii'] } });
      },
    });
    expect((await agent.hop({ tool: 'tickets', action: 'read', resource: 'ticket/4711' })).body).toMatchObject({ decision: 'allow' });
    const refund = await agent.hop({ tool: 'payments', action: 'refund', resource: 'order/1' });
    expect(refund.body).toMatchObject({ decision: 'pending_approval', wouldDeny: true, reasons: [{ rule: 'refunds-need-a-human', effect: 'RequireApproval' }] });
    const task = await waitForTask(admin, namespace, taskName, (t) => (t.status?.pendingHops ?? []).length === 1);
    // The approver is told, in status (kept by the CRD's schema), that Enforce would deny it, and by what.
    expect(task.status?.pendingHops?.[0]).toMatchObject({ hopId: refund.body.hopId, rules: ['refunds-need-a-human'], wouldDenyBy: ['no-refunds-after-customer-data'] });
    expect(task.status?.hops).toMatchObject({ allowed: 1, pending: 1 });
    expect((await agent.poll(refund.body.hopId)).body).toMatchObject({ decision: 'pending_approval', wouldDeny: true });
    const approval = exampleApproval(namespace);
    approval.spec.hopId = refund.body.hopId;
    await create(admin, approval);
    await expect.poll(async () => (await agent.poll(refund.body.hopId)).body.decision, { timeout: 10_000 }).toBe('allow');
  });

  test('kubectl get ap shows the mode, Enforce when left out', async ({ admin, namespace }) => {
    const crd = await admin.makeApiClient(ApiextensionsV1Api).readCustomResourceDefinition({ name: 'agentpolicies.chainwarden.io' });
    expect(crd.spec.versions[0]?.additionalPrinterColumns?.find((c) => c.name === 'Mode')).toMatchObject({ jsonPath: '.spec.mode' });
    const stored = await create(admin, examplePolicy(namespace));
    expect(stored.spec.mode).toBe('Enforce');
  });
});
