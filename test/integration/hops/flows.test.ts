import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { readAuditRecords, verifyChains } from '../../../src/audit/verify.js';
import { exampleApproval } from '../../builders/examples.js';
import { brokerRequest } from '../../env/agents.js';
import { createRole, revocationPolicy } from '../../env/aws.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { boundExampleAgent, pendingRefund } from '../../env/hops.js';
import { create, grant } from '../../env/kube.js';
import { condition, readTask, waitForTask } from '../operator/helpers.js';

const bin = path.resolve(import.meta.dirname, '../../../bin/chainwarden.js');

describe('approvals', () => {
  test('a refund waits, a person approves it through the API server, and the hop is allowed', async ({ admin, env, namespace, userKubeConfig }) => {
    const agent = await boundExampleAgent(admin, env, namespace);
    const hopId = await pendingRefund(agent);
    expect((await agent.poll(hopId)).body).toMatchObject({ decision: 'pending_approval', reasons: [{ rule: 'refunds-need-a-human' }] });
    expect((await readTask(admin, namespace, 'ticket-4711'))?.status?.hops).toEqual({ allowed: 0, denied: 0, pending: 1 });

    await grant(admin, namespace, ['alice@example.com'], ['agentapprovals'], ['create', 'get']);
    const approval = exampleApproval(namespace);
    approval.spec.hopId = hopId;
    await create(await userKubeConfig('alice@example.com', ['support-leads']), approval);

    await expect.poll(async () => (await agent.poll(hopId)).body.decision, { timeout: 10_000 }).toBe('allow');
    expect((await agent.poll(hopId)).body.reasons).toEqual([{ rule: 'approval:ticket-4711-refund', effect: 'Allow' }]);
    const task = await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.hops?.allowed === 1);
    expect(task.status?.hops).toEqual({ allowed: 1, denied: 0, pending: 0 });
    expect(task.status?.pendingHops).toEqual([]);
  });

  test('a rejected approval denies the hop without ending the task', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace);
    const hopId = await pendingRefund(agent);
    const approval = exampleApproval(namespace);
    approval.spec.hopId = hopId;
    approval.spec.decision = 'Reject';
    await create(admin, approval);
    await expect.poll(async () => (await agent.poll(hopId)).body.decision, { timeout: 10_000 }).toBe('deny');
    expect((await readTask(admin, namespace, 'ticket-4711'))?.status?.state).toBe('Bound');
  });

  test('an approval is bound to its hop: an identical second refund still waits', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace);
    const first = await pendingRefund(agent, '7');
    const second = await pendingRefund(agent, '7');
    const approval = exampleApproval(namespace);
    approval.spec.hopId = first;
    await create(admin, approval);
    await expect.poll(async () => (await agent.poll(first)).body.decision, { timeout: 10_000 }).toBe('allow');
    expect((await agent.poll(second)).body.decision).toBe('pending_approval');
  });

  test('a waiting hop gets no credentials; an allowed one can', async ({ admin, env, namespace }) => {
    const roleArn = await createRole(env, `support-agent-${namespace}`);
    const agent = await boundExampleAgent(admin, env, namespace, {
      policy: (p) => void (p.spec.aws = { allowedRoleArns: [roleArn], allowDirect: true }),
      task: (t) => void (t.spec.credentials![0]!.aws = { ...t.spec.credentials![0]!.aws, roleArn, delivery: 'Direct' }),
    });
    const waiting = await agent.hop({ tool: 'payments', action: 'refund', resource: 'order/1', credential: 'default' });
    expect(waiting.body.decision).toBe('pending_approval');
    expect(waiting.body.credentials).toBeUndefined();
    const allowed = await agent.hop({ tool: 'tickets', action: 'read', resource: 'ticket/1', credential: 'default' });
    expect(allowed.body.decision).toBe('allow');
    expect(Object.keys(allowed.body.credentials ?? {}).sort()).toEqual(['AccessKeyId', 'Expiration', 'SecretAccessKey', 'Token']);
  });
});

