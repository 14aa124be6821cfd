import { PutRolePolicyCommand } from '@aws-sdk/client-iam';
import { localAws, type EnvironmentDescription } from '../../../src/controlplane/environment.js';
import { AwsIamPort, policySize, ROLE_INLINE_POLICIES_MAX_CHARS } from '../../../src/credentials/iam.js';
import { ChainwardenError } from '../../../src/errors.js';
import { silentLogger } from '../../../src/log.js';
import { denies, REVOCATION_POLICY, RevocationPolicyFullError, Revoker, type RevokerOptions } from '../../../src/credentials/revoke.js';
import { createRole, iamClient } from '../../env/aws.js';
import { describe, expect, test } from '../../env/fixtures.js';

// The emulator does not evaluate IAM conditions, nor does it enforce IAM's size limit for a
// role's inline policies: these tests cannot show AWS denying a session. They assert on what
// chainwarden wrote, read back through the real AWS SDK: which markers the deny lists, that
// statements others wrote are still there, and that the role's inline policies together stay
// within the limit as IAM counts it.

const MIN = 60_000;
const marker = (replica: string, i: number) => `chainwarden-${replica}${String(i).padStart(7, '0')}-1111-2222-3333-444455556666`;

/** A replica of the operator, as far as revocation goes: its own IAM client, its own Revoker. */
function replica(env: EnvironmentDescription, clock: { now(): number }, options?: RevokerOptions) {
  const aws = localAws(env);
  const iam = new AwsIamPort({ region: aws.region, endpoint: aws.iamEndpoint, credentials: aws.credentials });
  return { iam, revoker: new Revoker(iam, clock, silentLogger(), options) };
}

/** What the controller's work queue does with a deny that fails retryably: back off and try again. */
async function denyLikeTheController(revoker: Revoker, role: string, entry: { marker: string; pruneAfter: number }): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await revoker.deny(role, entry);
    } catch (err) {
      if (!(err instanceof ChainwardenError && err.code === 'conflict') || attempt === 5) throw err;
      await new Promise((r) => setTimeout(r, 200 * attempt));
    }
  }
}

async function putRaw(env: EnvironmentDescription, role: string, name: string, document: string): Promise<void> {
  const iam = iamClient(env);
  await iam.send(new PutRolePolicyCommand({ RoleName: role, PolicyName: name, PolicyDocument: document }));
  iam.destroy();
}

/** Every inline policy of the role, counted as IAM counts them against its limit. */
async function inlineSize(iam: AwsIamPort, role: string): Promise<number> {
  const names = await iam.listRolePolicies(role);
  const sizes = await Promise.all(names.map(async (n) => policySize((await iam.getRolePolicy(role, n)) ?? '')));
  return sizes.reduce((a, b) => a + b, 0);
}

const statementsOf = async (iam: AwsIamPort, role: string) => (JSON.parse((await iam.getRolePolicy(role, REVOCATION_POLICY)) ?? '{"Statement":[]}') as { Statement: unknown[] }).Statement;

/** An inline policy of about `chars` characters that some team keeps on the role. */
const teamPolicy = (chars: number) =>
  JSON.stringify({ Version: '2012-10-17', Statement: [{ Sid: 'TeamBuckets', Effect: 'Allow', Action: 's3:GetObject', Resource: `arn:aws:s3:::${'team-bucket-'.repeat(Math.ceil(chars / 12)).slice(0, chars - 120)}/*` }] });

