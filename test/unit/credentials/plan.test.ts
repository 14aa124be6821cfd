import { describe, expect, it } from 'vitest';
import type { AgentTask } from '../../../src/api/schema.js';
import { AWS_RETRY_MAX_MS, planCredentialDuration, planAwsRetry, roleNameOf, roleSessionName } from '../../../src/credentials/plan.js';
import { outstandingDeny } from '../../../src/credentials/revocation.js';
import { planRevocationPolicy } from '../../../src/credentials/revoke.js';
import { parseAgentPolicy, parseAgentTask } from '../../../src/api/parse.js';
import { examplePolicy, exampleTask } from '../../builders/examples.js';

const MIN = 60_000;

describe('planCredentialDuration', () => {
  const now = 0;
  it.each([
    { name: 'until the deadline', deadline: 40 * MIN, expected: 40 * 60 },
    { name: 'never under the STS floor, even close to the deadline', deadline: 5 * MIN, expected: 900 },
    { name: 'never past the policy maximum', deadline: 5 * 60 * MIN, policyMax: '1h', expected: 3600 },
    { name: 'what was asked for', deadline: 60 * MIN, requested: '20m', expected: 1200 },
    { name: 'asked for more than the policy allows', deadline: 600 * MIN, requested: '3h', policyMax: '2h', expected: 7200 },
    { name: 'asked for more than is left until the deadline: until the deadline', deadline: 40 * MIN, requested: '12h', policyMax: '12h', expected: 40 * 60 },
    { name: 'asked for more close to the deadline: the STS floor', deadline: 5 * MIN, requested: '1h', expected: 900 },
    { name: 'never past 12 h', deadline: 48 * 60 * MIN, expected: 43_200 },
    { name: 'never past the role maximum', deadline: 48 * 60 * MIN, roleMaxSeconds: 7200, expected: 7200 },
  ])('$name', ({ deadline, requested, policyMax, roleMaxSeconds, expected }) => {
    expect(planCredentialDuration({ deadline, now, requested, policyMax, roleMaxSeconds })).toBe(expected);
  });
});

describe('planAwsRetry', () => {
  it('doubles with each failure in a row, from 1–2 s up to 15–30 s, never below half its step', () => {
    const low = [1, 2, 3, 4, 5, 6, 9].map((f) => planAwsRetry(f, () => 0));
    const high = [1, 2, 3, 4, 5, 6, 9].map((f) => planAwsRetry(f, () => 1));
    expect(low).toEqual([1_000, 2_000, 4_000, 8_000, 15_000, 15_000, 15_000]);
    expect(high).toEqual([2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]);
  });
  it('spreads credentials that failed together', () => {
    const waits = new Set(Array.from({ length: 50 }, () => planAwsRetry(3)));
    expect(waits.size).toBeGreaterThan(10);
    for (const w of waits) expect(w).toBeGreaterThanOrEqual(4_000);
    expect(Math.max(...waits)).toBeLessThanOrEqual(AWS_RETRY_MAX_MS);
  });
});

describe('session naming', () => {
  const task = { metadata: { name: 'a'.repeat(80), namespace: 'support', uid: 'u-1' } } as AgentTask;
  it('is deterministic, within 64 characters and STS\'s alphabet', () => {
    const name = roleSessionName(task, 'default');
    expect(name).toBe(roleSessionName(task, 'default'));
    expect(name.length).toBeLessThanOrEqual(64);
    expect(name).toMatch(/^[\w+=,.@-]+$/);
    expect(roleSessionName({ ...task, metadata: { ...task.metadata, uid: 'u-2' } }, 'default')).not.toBe(name);
  });
  it('takes the role name from an ARN with a path', () => {
    expect(roleNameOf('arn:aws:iam::123456789012:role/agents/support')).toBe('support');
  });
});

