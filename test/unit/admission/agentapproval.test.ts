import { describe, expect, it } from 'vitest';
import { approvalHopDigestPlugin, approvalValidationPlugin, honoredApprovals } from '../../../src/admission/plugins/agentapproval.js';
import type { AdmissionRequest } from '../../../src/admission/review.js';
import type { AgentApproval, AgentTask } from '../../../src/api/schema.js';
import { examplePolicy } from '../../builders/examples.js';

/**
 * What admission makes of an AgentApproval's binding to its hop: the digest and the rules the
 * hop waits for are the pending hop's, whatever the body says.
 */

const waiting = { hopId: 'h1_wait', digest: 'd'.repeat(64), tool: 'aws:s3', action: 's3:PutObject', resource: 'arn:aws:s3:::b/outbox/x', depth: 1, rules: ['outbox-needs-a-human'], requestedAt: '2026-11-21T10:00:00Z', timeoutAt: '2026-11-21T10:15:00Z' };
const task = { apiVersion: 'chainwarden.io/v1alpha1', kind: 'AgentTask', metadata: { name: 't', namespace: 'support' }, spec: { serviceAccountName: 'agent', policyRef: { name: 'support-agent' }, ttl: '1h' }, status: { pendingHops: [waiting] } } as AgentTask;
const alice = { username: 'alice@example.com', groups: ['support-leads'] };

const approval = (spec: Partial<AgentApproval['spec']> = {}): AgentApproval => ({
  apiVersion: 'chainwarden.io/v1alpha1',
  kind: 'AgentApproval',
  metadata: { name: 'ok', namespace: 'support' },
  spec: { taskRef: { name: 't' }, hopId: 'h1_wait', decision: 'Approve', approver: { username: alice.username, groups: alice.groups }, ...spec },
});

const request = (object: AgentApproval): AdmissionRequest => ({
  uid: 'u',
  kind: { group: 'chainwarden.io', version: 'v1alpha1', kind: 'AgentApproval' },
  resource: { group: 'chainwarden.io', version: 'v1alpha1', resource: 'agentapprovals' },
  operation: 'CREATE',
  namespace: 'support',
  userInfo: alice,
  object,
});

const tasks = { get: (_ns: string, name: string) => Promise.resolve(name === 't' ? task : undefined) };
const validate = approvalValidationPlugin({ tasks, policies: { get: () => Promise.resolve(examplePolicy('support')) }, approvals: () => Promise.resolve([]), podsMadeBy: () => Promise.resolve([]) });

describe('a service account of the task\'s own namespace, named by the policy as an approver', () => {
  const bot = { username: 'system:serviceaccount:support:ci-bot', groups: ['system:serviceaccounts', 'system:serviceaccounts:support'] };
  const policy = examplePolicy('support');
  policy.spec.approval = { approvers: { users: [bot.username, 'system:serviceaccount:ops:release-bot'] } };
  const asked: string[] = [];
  const checker = (made: string[] | undefined) =>
    approvalValidationPlugin({
      tasks,
      policies: { get: () => Promise.resolve(policy) },
      approvals: () => Promise.resolve([]),
      podsMadeBy: (ns, sa) => {
        asked.push(`${ns}/${sa}`);
        return Promise.resolve(made);
      },
    });
  const byBot = () => ({ ...request(approval({ hopDigest: waiting.digest, hopRules: ['outbox-needs-a-human'], approver: bot })), userInfo: bot });

  it('decides while the task\'s service account can create no pod there', async () => {
    expect(await checker([]).admit(byBot())).toMatchObject({ allowed: true });
    expect(asked).toContain(`support/${task.spec.serviceAccountName}`);
  });

  it('is refused once the task\'s service account may create pods or a workload there, which could run as the approver', async () => {
    const verdict = await checker(['jobs']).admit(byBot());
    expect(verdict).toMatchObject({ allowed: false, message: expect.stringMatching(/spec\.approver: system:serviceaccount:support:ci-bot is a service account of the task's own namespace, where the task's service account system:serviceaccount:support:\S+ may create jobs and so run a pod as system:serviceaccount:support:ci-bot: the agent would decide its own hops\. Name an approver outside namespace support/) as unknown });
  });

  it('is refused when the operator cannot ask, and one from another namespace is not asked about', async () => {
    expect(await checker(undefined).admit(byBot())).toMatchObject({ allowed: false, message: expect.stringContaining('grant the operator create on subjectaccessreviews') as unknown });
    const elsewhere = { username: 'system:serviceaccount:ops:release-bot', groups: ['system:serviceaccounts'] };
    asked.length = 0;
    expect(await checker(['pods']).admit({ ...request(approval({ hopDigest: waiting.digest, hopRules: ['outbox-needs-a-human'], approver: elsewhere })), userInfo: elsewhere })).toMatchObject({ allowed: true });
    expect(asked).toEqual([]);
  });
});

