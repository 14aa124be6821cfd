import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ChainwardenError } from '../../../src/errors.js';
import { InMemoryIam, policySize, type IamPort } from '../../../src/credentials/iam.js';
import { silentLogger } from '../../../src/log.js';
import { denies, planRevocationPolicy, REVOCATION_POLICY, RevocationPolicyFullError, Revoker } from '../../../src/credentials/revoke.js';
import { revokeTask } from '../../../src/credentials/revocation.js';
import { parseAgentTask } from '../../../src/api/parse.js';
import type { AgentTask } from '../../../src/api/schema.js';
import { exampleTask } from '../../builders/examples.js';

const MIN = 60_000;
const ROLE = 'support-agent';
const T0 = Date.parse('2026-11-21T10:00:00Z');
const noWait = { sleep: () => Promise.resolve() };
const marker = (i: number) => `chainwarden-${String(i).padStart(8, '0')}-1111-2222-3333-444455556666`;
const clockAt = (now = T0) => ({ now: () => now });
const policyOf = (iam: InMemoryIam) => iam.policies.get(`${ROLE}/${REVOCATION_POLICY}`);
const statementsOf = (iam: InMemoryIam) => (JSON.parse(policyOf(iam) ?? '{"Statement":[]}') as { Statement: unknown[] }).Statement;

/** Statements chainwarden did not write, in shapes IAM accepts: no Sid, no Condition, another Effect, our Sid prefix on someone else's rule. */
const FOREIGN = [
  { Effect: 'Deny', Action: 's3:DeleteBucket', Resource: '*' },
  { Sid: 'BreakGlass', Effect: 'Allow', Action: 'logs:*', Resource: '*' },
  { Sid: 'ChainwardenRevokedByHand', Effect: 'Deny', Action: 'iam:*', Resource: '*', Condition: { Bool: { 'aws:MultiFactorAuthPresent': 'false' } } },
  { Sid: 'ChainwardenRevoked1', Effect: 'Allow', Action: 'sqs:*', Resource: '*' },
];

describe('statements chainwarden did not write', () => {
  it.each([
    { name: 'a Statement that is one object, without Sid or Condition', doc: { Version: '2012-10-17', Statement: FOREIGN[0] } },
    { name: 'statements of every other shape, beside ours', doc: { Version: '2012-10-17', Statement: FOREIGN } },
  ])('$name: deny and prune neither crash nor touch them', async ({ doc }) => {
    const iam = new InMemoryIam();
    iam.policies.set(`${ROLE}/${REVOCATION_POLICY}`, JSON.stringify(doc, null, 2));
    const foreign = ([] as unknown[]).concat(doc.Statement);
    let now = T0;
    const revoker = new Revoker(iam, { now: () => now }, silentLogger(), noWait);
    await revoker.deny(ROLE, { marker: marker(1), pruneAfter: T0 + 30 * MIN });
    expect(statementsOf(iam).slice(0, foreign.length)).toEqual(foreign);
    expect(denies(policyOf(iam), { marker: marker(1), pruneAfter: T0 + 30 * MIN, since: T0 })).toBe(true);
    now = T0 + 60 * MIN;
    await revoker.prune(ROLE);
    expect(statementsOf(iam)).toEqual(foreign);
  });

  it('a document nobody changes is not rewritten, whatever its formatting', () => {
    const text = JSON.stringify({ Version: '2012-10-17', Statement: FOREIGN[0] }, null, 2);
    expect(planRevocationPolicy(text, [], T0)).toMatchObject({ fits: true, changed: false });
  });

  it('the collapse keeps them and counts their size', () => {
    const big = { Sid: 'TeamRule', Effect: 'Deny', Action: 's3:*', Resource: Array.from({ length: 40 }, (_, i) => `arn:aws:s3:::team-bucket-${i}/*`) };
    let text = JSON.stringify({ Version: '2012-10-17', Statement: [big] });
    const entries = Array.from({ length: 400 }, (_, i) => ({ marker: marker(i), pruneAfter: T0 + 60 * MIN, since: T0 }));
    const plan = planRevocationPolicy(text, entries, T0);
    if (!plan.fits) throw new Error('does not fit');
    expect(plan.collapsed).toBe(true);
    expect(plan.document?.Statement).toHaveLength(2);
    expect(plan.document?.Statement[0]).toEqual(big);
    text = JSON.stringify(plan.document);
    expect(policySize(text)).toBeLessThanOrEqual(10_240);
    for (const e of entries) expect(denies(text, e)).toBe(true);
  });
});

