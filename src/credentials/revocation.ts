import { parseDuration } from '../api/duration.js';
import type { AgentPolicy, AgentTask } from '../api/schema.js';
import { POLICY_DEFAULTS } from '../api/task.js';
import { ChainwardenError, errorMessage } from '../errors.js';
import type { Clock } from '../runtime/clock.js';
import { roleNameOf, sourceIdentityFor, STS_MAX_SECONDS, STS_MIN_SECONDS } from './plan.js';
import type { Revoker, WriteGuard } from './revoke.js';

/** Clock skew allowed between us and AWS when deciding that a session has expired. */
const SKEW_MS = 5 * 60_000;

export interface RevocationResult {
  marker: string;
  roles: string[];
  pruneAfter: number;
  /** When the task was revoked: every session the deny covers was issued before. */
  since?: number;
}

/**
 * The longest any session of this task could live. Sessions never outlast what the policy lets
 * a credential ask for, so this covers also a session STS issued whose recording was cut short.
 */
export function longestSessionMs(task: AgentTask, policy: AgentPolicy | undefined): number {
  const policyMax = parseDuration(policy?.spec.aws?.maxDuration ?? POLICY_DEFAULTS.maxDuration);
  const asked = (task.spec.credentials ?? []).map((c) => (c.aws.duration ? parseDuration(c.aws.duration) : policyMax));
  const longest = Math.max(STS_MIN_SECONDS * 1000, ...asked.map((a) => Math.min(a, policyMax)));
  return Math.min(longest, STS_MAX_SECONDS * 1000);
}

/**
 * AWS-side revocation of one task: a Deny on its SourceIdentity marker on every role it could
 * have assumed, kept until every session it could hold has expired. Idempotent.
 */
export async function revokeTask(revoker: Revoker, clock: Clock, task: AgentTask, policy: AgentPolicy | undefined, mayWrite?: WriteGuard): Promise<RevocationResult> {
  const result = revocationOf(task, policy, clock.now());
  // Every role is written whatever another does: one role IAM refuses must not leave the others' sessions live.
  const outcomes = await Promise.allSettled(result.roles.map((role) => revoker.deny(role, result, mayWrite)));
  const failures = outcomes.flatMap((o) => (o.status === 'rejected' ? [o.reason instanceof Error ? o.reason : new Error(String(o.reason))] : []));
  const [first, ...more] = failures;
  if (!first) return result;
  if (more.length === 0) throw first;
  // The lease lost outranks the rest: the new leader takes the task over.
  throw failures.find((e) => e instanceof ChainwardenError && e.code === 'not_leader') ?? new ChainwardenError('deny_failed', failures.map(errorMessage).join('; '));
}

/** The deny a task revoked at `revokedAt` needs: on which roles, for which marker, until when. */
function revocationOf(task: AgentTask, policy: AgentPolicy | undefined, revokedAt: number): RevocationResult {
  const marker = sourceIdentityFor(task);
  const roles = [...new Set((task.spec.credentials ?? []).map((c) => roleNameOf(c.aws.roleArn)))];
  const recorded = Date.parse(task.status?.credentials?.expiration ?? '') || 0;
  return { marker, roles, pruneAfter: Math.max(recorded, revokedAt + longestSessionMs(task, policy)) + SKEW_MS, since: revokedAt };
}

/**
 * The denies a revoked task still needs, derived from its status alone: the leader re-asserts
 * them, so a deny that the replica which wrote it can no longer defend (it died, and another
 * replica's stale write dropped it) is put back.
 */
export function outstandingDeny(task: AgentTask, policy: AgentPolicy | undefined, now: number): RevocationResult | undefined {
  const credentials = task.status?.credentials;
  const revokedAt = Date.parse(credentials?.revokedAt ?? '');
  if (!credentials?.awsDenyInPlace || Number.isNaN(revokedAt)) return undefined;
  const owed = revocationOf(task, policy, revokedAt);
  return owed.pruneAfter > now ? owed : undefined;
}
