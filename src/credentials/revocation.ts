import { parseDuration } from '../api/duration.js';
import type { AgentPolicy, AgentTask } from '../api/schema.js';
import { POLICY_DEFAULTS } from '../api/task.js';
import type { Clock } from '../runtime/clock.js';
import { roleNameOf, sourceIdentityFor, STS_MAX_SECONDS, STS_MIN_SECONDS } from './plan.js';
import type { Revoker } from './revoke.js';

/** Clock skew allowed between us and AWS when deciding that a session has expired. */
const SKEW_MS = 5 * 60_000;

export interface RevocationResult {
  marker: string;
  roles: string[];
  pruneAfter: number;
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
export async function revokeTask(revoker: Revoker, clock: Clock, task: AgentTask, policy: AgentPolicy | undefined): Promise<RevocationResult> {
  const marker = sourceIdentityFor(task);
  const roles = [...new Set((task.spec.credentials ?? []).map((c) => roleNameOf(c.aws.roleArn)))];
  const recorded = Date.parse(task.status?.credentials?.expiration ?? '') || 0;
  const pruneAfter = Math.max(recorded, clock.now() + longestSessionMs(task, policy)) + SKEW_MS;
  for (const role of roles) await revoker.deny(role, { marker, pruneAfter });
  return { marker, roles, pruneAfter };
}