describe('the size limit is shared by every inline policy of the role', () => {
  /** Another inline policy of about `chars` characters. */
  const other = (chars: number) => JSON.stringify({ Version: '2012-10-17', Statement: [{ Sid: 'Other', Effect: 'Allow', Action: 's3:GetObject', Resource: `arn:aws:s3:::${'x'.repeat(chars - 100)}/*` }] });

  async function markersBeforeCollapse(otherChars: number): Promise<number> {
    const iam = new InMemoryIam();
    if (otherChars > 0) await iam.putRolePolicy(ROLE, 'team-access', other(otherChars));
    const revoker = new Revoker(iam, clockAt(), silentLogger(), noWait);
    for (let i = 0; ; i++) {
      // IAM (and the twin) would refuse a put past the shared limit: every deny must land.
      await revoker.deny(ROLE, { marker: marker(i), pruneAfter: T0 + 60 * MIN });
      if (statementsOf(iam).some((s) => (s as { Sid?: string }).Sid?.startsWith('ChainwardenCutoff'))) return i;
    }
  }

  it('another large inline policy makes ours collapse earlier, and every put fits beside it', async () => {
    const alone = await markersBeforeCollapse(0);
    const beside = await markersBeforeCollapse(6_000);
    expect(alone).toBeGreaterThan(150);
    expect(beside).toBeLessThan(alone / 2);
  });

  it('when not even the cutoff fits, the deny fails loudly, naming the role and what to do, and writes nothing', async () => {
    const iam = new InMemoryIam();
    await iam.putRolePolicy(ROLE, 'team-access', other(10_100));
    const revoker = new Revoker(iam, clockAt(), silentLogger(), noWait);
    const denied = revoker.deny(ROLE, { marker: marker(1), pruneAfter: T0 + 60 * MIN });
    await expect(denied).rejects.toBeInstanceOf(RevocationPolicyFullError);
    await expect(denied).rejects.toThrow(new RegExp(`IAM role ${ROLE}: .*managed policies`));
    expect(policyOf(iam)).toBeUndefined();
  });

  it('without iam:ListRolePolicies the deny is still written, counting our policy alone', async () => {
    const iam = new InMemoryIam();
    const denied: IamPort = { ...bind(iam), listRolePolicies: () => Promise.reject(Object.assign(new Error('not authorized to perform: iam:ListRolePolicies'), { name: 'AccessDenied' })) };
    await new Revoker(denied, clockAt(), silentLogger(), noWait).deny(ROLE, { marker: marker(1), pruneAfter: T0 + 60 * MIN });
    expect(denies(policyOf(iam), { marker: marker(1), pruneAfter: T0 + 60 * MIN, since: T0 })).toBe(true);
  });
});