describe('violations', () => {
  test('a denied hop under onViolation: Revoke ends the task and the agent\'s credentials are refused', async ({ admin, env, namespace }) => {
    const roleName = `support-agent-${namespace}`;
    const roleArn = await createRole(env, roleName);
    const agent = await boundExampleAgent(admin, env, namespace, {
      policy: (p) => void (p.spec.aws = { allowedRoleArns: [roleArn], allowDirect: true }),
      task: (t) => void (t.spec.credentials![0]!.aws = { ...t.spec.credentials![0]!.aws, roleArn, delivery: 'Direct' }),
    });
    expect((await brokerRequest(env, 'GET', '/v1/credentials', { token: agent.token })).status).toBe(200);
    const violating = await agent.hop({ tool: 'payments', action: 'admin.freeze', resource: 'account/9' });
    expect(violating.body).toMatchObject({ decision: 'deny', reasons: [{ rule: 'never-admin-payments', effect: 'Deny' }] });

    const violated = await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.state === 'Violated');
    expect(violated.status?.violation).toMatchObject({ hopId: violating.body.hopId, rule: 'never-admin-payments' });
    expect(condition(violated, 'Violated')).toMatchObject({ status: 'True', reason: 'PolicyViolation' });

    const next = await agent.hop({ tool: 'tickets', action: 'read', resource: 'ticket/1' });
    expect(next).toMatchObject({ status: 403, body: { error: { code: 'task_not_active' } } });
    const creds = await brokerRequest(env, 'GET', '/v1/credentials', { token: agent.token });
    expect(creds).toMatchObject({ status: 403, body: { error: { code: 'task_not_active' } } });
    await waitForTask(admin, namespace, 'ticket-4711', (t) => condition(t, 'Revoked')?.status === 'True');
    expect(JSON.stringify(await revocationPolicy(env, roleName))).toContain(`chainwarden-${violated.metadata.uid}`);
  });

  test('under onViolation: Deny only the hop is refused and the task goes on', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace, { policy: (p) => void (p.spec.onViolation = 'Deny') });
    expect((await agent.hop({ tool: 'payments', action: 'admin.freeze', resource: 'a' })).body.decision).toBe('deny');
    expect((await agent.hop({ tool: 'tickets', action: 'read', resource: 'ticket/1' })).body.decision).toBe('allow');
    const task = await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.hops?.denied === 1 && t.status.hops.allowed === 1);
    expect(task.status?.state).toBe('Bound');
  });
});

describe('hop requests', () => {
  test('malformed requests are 400s naming the field; oversized ones 413; anonymous ones 401', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace);
    expect(await agent.hop({ action: 'read' })).toMatchObject({ status: 400, body: { error: { code: 'invalid_hop', field: 'tool' } } });
    expect(await agent.hop({ tool: 'tickets', action: 'read', toool: 'x' })).toMatchObject({ status: 400, body: { error: { field: 'toool' } } });
    expect(await agent.hop({ tool: 'tickets', action: 'read', attributes: { nested: { a: 1 } } })).toMatchObject({ status: 400, body: { error: { field: 'attributes.nested' } } });
    expect(await agent.hop({ tool: 'tickets', action: 'read', parentHop: 'h1_AAAAAAAAAAAA_BBBBBBBBBBBBBBBB' })).toMatchObject({ status: 400, body: { error: { field: 'parentHop' } } });
    const big = await brokerRequest(env, 'POST', '/v1/hops', { token: agent.token, body: { tool: 'tickets', action: 'read', intent: 'x'.repeat(70_000) } });
    expect(big).toMatchObject({ status: 413, body: { error: { code: 'body_too_large' } } });
    expect((await brokerRequest(env, 'POST', '/v1/hops', { body: { tool: 'tickets', action: 'read' } })).status).toBe(401);
    expect((await brokerRequest(env, 'POST', '/v1/hops', { token: agent.token, body: '{not json' })).body).toMatchObject({ error: { code: 'invalid_json' } });
  });
});