describe('revocation at AWS never loses a deny', () => {
  test('two replicas and their prunes racing on one role: every deny is in the role\'s policy at the end', async ({ env, namespace }) => {
    const role = `race-${namespace}`;
    await createRole(env, role);
    // An entry already expired, so that every prune has something to write from the start.
    await putRaw(env, role, REVOCATION_POLICY, JSON.stringify({ Version: '2012-10-17', Statement: [{ Sid: 'ChainwardenRevoked600', Effect: 'Deny', Action: '*', Resource: '*', Condition: { StringEquals: { 'aws:SourceIdentity': ['chainwarden-gone'] } } }] }));
    const clock = { now: () => Date.now() };
    const replicas = { a: replica(env, clock), b: replica(env, clock) };
    const owed: { marker: string; pruneAfter: number }[] = [];
    const work: Promise<void>[] = [];
    for (const [name, { revoker }] of Object.entries(replicas)) {
      for (let i = 0; i < 20; i++) {
        // Prune times over the next hours: several statements, as real tasks of different lengths make.
        const entry = { marker: marker(name, i), pruneAfter: Date.now() + (15 + 37 * i) * MIN };
        owed.push(entry);
        work.push(new Promise((r) => setTimeout(r, Math.random() * 300)).then(() => denyLikeTheController(revoker, role, entry)));
        if (i % 4 === 0) work.push(new Promise((r) => setTimeout(r, Math.random() * 300)).then(() => revoker.prune(role)));
      }
    }
    await Promise.all(work);
    // What each replica does every minute: re-assert what it owes. One stale write landing after a
    // replica's last check is the one loss no check inside `deny` can see.
    for (const { revoker } of Object.values(replicas)) for (const r of revoker.owedRoles()) await revoker.prune(r);

    const text = await replicas.a.iam.getRolePolicy(role, REVOCATION_POLICY);
    const missing = owed.filter((e) => !denies(text, { ...e, since: 0 })).map((e) => e.marker);
    expect(missing).toEqual([]);
    expect(text).not.toContain('chainwarden-gone');
    for (const { iam } of Object.values(replicas)) iam.destroy();
  });

  test('a statement chainwarden did not write, without Sid or Condition, survives deny, prune and the policy\'s emptying', async ({ env, namespace }) => {
    const role = `foreign-${namespace}`;
    await createRole(env, role);
    const foreign = { Effect: 'Deny', Action: 's3:DeleteBucket', Resource: '*' };
    // As a person would write it: formatted, and Statement one object rather than a list.
    await putRaw(env, role, REVOCATION_POLICY, JSON.stringify({ Version: '2012-10-17', Statement: foreign }, null, 2));
    let now = Date.now();
    const { iam, revoker } = replica(env, { now: () => now });
    const entry = { marker: marker('f', 1), pruneAfter: now + 30 * MIN };

    await revoker.deny(role, entry);
    expect(denies(await iam.getRolePolicy(role, REVOCATION_POLICY), { ...entry, since: 0 })).toBe(true);
    expect((await statementsOf(iam, role))[0]).toEqual(foreign);

    now += 60 * MIN;
    await revoker.prune(role);
    // Our entry has expired and is gone; theirs stays, so the policy is not deleted.
    expect(await statementsOf(iam, role)).toEqual([foreign]);
    iam.destroy();
  });

  test('another large inline policy on the role makes ours collapse earlier: the limit is shared, and every write stays within it', async ({ env, namespace }) => {
    const now = Date.now();
    // The settling wait after each put matters for racing writers, not here.
    const fast = { backoffMs: { base: 1, cap: 5 } };

    async function denyUntilCollapse(role: string): Promise<number> {
      const { iam, revoker } = replica(env, { now: () => now }, fast);
      try {
        for (let i = 0; i < 400; i++) {
          await revoker.deny(role, { marker: marker('c', i), pruneAfter: now + 60 * MIN });
          expect(await inlineSize(iam, role)).toBeLessThanOrEqual(ROLE_INLINE_POLICIES_MAX_CHARS);
          const statements = (await statementsOf(iam, role)) as { Sid?: string }[];
          if (statements.some((s) => s.Sid?.startsWith('ChainwardenCutoff'))) {
            // Everything denied so far is covered by the cutoff; the team's policy is untouched.
            for (let j = 0; j <= i; j++) expect(denies(await iam.getRolePolicy(role, REVOCATION_POLICY), { marker: marker('c', j), pruneAfter: now + 60 * MIN, since: now })).toBe(true);
            return i;
          }
        }
        throw new Error('never collapsed');
      } finally {
        iam.destroy();
      }
    }

    await createRole(env, `alone-${namespace}`);
    await createRole(env, `shared-${namespace}`);
    const team = teamPolicy(6_000);
    await putRaw(env, `shared-${namespace}`, 'team-buckets', team);
    const alone = await denyUntilCollapse(`alone-${namespace}`);
    const shared = await denyUntilCollapse(`shared-${namespace}`);
    expect(alone).toBeGreaterThan(150);
    expect(shared).toBeLessThan(alone / 2);
    const check = replica(env, { now: () => now });
    expect(await check.iam.getRolePolicy(`shared-${namespace}`, 'team-buckets')).toBe(team);
    check.iam.destroy();
  });

  test('when the role\'s other inline policies leave no room even for a cutoff, the deny fails naming the role, and nothing is written', async ({ env, namespace }) => {
    const role = `full-${namespace}`;
    await createRole(env, role);
    await putRaw(env, role, 'team-buckets', teamPolicy(10_150));
    const { iam, revoker } = replica(env, { now: () => Date.now() });
    const denied = revoker.deny(role, { marker: marker('x', 1), pruneAfter: Date.now() + 60 * MIN });
    await expect(denied).rejects.toBeInstanceOf(RevocationPolicyFullError);
    await expect(denied).rejects.toThrow(`IAM role ${role}: its other inline policies leave`);
    // The emulator would have accepted the put; IAM would not. We check that none was made.
    expect(await iam.getRolePolicy(role, REVOCATION_POLICY)).toBeUndefined();
    iam.destroy();
  });
});