describe('concurrent writers', () => {
  it('one replica: concurrent denies and prunes on one role all land, written one at a time', async () => {
    const iam = new InMemoryIam();
    const puts: string[] = [];
    const counting: IamPort = { ...bind(iam), putRolePolicy: (r, n, d) => (puts.push(d), iam.putRolePolicy(r, n, d)) };
    const revoker = new Revoker(counting, clockAt(), silentLogger(), noWait);
    await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 5 === 4 ? revoker.prune(ROLE) : revoker.deny(ROLE, { marker: marker(i), pruneAfter: T0 + 60 * MIN }))));
    for (let i = 0; i < 20; i++) if (i % 5 !== 4) expect(denies(policyOf(iam), { marker: marker(i), pruneAfter: T0 + 60 * MIN, since: T0 })).toBe(true);
    // Serialized, the burst needs one put; racing each other, every deny would write (and re-write) on its own.
    expect(puts).toHaveLength(1);
  });

  it('a put another writer overwrote before it was checked is written again before the deny resolves', async () => {
    const iam = new InMemoryIam();
    await iam.putRolePolicy(ROLE, REVOCATION_POLICY, JSON.stringify({ Version: '2012-10-17', Statement: [FOREIGN[1]] }));
    const stale = policyOf(iam)!;
    let clobbered = false;
    const racing: IamPort = {
      ...bind(iam),
      putRolePolicy: async (r, n, d) => {
        await iam.putRolePolicy(r, n, d);
        // The other replica read before this put and writes right after it.
        if (!clobbered) await iam.putRolePolicy(r, n, stale);
        clobbered = true;
      },
    };
    await new Revoker(racing, clockAt(), silentLogger(), noWait).deny(ROLE, { marker: marker(1), pruneAfter: T0 + 60 * MIN });
    expect(denies(policyOf(iam), { marker: marker(1), pruneAfter: T0 + 60 * MIN, since: T0 })).toBe(true);
    expect(statementsOf(iam)[0]).toEqual(FOREIGN[1]);
  });

  it('a deny another replica\'s stale write dropped after it was verified comes back with the next prune of the role', async () => {
    const iam = new InMemoryIam();
    const revoker = new Revoker(iam, clockAt(), silentLogger(), noWait);
    const stale = policyOf(iam);
    await revoker.deny(ROLE, { marker: marker(1), pruneAfter: T0 + 60 * MIN });
    // The other replica read before our put and writes after our check.
    iam.policies.delete(`${ROLE}/${REVOCATION_POLICY}`);
    if (stale) iam.policies.set(`${ROLE}/${REVOCATION_POLICY}`, stale);
    expect(revoker.owedRoles()).toEqual([ROLE]);
    await revoker.prune(ROLE);
    expect(denies(policyOf(iam), { marker: marker(1), pruneAfter: T0 + 60 * MIN, since: T0 })).toBe(true);
  });

  it('a writer that keeps overwriting the policy makes the deny fail (retryable) after a bounded number of puts, and the deny stays owed', async () => {
    const iam = new InMemoryIam();
    let puts = 0;
    const clobbering: IamPort = {
      ...bind(iam),
      putRolePolicy: async (role, name, doc) => {
        puts++;
        await iam.putRolePolicy(role, name, doc);
        iam.policies.delete(`${role}/${name}`);
      },
    };
    const revoker = new Revoker(clobbering, clockAt(), silentLogger(), { ...noWait, attempts: 4 });
    const denied = revoker.deny(ROLE, { marker: marker(1), pruneAfter: T0 + 60 * MIN });
    await expect(denied).rejects.toMatchObject({ code: 'conflict' });
    await expect(denied).rejects.toThrow(`IAM role ${ROLE}`);
    expect(puts).toBe(4);
    expect(revoker.owedRoles()).toEqual([ROLE]);
  });

  it('owes a deny only until its sessions have expired', async () => {
    const iam = new InMemoryIam();
    let now = T0;
    const revoker = new Revoker(iam, { now: () => now }, silentLogger(), noWait);
    await revoker.deny(ROLE, { marker: marker(1), pruneAfter: T0 + 30 * MIN });
    now = T0 + 31 * MIN;
    expect(revoker.owedRoles()).toEqual([]);
    now = T0 + 50 * MIN;
    await revoker.prune(ROLE);
    expect(policyOf(iam)).toBeUndefined();
  });
});

const bind = (iam: InMemoryIam): IamPort => ({
  getRolePolicy: (r, n) => iam.getRolePolicy(r, n),
  putRolePolicy: (r, n, d) => iam.putRolePolicy(r, n, d),
  deleteRolePolicy: (r, n) => iam.deleteRolePolicy(r, n),
  listRolePolicies: (r) => iam.listRolePolicies(r),
});

/**
 * IAM as two replicas see it over a network: each call reaches IAM, and its answer comes back,
 * when the scheduler says, so a read can be stale by the time it is used and a put can land
 * after another replica's. The clock moves a minute with every call that reaches IAM, so
 * entries expire mid-run and prunes have something to drop.
 */