describe('audit', () => {
  test('every step lands in one hash chain per task, matching the head in status; verify and trace read it', async ({ admin, env, namespace }) => {
    const roleArn = await createRole(env, `support-agent-${namespace}`);
    const agent = await boundExampleAgent(admin, env, namespace, {
      policy: (p) => void (p.spec.aws = { allowedRoleArns: [roleArn], allowDirect: true }),
      task: (t) => void (t.spec.credentials![0]!.aws = { ...t.spec.credentials![0]!.aws, roleArn, delivery: 'Direct' }),
    });
    await brokerRequest(env, 'GET', '/v1/credentials', { token: agent.token });
    const read = await agent.hop({ tool: 'tickets', action: 'read', resource: 'ticket/4711', intent: 'read the ticket' });
    await agent.hop({ tool: 'tickets', action: 'comment', resource: 'ticket/4711', parentHop: read.body.hopId });
    const refund = await pendingRefund(agent);
    const approval = exampleApproval(namespace);
    approval.spec.hopId = refund;
    await create(admin, approval);
    await expect.poll(async () => (await agent.poll(refund)).body.decision, { timeout: 10_000 }).toBe('allow');
    // After reading PII, email is exfiltration: a violation, and the task ends.
    await agent.hop({ tool: 'email', action: 'send', resource: 'customer', parentHop: read.body.hopId });
    const task = await waitForTask(admin, namespace, 'ticket-4711', (t) => condition(t, 'Revoked')?.status === 'True');
    // The revocation record is the last; the stream has it once the head covering it is written.
    const recordsOf = async () => readAuditRecords(await readFile(env.auditFile ?? '', 'utf8')).filter((r) => r.record.taskUid === task.metadata.uid);
    await expect.poll(async () => (await recordsOf()).some((r) => r.record.type === 'revocation'), { timeout: 10_000 }).toBe(true);
    const head = (await readTask(admin, namespace, 'ticket-4711'))?.status?.audit;
    const mine = await recordsOf();
    expect(verifyChains(mine).breaks).toEqual([]);
    expect(mine.at(-1)?.record.hash).toBe(head?.head);
    expect(mine.map((r) => r.record.type)).toEqual(
      expect.arrayContaining(['task_admitted', 'identity_bound', 'credential_issued', 'hop_decided', 'approval', 'violation', 'revocation']),
    );

    const dir = await mkdtemp(path.join(os.tmpdir(), 'audit-'));
    const file = path.join(dir, 'audit.jsonl');
    await writeFile(file, mine.map((r) => JSON.stringify({ audit: r.record })).join('\n'));
    const verify = spawnSync(process.execPath, [bin, 'audit', 'verify', file], { encoding: 'utf8' });
    expect(verify.status, verify.stdout + verify.stderr).toBe(0);

    const trace = spawnSync(process.execPath, [bin, 'trace', `${namespace}/ticket-4711`, file, '--kubeconfig', env.kubeconfig], { encoding: 'utf8' });
    expect(trace.status, trace.stdout + trace.stderr).toBe(0);
    expect(trace.stdout).toMatch(/chain verified: \d+ records/);
    expect(trace.stdout).toMatch(/tickets read ticket\/4711 → allow \[read-and-comment\]/);
    expect(trace.stdout).toMatch(/│ {2}[├└]─ .*tickets comment ticket\/4711 → allow/);
    expect(trace.stdout).toMatch(/payments refund order\/1 → pending_approval \[refunds-need-a-human\]/);
    expect(trace.stdout).toMatch(/approved by chainwarden-admin: "customer identity verified" → allow/);
    expect(trace.stdout).toMatch(/VIOLATION by hop .*email send customer was denied by no-exfiltration/);
    expect(trace.stdout).toMatch(/email send customer → deny \[no-exfiltration\]/);

    // Cut the last record off: the stream no longer reaches the head in status.
    await writeFile(file, mine.slice(0, -1).map((r) => JSON.stringify({ audit: r.record })).join('\n'));
    const truncated = spawnSync(process.execPath, [bin, 'trace', `${namespace}/ticket-4711`, file, '--kubeconfig', env.kubeconfig], { encoding: 'utf8' });
    expect(truncated.status).toBe(1);
    expect(truncated.stdout).toMatch(/records are missing \(truncated\)/);
  });
});
