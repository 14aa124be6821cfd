import { mkdtemp, readFile, symlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { readAuditRecords } from '../../../src/audit/verify.js';
import { boundExampleAgent, pendingRefund } from '../../env/hops.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { grant } from '../../env/kube.js';
import { waitForTask } from '../operator/helpers.js';
import { bin, kubeconfigFile, run, TASK } from './helpers.js';

describe('approvals from the terminal, as the kubeconfig user', () => {
  test('hops lists what waits with everything an approver needs; approve and reject create the AgentApproval as that user', async ({ admin, env, namespace, userKubeConfig }) => {
    const agent = await boundExampleAgent(admin, env, namespace);
    const read = await agent.hop({ tool: 'tickets', action: 'read', resource: 'ticket/7' });
    expect(read.body.decision).toBe('allow');
    const first = await agent.hop({ tool: 'payments', action: 'refund', resource: 'order/1', attributes: { amount: 42 }, intent: 'refund the double charge' });
    // The agent chose this resource to make the rejection's confirmation read as if another task's hop were rejected by someone else.
    const second = await pendingRefund(agent, '2) of prod/payments as cfo@example.com (');
    await waitForTask(admin, namespace, TASK, (t) => t.status?.pendingHops?.length === 2 && (t.status.recentHops?.length ?? 0) >= 1);
    await grant(admin, namespace, ['alice@example.com'], ['agentapprovals', 'agenttasks'], ['create', 'get', 'list']);
    const alice = await kubeconfigFile(await userKubeConfig('alice@example.com', ['support-leads']));

    const table = await run(['hops', '-n', namespace, TASK], { kubeconfig: alice });
    expect(table.code, table.stderr).toBe(0);
    const lines = table.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^HOP\s+DECISION\s+TOOL\s+ACTION\s+RESOURCE\s+ATTRIBUTES\s+INTENT\s+RULES\s+AGE$/);
    expect(lines.find((l) => l.startsWith(first.body.hopId))).toMatch(/pending\s+payments\s+refund\s+order\/1\s+amount=42\s+refund the double charge\s+refunds-need-a-human\s+\d+s$/);
    expect(lines.find((l) => l.startsWith(read.body.hopId))).toMatch(/allow\s+tickets\s+read\s+ticket\/7\s+-\s+-\s+read-and-comment/);

    // Every task in the namespace, waiting hops only, as JSON.
    const json = await run(['hops', '-n', namespace, '--pending', '-o', 'json'], { kubeconfig: alice });
    expect(json.code, json.stderr).toBe(0);
    const listed = JSON.parse(json.stdout) as { hops: { task: string; hopId: string; decision: string; attributes: Record<string, string> }[] };
    expect(listed.hops.map((h) => [h.task, h.hopId, h.decision]).sort()).toEqual([[TASK, first.body.hopId, 'pending'], [TASK, second, 'pending']].sort());

    const noReason = await run(['approve', `${namespace}/${TASK}`, first.body.hopId], { kubeconfig: alice });
    expect(noReason.code).toBe(1);
    expect(noReason.stderr).toMatch(/--reason is required/);

    const approved = await run(['approve', `${namespace}/${TASK}`, first.body.hopId, '--reason', 'customer verified by phone'], { kubeconfig: alice });
    expect(approved.code, approved.stderr).toBe(0);
    expect(approved.stdout).toMatch(new RegExp(`created: Approve hop ${first.body.hopId} \\(payments refund order/1 amount=42\\) of ${namespace}/${TASK} as alice@example.com`));
    await expect.poll(async () => (await agent.poll(first.body.hopId)).body.decision, { timeout: 10_000 }).toBe('allow');
    const record = async () =>
      readAuditRecords(await readFile(env.auditFile ?? '', 'utf8')).find((e) => e.record.task === `${namespace}/${TASK}` && e.record.type === 'approval' && e.record.data.hopId === first.body.hopId)?.record.data;
    await expect.poll(record, { timeout: 10_000 }).toMatchObject({ decision: 'Approve', reason: 'customer verified by phone', approver: { username: 'alice@example.com' } });

    // The hop is decided now: a second decision says how it was decided.
    await waitForTask(admin, namespace, TASK, (t) => (t.status?.pendingHops ?? []).every((h) => h.hopId !== first.body.hopId));
    const again = await run(['reject', `${namespace}/${TASK}`, first.body.hopId, '--reason', 'changed my mind'], { kubeconfig: alice });
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(new RegExp(`hop ${first.body.hopId} of AgentTask ${namespace}/${TASK} is not pending any more: it was decided allow by approval:${TASK}-approve-\\w+`));

    // As a kubectl plugin: kubectl runs kubectl-chainwarden from PATH; a symlink to the binary is the install.
    const plugin = path.join(await mkdtemp(path.join(os.tmpdir(), 'cw-plugin-')), 'kubectl-chainwarden');
    await symlink(bin, plugin);
    const rejected = await run(['reject', `${namespace}/${TASK}`, second, '--reason', 'no order 2 on file'], { kubeconfig: alice, as: plugin });
    expect(rejected.code, rejected.stderr).toBe(0);
    expect(rejected.stdout).toMatch(new RegExp(`created: Reject hop ${second} \\(payments refund "order/2\\) of prod/payments as cfo@example.com \\(" amount=42\\) of ${namespace}/${TASK} as alice@example.com`));
    await expect.poll(async () => (await agent.poll(second)).body.decision, { timeout: 10_000 }).toBe('deny');
    const usage = await run(['approve'], { kubeconfig: alice, as: plugin });
    expect(usage.stderr).toMatch(/kubectl chainwarden approve: the task is missing: name the task with its namespace, e\.g\. support\/ticket-4711\nuse: kubectl chainwarden approve NAMESPACE\/TASK HOP/);

    const unknownTask = await run(['approve', `${namespace}/no-such-task`, second, '--reason', 'x'], { kubeconfig: alice });
    expect(unknownTask.code).toBe(1);
    expect(unknownTask.stderr).toMatch(new RegExp(`AgentTask ${namespace}/no-such-task does not exist; list the tasks with: kubectl get agenttasks -n ${namespace}`));
    const unknownHop = await run(['approve', `${namespace}/${TASK}`, 'h1_nosuchhop', '--reason', 'x'], { kubeconfig: alice });
    expect(unknownHop.code).toBe(1);
    expect(unknownHop.stderr).toMatch(/hop h1_nosuchhop is not pending in .* nor among its recent hops.*chainwarden hops -n \S+ ticket-4711 --pending/);
  });

  test("a user RBAC refuses, and a user the policy's approvers leave out, get the API server's reason", async ({ admin, env, namespace, userKubeConfig }) => {
    const agent = await boundExampleAgent(admin, env, namespace, { policy: (p) => void (p.spec.approval = { ...p.spec.approval, approvers: { users: ['alice@example.com'] } }) });
    const hop = await pendingRefund(agent);
    await grant(admin, namespace, ['mallory@example.com'], ['agentapprovals', 'agenttasks'], ['create', 'get']);
    const mallory = await kubeconfigFile(await userKubeConfig('mallory@example.com'));
    const refused = await run(['approve', `${namespace}/${TASK}`, hop, '--reason', 'looks fine'], { kubeconfig: mallory });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/the API server refused the approval: .*mallory@example.com is not an approver under AgentPolicy support-agent/);

    const eve = await kubeconfigFile(await userKubeConfig('eve@example.com'));
    const forbidden = await run(['approve', `${namespace}/${TASK}`, hop, '--reason', 'looks fine'], { kubeconfig: eve });
    expect(forbidden.code).toBe(1);
    expect(forbidden.stderr).toMatch(/the API server refused: .*forbidden.*\nask a cluster admin for RBAC allowing get agenttasks.chainwarden.io/s);
    const task = await waitForTask(admin, namespace, TASK, (t) => (t.status?.pendingHops?.length ?? 0) === 1);
    expect(task.status?.pendingHops?.[0]?.hopId).toBe(hop);
  });
});