function networkedIam(s: fc.Scheduler, iam: InMemoryIam, tick: () => void): IamPort {
  const call = async <T>(label: string, f: () => Promise<T>): Promise<T> => {
    await s.schedule(Promise.resolve(), `${label} reaches IAM`);
    tick();
    const answer = await f();
    return s.schedule(Promise.resolve(answer), `${label} answered`);
  };
  return {
    getRolePolicy: (r, n) => call(`get ${n}`, () => iam.getRolePolicy(r, n)),
    putRolePolicy: (r, n, d) => call(`put ${n}`, () => iam.putRolePolicy(r, n, d)),
    deleteRolePolicy: (r, n) => call(`delete ${n}`, () => iam.deleteRolePolicy(r, n)),
    listRolePolicies: (r) => call('list', () => iam.listRolePolicies(r)),
  };
}

type Op = { kind: 'deny'; replica: number; pruneAfterMin: number } | { kind: 'prune'; replica: number };

const ops = (replicas: number) =>
  fc.array(
    fc.oneof(
      { weight: 3, arbitrary: fc.record({ kind: fc.constant('deny' as const), replica: fc.nat(replicas - 1), pruneAfterMin: fc.integer({ min: 1, max: 40 }) }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('prune' as const), replica: fc.nat(replicas - 1) }) },
    ),
    { minLength: 1, maxLength: 24 },
  );

/**
 * Runs the operations concurrently in the order the scheduler picks; returns what each replica
 * denied and the clock. With two replicas a deny may give up with a retryable conflict (the
 * controller retries it); one replica never conflicts with itself. Any other failure fails the
 * property.
 */
async function race(s: fc.Scheduler, iam: InMemoryIam, replicaCount: number, plan: Op[]) {
  // A statement already expired, so prunes have work from the start.
  await iam.putRolePolicy(ROLE, REVOCATION_POLICY, JSON.stringify({ Version: '2012-10-17', Statement: [FOREIGN[0], { Sid: 'ChainwardenRevoked1', Effect: 'Deny', Action: '*', Resource: '*', Condition: { StringEquals: { 'aws:SourceIdentity': ['chainwarden-gone'] } } }] }));
  let now = T0;
  const clock = { now: () => now };
  const port = networkedIam(s, iam, () => (now += MIN));
  const replicas = Array.from({ length: replicaCount }, () => new Revoker(port, clock, silentLogger(), noWait));
  const denied: { marker: string; pruneAfter: number; since: number }[] = [];
  const running = plan.map((op, i) => {
    if (op.kind === 'prune') return replicas[op.replica]!.prune(ROLE);
    const entry = { marker: marker(i), pruneAfter: now + op.pruneAfterMin * MIN };
    denied.push({ ...entry, since: now });
    return replicas[op.replica]!.deny(ROLE, entry);
  });
  const outcomes = await s.waitFor(Promise.allSettled(running));
  for (const o of outcomes) if (o.status === 'rejected' && !(replicaCount > 1 && o.reason instanceof ChainwardenError && o.reason.code === 'conflict')) throw o.reason;
  return { replicas, denied, now: () => now };
}

describe('any interleaving of denies and prunes', () => {
  it('one replica: every deny not yet expired is in IAM once all calls are answered', async () => {
    await fc.assert(
      fc.asyncProperty(fc.scheduler(), ops(1), async (s, plan) => {
        const iam = new InMemoryIam();
        const { denied, now } = await race(s, iam, 1, plan);
        for (const e of denied) if (e.pruneAfter > now()) expect(denies(policyOf(iam), e)).toBe(true);
        expect(statementsOf(iam)[0]).toEqual(FOREIGN[0]);
      }),
      { numRuns: 150 },
    );
  });

  it('two replicas: every deny not yet expired is in IAM once each replica has run its periodic prune of the roles it owes', async () => {
    await fc.assert(
      fc.asyncProperty(fc.scheduler(), ops(2), async (s, plan) => {
        const iam = new InMemoryIam();
        const { replicas, denied, now } = await race(s, iam, 2, plan);
        // What every replica does each minute; one at a time here, as their timers are not in step.
        for (const r of replicas) for (const role of r.owedRoles()) await s.waitFor(r.prune(role));
        for (const e of denied) if (e.pruneAfter > now()) expect(denies(policyOf(iam), e)).toBe(true);
        expect(statementsOf(iam)[0]).toEqual(FOREIGN[0]);
      }),
      { numRuns: 150 },
    );
  });
});