describe('an AgentApproval is bound to its hop by admission', () => {
  it('the stamp replaces the digest and the rules a body claims with the pending hop\'s', async () => {
    const verdict = await approvalHopDigestPlugin(tasks).admit(request(approval({ hopDigest: 'e'.repeat(64), hopRules: ['outbox-needs-a-human', 'outbox-after-customer-data-needs-a-lead'] })));
    expect(verdict).toEqual({
      allowed: true,
      patch: [
        { op: 'add', path: '/spec/hopDigest', value: waiting.digest },
        { op: 'add', path: '/spec/hopRules', value: ['outbox-needs-a-human'] },
      ],
    });
  });

  it('rules other than the hop\'s are refused, naming the field; the hop\'s own pass', async () => {
    const wider = await validate.admit(request(approval({ hopDigest: waiting.digest, hopRules: ['outbox-needs-a-human', 'outbox-after-customer-data-needs-a-lead'] })));
    expect(wider).toMatchObject({ allowed: false, message: expect.stringContaining('spec.hopRules: is set by admission from the rules the pending hop waits for (outbox-needs-a-human) and cannot be chosen') as unknown });
    expect(await validate.admit(request(approval({ hopDigest: waiting.digest, hopRules: [] })))).toMatchObject({ allowed: false });
    expect(await validate.admit(request(approval({ hopDigest: waiting.digest, hopRules: ['outbox-needs-a-human'] })))).toMatchObject({ allowed: true });
  });

  it('a hop whose body is sent unhashed cannot be approved, only rejected: no approval could bind what it would release', async () => {
    const unhashed = { ...waiting, attributes: { payloadSha256: 'UNSIGNED-PAYLOAD' } };
    const checker = approvalValidationPlugin({ tasks: { get: () => Promise.resolve({ ...task, status: { pendingHops: [unhashed] } }) }, policies: { get: () => Promise.resolve(examplePolicy('support')) }, approvals: () => Promise.resolve([]), podsMadeBy: () => Promise.resolve([]) });
    const refused = await checker.admit(request(approval({ hopDigest: waiting.digest, hopRules: ['outbox-needs-a-human'] })));
    expect(refused).toMatchObject({ allowed: false, message: expect.stringContaining('spec.decision: hop h1_wait sends its body unhashed (x-amz-content-sha256 UNSIGNED-PAYLOAD)') as unknown });
    expect(await checker.admit(request(approval({ hopDigest: waiting.digest, hopRules: ['outbox-needs-a-human'], decision: 'Reject' })))).toMatchObject({ allowed: true });
    // Hashed, it is approved as any hop is.
    const hashed = approvalValidationPlugin({ tasks: { get: () => Promise.resolve({ ...task, status: { pendingHops: [{ ...waiting, attributes: { payloadSha256: 'a'.repeat(64) } }] } }) }, policies: { get: () => Promise.resolve(examplePolicy('support')) }, approvals: () => Promise.resolve([]), podsMadeBy: () => Promise.resolve([]) });
    expect(await hashed.admit(request(approval({ hopDigest: waiting.digest, hopRules: ['outbox-needs-a-human'] })))).toMatchObject({ allowed: true });
  });

  it('a hop the stamp cannot find gets no rules, so a validation that then finds it (a watch caught up) refuses the approval rather than take it for one from an earlier CRD', async () => {
    const gone = { get: () => Promise.resolve({ ...task, status: { pendingHops: [] } }) };
    expect(await approvalHopDigestPlugin(gone).admit(request(approval({ hopDigest: waiting.digest })))).toEqual({ allowed: true, patch: [{ op: 'add', path: '/spec/hopRules', value: [] }] });
    expect(await validate.admit(request(approval({ hopDigest: waiting.digest, hopRules: [] })))).toMatchObject({ allowed: false, message: expect.stringContaining('create the approval again without it') as unknown });
  });

  it('an approval whose rules an earlier CRD pruned is admitted: it lifts what holds its call, as approvals did', async () => {
    expect(await validate.admit(request(approval({ hopDigest: waiting.digest })))).toMatchObject({ allowed: true });
  });

  describe('what the API server stores, the webhook judges: it counts a string as the API server does, and refuses what it cannot read', () => {
    // 600 emoji: 600 characters to the API server (a reason takes 1,024), 1,200 UTF-16 code units to JavaScript.
    const longReason = '\u{1F600}'.repeat(600);
    const agent = { username: 'system:serviceaccount:support:agent', groups: ['system:serviceaccounts', 'system:serviceaccounts:support'] };

    it("a reason of emoji does not carry the task's own service account past the approver check", async () => {
      const byAgent = { ...request(approval({ hopDigest: waiting.digest, hopRules: ['outbox-needs-a-human'], reason: longReason, approver: agent })), userInfo: agent };
      expect(await validate.admit(byAgent)).toMatchObject({ allowed: false, message: expect.stringContaining('spec.approver') as unknown });
      // From someone who may approve, the same reason is admitted: it is one the API server stores.
      expect(await validate.admit(request(approval({ hopDigest: waiting.digest, hopRules: ['outbox-needs-a-human'], reason: longReason })))).toMatchObject({ allowed: true });
    });

    it('an object the webhook cannot read is refused, naming the field, never let through unjudged', async () => {
      const unreadable = await validate.admit(request(approval({ hopDigest: waiting.digest, reason: '\u{1F600}'.repeat(1025) })));
      expect(unreadable).toMatchObject({ allowed: false, message: expect.stringMatching(/^AgentApproval rejected: spec\.reason: .*as chainwarden's admission webhook reads it; it judges only what it can read/) as unknown });
    });
  });

  it("the broker honours only approvals whose approver may decide the task's hops now: one that got past admission, or whose approver the policy dropped, releases nothing", () => {
    const policy = examplePolicy('support');
    policy.spec.approval = { approvers: { groups: ['support-leads'] } };
    const agent = { username: 'system:serviceaccount:support:agent', groups: ['system:serviceaccounts'] };
    const byAlice = approval({ approver: alice });
    const byAgent = { ...approval({ approver: agent }), metadata: { name: 'forged', namespace: 'support' } };
    const unstamped = { ...approval(), metadata: { name: 'unstamped', namespace: 'support' } };
    delete (unstamped.spec as { approver?: unknown }).approver;
    const otherTask = { ...approval({ approver: agent, taskRef: { name: 'gone' } }), metadata: { name: 'elsewhere', namespace: 'support' } };
    const refused: string[] = [];
    const honoured = honoredApprovals([byAlice, byAgent, unstamped, otherTask], (name) => (name === 't' ? task : undefined), () => policy, (a, why) => refused.push(`${a.metadata.name ?? ''}: ${why}`));
    expect(honoured.map((a) => a.metadata.name)).toEqual(['ok', 'elsewhere']);
    expect(refused).toEqual([expect.stringMatching(/^forged: .*the task's own service account/), expect.stringMatching(/^unstamped: it names no approver/)]);
    // Alice dropped from the policy's approvers: her approval no longer releases anything.
    policy.spec.approval = { approvers: { groups: ['payments-leads'] } };
    expect(honoredApprovals([byAlice], () => task, () => policy, () => undefined)).toEqual([]);
  });
});