describe('revocation policy', () => {
  const now = Date.parse('2026-11-21T10:00:00Z');
  const owe = (marker: string, pruneAfter: number) => ({ marker, pruneAfter, since: now });
  const write = (text: string | undefined, entries: ReturnType<typeof owe>[], at = now, budget?: number) => {
    const plan = planRevocationPolicy(text, entries, at, budget);
    if (!plan.fits) throw new Error('does not fit');
    return { ...plan, text: plan.document && JSON.stringify(plan.document) };
  };

  it('groups markers by prune time and keeps a marker once', () => {
    let text: string | undefined;
    for (const marker of ['chainwarden-a', 'chainwarden-b', 'chainwarden-a']) text = write(text, [owe(marker, now + 60 * MIN)]).text;
    const doc = JSON.parse(text ?? '{}') as { Statement: { Sid: string; Condition: { StringEquals: Record<string, string[]> } }[] };
    expect(doc.Statement).toHaveLength(1);
    expect(doc.Statement[0]?.Condition.StringEquals['aws:SourceIdentity']).toEqual(['chainwarden-a', 'chainwarden-b']);
    expect(Number(/(\d+)$/.exec(doc.Statement[0]?.Sid ?? '')?.[1]) * 1000).toBeGreaterThanOrEqual(now + 60 * MIN);
  });

  it('drops entries once every session they cover has expired, keeps statements that are not ours, and deletes a policy left empty', () => {
    const mine = write(undefined, [owe('chainwarden-a', now + MIN)]).document!;
    mine.Statement.push({ Sid: 'TeamRule', Effect: 'Deny', Action: '*', Resource: '*', Condition: {} });
    const later = write(JSON.stringify(mine), [], now + 11 * MIN);
    expect(later.document?.Statement).toEqual([{ Sid: 'TeamRule', Effect: 'Deny', Action: '*', Resource: '*', Condition: {} }]);
    expect(write(write(undefined, [owe('chainwarden-a', now + MIN)]).text, [], now + 11 * MIN)).toMatchObject({ document: undefined, changed: true });
  });

  it('collapses into one cutoff on every older chainwarden session when IAM\'s size limit is reached', () => {
    let text: string | undefined;
    let collapsed = false;
    for (let i = 0; i < 400 && !collapsed; i++) ({ text, collapsed } = write(text, [owe(`chainwarden-${String(i).padStart(36, '0')}`, now + 60 * MIN)]));
    expect(collapsed).toBe(true);
    expect(text!.length).toBeLessThan(10_240);
    const doc = JSON.parse(text!) as { Statement: { Condition: Record<string, Record<string, string>> }[] };
    expect(doc.Statement).toHaveLength(1);
    expect(doc.Statement[0]?.Condition).toEqual({ StringLike: { 'aws:SourceIdentity': 'chainwarden-*' }, DateLessThan: { 'aws:TokenIssueTime': new Date(now).toISOString() } });
  });
});

describe('outstandingDeny: what the leader re-asserts for a revoked task, from its status alone', () => {
  const revokedAt = Date.parse('2026-11-21T10:00:00Z');
  const revoked = (status: AgentTask['status']) => ({ ...parseAgentTask(exampleTask('support')), metadata: { name: 'ticket-4711', namespace: 'support', uid: 'u-1' }, status }) as AgentTask;
  const policy = parseAgentPolicy(examplePolicy('support'));

  it('owes the deny on every role of the task until its longest session, counted from the revocation, has expired', () => {
    const task = revoked({ credentials: { revokedAt: new Date(revokedAt).toISOString(), awsDenyInPlace: true } });
    const owed = outstandingDeny(task, policy, revokedAt + 10 * MIN);
    expect(owed).toMatchObject({ marker: 'chainwarden-u-1', roles: [roleNameOf(task.spec.credentials![0]!.aws.roleArn)] });
    // The example task's 15-minute sessions plus 5 minutes of skew.
    expect(owed?.pruneAfter).toBe(revokedAt + 20 * MIN);
    expect(outstandingDeny(task, policy, revokedAt + 21 * MIN)).toBeUndefined();
  });

  it('owes nothing for a task whose deny was never written or that was never revoked', () => {
    expect(outstandingDeny(revoked({ credentials: { revokedAt: new Date(revokedAt).toISOString(), awsDenyInPlace: false } }), policy, revokedAt)).toBeUndefined();
    expect(outstandingDeny(revoked({ state: 'Bound' }), policy, revokedAt)).toBeUndefined();
  });
});
