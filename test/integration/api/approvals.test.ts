import { readFile } from 'node:fs/promises';
import { CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import type { AgentApproval } from '../../../src/api/schema.js';
import { rawRequest } from '../../../src/kube/raw.js';
import { claimApproval, releaseApproval } from '../../../src/kube/approvals.js';
import { APPROVAL_USED_BY } from '../../../src/broker/gateway-hops.js';
import { readAuditRecords } from '../../../src/audit/verify.js';
import { exampleApproval, examplePolicy, exampleTask } from '../../builders/examples.js';
import { boundExampleAgent, pendingRefund } from '../../env/hops.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { create, grant, objectsApi, read, rejection } from '../../env/kube.js';
import { waitForTask } from '../operator/helpers.js';

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

/** A kubeconfig holding a service account's API token from the real TokenRequest API. */
async function serviceAccountKubeConfig(admin: KubeConfig, namespace: string, name: string): Promise<KubeConfig> {
  const core = admin.makeApiClient(CoreV1Api);
  await core.createNamespacedServiceAccount({ namespace, body: { metadata: { name } } }).catch(() => undefined);
  const token = (await core.createNamespacedServiceAccountToken({ namespace, name, body: { spec: { audiences: [], expirationSeconds: 600 } } })).status?.token ?? '';
  const cluster = admin.getCurrentCluster();
  if (!cluster) throw new Error('the admin kubeconfig has no cluster');
  const kc = new KubeConfig();
  kc.loadFromOptions({ clusters: [cluster], users: [{ name, token }], contexts: [{ name, cluster: cluster.name, user: name }], currentContext: name });
  return kc;
}

const approvalOf = (namespace: string, name: string, hopId: string, decision: 'Approve' | 'Reject' = 'Approve'): AgentApproval => {
  const a = exampleApproval(namespace);
  a.metadata.name = name;
  a.spec.hopId = hopId;
  a.spec.decision = decision;
  return a;
};

describe('approvals are made by approvers', () => {
  test('only the users and groups the policy names may decide; the refusal says who may', async ({ admin, env, namespace, userKubeConfig }) => {
    const agent = await boundExampleAgent(admin, env, namespace, { policy: (p) => void (p.spec.approval = { timeout: '15m', approvers: { users: ['alice@example.com'], groups: ['payments-leads'] } }) });
    const [one, two, three] = [await pendingRefund(agent, '1'), await pendingRefund(agent, '2'), await pendingRefund(agent, '3')];
    await grant(admin, namespace, ['alice@example.com', 'bob@example.com', 'carol@example.com'], ['agentapprovals'], ['create', 'get']);
    const bob = await userKubeConfig('bob@example.com', ['finance']);
    const refused = await rejection(bob, approvalOf(namespace, 'by-bob', one));
    expect(refused).toContain('spec.approver');
    expect(refused).toMatch(/bob@example.com is not an approver under AgentPolicy support-agent: spec.approval.approvers names users \[alice@example.com\] and groups \[payments-leads\]/);
    await create(await userKubeConfig('alice@example.com'), approvalOf(namespace, 'by-alice', two));
    await create(await userKubeConfig('carol@example.com', ['payments-leads']), approvalOf(namespace, 'by-carol', three, 'Reject'));
    await expect.poll(async () => (await agent.poll(two)).body.decision, { timeout: 10_000 }).toBe('allow');
    await expect.poll(async () => (await agent.poll(three)).body.decision, { timeout: 10_000 }).toBe('deny');
    expect((await agent.poll(one)).body.decision).toBe('pending_approval');
  });

  test('service accounts never decide unless the policy names them, and the task\'s own never does', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace);
    const hop = await pendingRefund(agent);
    const own = `system:serviceaccount:${namespace}:support-agent`;
    const bot = `system:serviceaccount:${namespace}:ci-bot`;
    // A careless Role lets both service accounts create approvals.
    await grant(admin, namespace, [own, bot], ['agentapprovals'], ['create', 'get']);
    const agentItself = await serviceAccountKubeConfig(admin, namespace, 'support-agent');
    expect(await rejection(agentItself, approvalOf(namespace, 'self', hop))).toMatch(new RegExp(`${own} is the task's own service account: an agent never decides its own hops`));
    // Nor with a reason of 600 emoji: 600 characters to the API server, 1,200 UTF-16 code units to JavaScript.
    const emoji = approvalOf(namespace, 'self-emoji', hop);
    emoji.spec.reason = '\u{1F600}'.repeat(600);
    expect(await rejection(agentItself, emoji)).toMatch(/an agent never decides its own hops/);
    const ciBot = await serviceAccountKubeConfig(admin, namespace, 'ci-bot');
    expect(await rejection(ciBot, approvalOf(namespace, 'bot', hop))).toMatch(/is a service account, and service accounts decide hops only when AgentPolicy support-agent names them in spec.approval.approvers.users/);
    // Named by the policy, the bot may decide; the task's own account still may not.
    const policy = await read(admin, examplePolicy(namespace));
    policy.spec.approval = { timeout: '15m', approvers: { users: [bot, own] } };
    await objectsApi(admin).replace(policy as never);
    await expect.poll(async () => create(ciBot, approvalOf(namespace, 'bot', hop)).then(() => 'created', (e: Error) => e.message), { timeout: 10_000 }).toBe('created');
    expect(await rejection(agentItself, approvalOf(namespace, 'self-again', hop))).toMatch(/an agent never decides its own hops/);
    await expect.poll(async () => (await agent.poll(hop)).body.decision, { timeout: 10_000 }).toBe('allow');
    // Once the agent's account may create Jobs there, a Job of its own could run as the bot and approve: the bot decides no more.
    const next = await pendingRefund(agent, '8');
    await grant(admin, namespace, [own], ['jobs'], ['create'], 'batch');
    expect(await rejection(ciBot, approvalOf(namespace, 'bot-again', next))).toMatch(new RegExp(`${bot} is a service account of the task's own namespace, where the task's service account ${own} may create jobs and so run a pod as ${bot}`));
  });

  test('a second approval for the same hop is refused, naming the first', async ({ admin, env, namespace, userKubeConfig }) => {
    const agent = await boundExampleAgent(admin, env, namespace);
    const hop = await pendingRefund(agent);
    await grant(admin, namespace, ['alice@example.com', 'mallory@example.com'], ['agentapprovals'], ['create', 'get']);
    await create(await userKubeConfig('alice@example.com'), approvalOf(namespace, 'reject-it', hop, 'Reject'));
    const second = await rejection(await userKubeConfig('mallory@example.com'), approvalOf(namespace, 'approve-it', hop));
    expect(second).toMatch(/spec.hopId: hop .* is already decided by AgentApproval reject-it \(Reject by alice@example.com\); a hop takes one decision/);
    await expect.poll(async () => (await agent.poll(hop)).body.decision, { timeout: 10_000 }).toBe('deny');
  });

  test('the waiting hop and its audit record show the attributes and intent the approver approves', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace);
    const answer = await agent.hop({ tool: 'payments', action: 'refund', resource: 'order/7', attributes: { amount: 4200, currency: 'EUR' }, intent: 'refund the duplicate charge on order 7' });
    expect(answer.body.decision).toBe('pending_approval');
    const task = await waitForTask(admin, namespace, 'ticket-4711', (t) => (t.status?.pendingHops ?? []).length === 1);
    expect(task.status?.pendingHops?.[0]).toMatchObject({ hopId: answer.body.hopId, attributes: { amount: '4200', currency: 'EUR' }, intent: 'refund the duplicate charge on order 7' });
    await expect
      .poll(async () => readAuditRecords(await readFile(env.auditFile ?? '', 'utf8')).find((e) => e.record.taskUid === task.metadata.uid && e.record.data.hopId === answer.body.hopId)?.record.data, { timeout: 10_000 })
      .toMatchObject({ decision: 'pending_approval', attributes: { amount: '4200', currency: 'EUR' }, intent: 'refund the duplicate charge on order 7' });
  });
});