describe('a role that does not exist', () => {
  it('has no session to deny: the deny resolves and nothing stays owed, so a deletion is not held forever', async () => {
    const iam = new InMemoryIam();
    const noSuchRole = Object.assign(new Error('Role support-gone not found'), { name: 'NoSuchEntityException' });
    iam.failNext(noSuchRole);
    const revoker = new Revoker(iam, clockAt(), silentLogger(), noWait);
    await expect(revoker.deny('support-gone', { marker: marker(1), pruneAfter: T0 + 30 * MIN })).resolves.toBeUndefined();
    expect(revoker.owedRoles()).toEqual([]);
    // Any other failure still throws, and the deny stays owed.
    iam.failNext(Object.assign(new Error('Rate exceeded'), { name: 'Throttling' }));
    await expect(revoker.deny(ROLE, { marker: marker(2), pruneAfter: T0 + 30 * MIN })).rejects.toThrow(/Rate exceeded/);
    expect(revoker.owedRoles()).toEqual([ROLE]);
  });
});

describe('IAM not answering', () => {
  it('leaves the role alone for a jittered wait that grows with each failure: a deny meanwhile fails at once without calling IAM, and lands after the wait', async () => {
    const iam = new InMemoryIam();
    let now = T0;
    const revoker = new Revoker(iam, { now: () => now }, silentLogger(), { ...noWait, random: () => 0 });
    const entry = { marker: marker(1), pruneAfter: T0 + 30 * MIN };
    iam.failNext(Object.assign(new Error('Rate exceeded'), { name: 'Throttling' }));
    await expect(revoker.deny(ROLE, entry)).rejects.toThrow(/Rate exceeded/);

    // IAM would answer now; the wait (1 s after a first failure) is not over, so it is not asked.
    now += 999;
    await expect(revoker.deny(ROLE, entry)).rejects.toThrow(/Rate exceeded/);
    await expect(revoker.prune(ROLE)).rejects.toThrow(/Rate exceeded/);
    expect(policyOf(iam)).toBeUndefined();

    now += 1;
    iam.failNext(Object.assign(new Error('Service unavailable'), { name: 'ServiceUnavailable' }));
    await expect(revoker.deny(ROLE, entry)).rejects.toThrow(/Service unavailable/);
    // A second failure in a row: twice as long.
    now += 1_999;
    await expect(revoker.deny(ROLE, entry)).rejects.toThrow(/Service unavailable/);
    now += 1;
    await revoker.deny(ROLE, entry);
    expect(denies(policyOf(iam), { ...entry, since: 0 })).toBe(true);
  });
});