describe('an approval is spent once, and only the operator says so', () => {
  test('a tenant who may update approvals can neither set nor clear nor change the mark that spends one; other annotations are theirs', async ({ admin, env, namespace, userKubeConfig }) => {
    const agent = await boundExampleAgent(admin, env, namespace);
    await grant(admin, namespace, ['alice@example.com', 'mallory@example.com'], ['agentapprovals'], ['create', 'get', 'update', 'patch']);
    const alice = await userKubeConfig('alice@example.com');
    const mallory = await userKubeConfig('mallory@example.com');
    const refused = /the chainwarden\.io\/used-by annotation marks an AgentApproval spent and is written by the chainwarden operator \(system:serviceaccount:chainwarden-system:chainwarden\) only; mallory@example\.com may not set, change or remove it/;

    // Spent before the agent could use it: refused at creation.
    const approval = exampleApproval(namespace);
    approval.spec.hopId = await pendingRefund(agent);
    approval.metadata.annotations = { [APPROVAL_USED_BY]: 'someone-else' };
    expect(await rejection(mallory, approval)).toMatch(/may not set, change or remove it/);
    delete approval.metadata.annotations;
    await create(alice, approval);

    const path = `/apis/chainwarden.io/v1alpha1/namespaces/${namespace}/agentapprovals/${approval.metadata.name ?? ''}`;
    const annotate = (kc: typeof admin, value: string | null) => rawRequest(kc, 'PATCH', path, { metadata: { annotations: { [APPROVAL_USED_BY]: value } } }, 'application/merge-patch+json');
    const spend = await annotate(mallory, 'mallory-pod@2026-01-01T00:00:00Z');
    expect(spend.status).toBe(403);
    expect(JSON.stringify(spend.body)).toMatch(refused);

    // The operator's claim (here the admin, whom this environment lets write what the operator writes).
    expect((await annotate(admin, 'agent-pod@2026-01-01T00:00:00Z')).status).toBe(200);
    for (const value of [null, 'mallory-pod@2026-01-01T00:00:00Z']) {
      const replay = await annotate(mallory, value);
      expect(replay.status, String(value)).toBe(403);
      expect(JSON.stringify(replay.body)).toMatch(refused);
    }
    expect((await read(admin, approval)).metadata.annotations?.[APPROVAL_USED_BY]).toBe('agent-pod@2026-01-01T00:00:00Z');

    const note = await rawRequest(mallory, 'PATCH', path, { metadata: { annotations: { 'team.example.com/ticket': 'SUP-4711' } } }, 'application/merge-patch+json');
    expect(note.status, JSON.stringify(note.body)).toBe(200);
  });

  test('the operator claims an approval for one call of all those racing for it, and only that call\'s release gives it back', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace);
    const approval = exampleApproval(namespace);
    approval.spec.hopId = await pendingRefund(agent);
    await create(admin, approval);
    // Five calls on as many replicas race for it: the conditional patch lets exactly one win.
    const callers = Array.from({ length: 5 }, (_, i) => `agent-0@2026-11-21T10:00:0${i}.000Z`);
    const won = await Promise.all(callers.map((by) => claimApproval(admin, approval, by)));
    expect(won.filter(Boolean)).toHaveLength(1);
    const winner = callers[won.indexOf(true)] ?? '';
    expect((await read(admin, approval)).metadata.annotations?.[APPROVAL_USED_BY]).toBe(winner);
    // A call that lost gives back nothing: the mark is the winner's.
    for (const loser of callers.filter((by) => by !== winner)) expect(await releaseApproval(admin, approval, loser)).toBe(false);
    expect((await read(admin, approval)).metadata.annotations?.[APPROVAL_USED_BY]).toBe(winner);
    // The winner's call did not go through: its release unmarks the approval, which the next try claims again.
    expect(await releaseApproval(admin, approval, winner)).toBe(true);
    expect((await read(admin, approval)).metadata.annotations?.[APPROVAL_USED_BY]).toBeUndefined();
    expect(await releaseApproval(admin, approval, winner)).toBe(false);
    expect(await claimApproval(admin, approval, 'agent-0@2026-11-21T10:00:09.000Z')).toBe(true);
    expect((await read(admin, approval)).metadata.annotations?.[APPROVAL_USED_BY]).toBe('agent-0@2026-11-21T10:00:09.000Z');
  });
});