describe("IAM's refusals, as the task's status shows them", () => {
  it("do not name the operator's own role or account: the tenant reads the status", async () => {
    const iam = new InMemoryIam();
    iam.failNext(
      Object.assign(new Error('User: arn:aws:sts::999988887777:assumed-role/chainwarden-operator/i-0abc is not authorized to perform: iam:GetRolePolicy on resource: role support-agent because no identity-based policy allows it'), {
        name: 'AccessDenied',
      }),
    );
    const revoker = new Revoker(iam, clockAt(), silentLogger(), noWait);
    const refusal = await revoker.deny(ROLE, { marker: marker(1), pruneAfter: T0 + 30 * MIN }).catch((err: unknown) => err as Error);
    expect(refusal).toBeInstanceOf(Error);
    expect(refusal?.message).toMatch(/IAM failed for role support-agent \(AccessDenied: User: <operator identity> is not authorized to perform: iam:GetRolePolicy/);
    expect(refusal?.message).not.toMatch(/999988887777|chainwarden-operator/);
  });
});

describe('a task on several roles', () => {
  /** IAM that refuses everything about one role, as for a role the operator has no permission on. */
  const refusing = (iam: IamPort, role: string): IamPort => {
    const no = (): Promise<never> => Promise.reject(Object.assign(new Error(`not authorized on role ${role}`), { name: 'AccessDenied' }));
    return {
      getRolePolicy: (r, n) => (r === role ? no() : iam.getRolePolicy(r, n)),
      putRolePolicy: (r, n, d) => (r === role ? no() : iam.putRolePolicy(r, n, d)),
      deleteRolePolicy: (r, n) => (r === role ? no() : iam.deleteRolePolicy(r, n)),
      listRolePolicies: (r) => (r === role ? no() : iam.listRolePolicies(r)),
    };
  };
  const task = (roles: string[]) =>
    ({
      ...parseAgentTask(exampleTask('support')),
      metadata: { name: 'ticket-4711', namespace: 'support', uid: 'u-1' },
      spec: { ...parseAgentTask(exampleTask('support')).spec, credentials: roles.map((r, i) => ({ name: `c${i}`, aws: { roleArn: `arn:aws:iam::111122223333:role/${r}` } })) },
    }) as AgentTask;

  it('gets its deny on every role IAM lets it write, even when an earlier role keeps failing; the failure names the role', async () => {
    const iam = new InMemoryIam();
    const revoker = new Revoker(refusing(iam, 'locked-down'), clockAt(), silentLogger(), noWait);
    const failed = await revokeTask(revoker, clockAt(), task(['locked-down', ROLE]), undefined).then(() => undefined, (err: unknown) => err as Error);
    expect(failed?.message).toMatch(/IAM failed for role locked-down/);
    expect(denies(policyOf(iam), { marker: 'chainwarden-u-1', pruneAfter: T0 + 15 * MIN, since: T0 })).toBe(true);
  });

  it('when several roles fail, names each of them', async () => {
    const iam = new InMemoryIam();
    const revoker = new Revoker(refusing(refusing(iam, 'first-locked'), 'second-locked'), clockAt(), silentLogger(), noWait);
    const failed = await revokeTask(revoker, clockAt(), task(['first-locked', 'second-locked', ROLE]), undefined).then(() => undefined, (err: unknown) => err as ChainwardenError);
    expect(failed?.code).toBe('deny_failed');
    expect(failed?.message).toMatch(/role first-locked.*; .*role second-locked/);
    expect(denies(policyOf(iam), { marker: 'chainwarden-u-1', pruneAfter: T0 + 15 * MIN, since: T0 })).toBe(true);
  });
});

describe('a deny taken over by a new leader', () => {
  it('is owed since the task was revoked: a cutoff another replica wrote after the revocation already covers it, and no marker is added', async () => {
    const iam = new InMemoryIam();
    const revokedAt = T0;
    const now = T0 + 5 * MIN;
    // Another replica's collapse: every chainwarden session issued before T0 + 1 min is denied until well after.
    const bucket = Math.ceil((T0 + 60 * MIN) / 1000 / 600) * 600;
    const cutoff = {
      Sid: `ChainwardenCutoff${bucket}`,
      Effect: 'Deny',
      Action: '*',
      Resource: '*',
      Condition: { StringLike: { 'aws:SourceIdentity': 'chainwarden-*' }, DateLessThan: { 'aws:TokenIssueTime': new Date(T0 + MIN).toISOString() } },
    };
    await iam.putRolePolicy(ROLE, REVOCATION_POLICY, JSON.stringify({ Version: '2012-10-17', Statement: [cutoff] }));
    const before = policyOf(iam);
    const revoker = new Revoker(iam, clockAt(now), silentLogger(), noWait);
    revoker.owe(ROLE, { marker: marker(1), pruneAfter: T0 + 30 * MIN, since: revokedAt });
    await revoker.prune(ROLE);
    expect(policyOf(iam)).toBe(before);
  });
});
