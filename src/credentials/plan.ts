import { createHash } from 'node:crypto';
import { parseDuration } from '../api/duration.js';
import type { AgentTask, AwsCredential } from '../api/schema.js';

/** STS's floor and ceiling for DurationSeconds. */
export const STS_MIN_SECONDS = 900;
export const STS_MAX_SECONDS = 43_200;

export const TAG_TASK = 'chainwarden:task';
export const TAG_NAMESPACE = 'chainwarden:namespace';
export const TAG_SERVICE_ACCOUNT = 'chainwarden:serviceaccount';
export const TRANSITIVE_TAG_KEYS = [TAG_TASK, TAG_NAMESPACE, TAG_SERVICE_ACCOUNT];

/**
 * How long a session should last: until the task's deadline, or shorter where the task asks;
 * never past the policy's maximum or STS's 12 h, and never under STS's 15 min floor, even when
 * the deadline is closer (revocation at the deadline covers the rest). A session asked to outlive
 * its task would hold, past the deadline, on nothing but the AWS-side deny.
 */
export function planCredentialDuration(input: { deadline: number; now: number; requested?: string; policyMax?: string; roleMaxSeconds?: number }): number {
  const remaining = Math.floor((input.deadline - input.now) / 1000);
  let seconds = input.requested ? Math.min(Math.floor(parseDuration(input.requested) / 1000), remaining) : remaining;
  if (input.policyMax) seconds = Math.min(seconds, Math.floor(parseDuration(input.policyMax) / 1000));
  seconds = Math.min(seconds, input.roleMaxSeconds ?? STS_MAX_SECONDS, STS_MAX_SECONDS);
  return Math.max(seconds, STS_MIN_SECONDS);
}

/**
 * The task's immutable marker, set as STS SourceIdentity (which survives role chaining and
 * cannot be changed by the session) and used as the key of the AWS-side deny on revocation.
 */
export function sourceIdentityFor(task: AgentTask): string {
  return `chainwarden-${task.metadata.uid ?? ''}`;
}

/** Deterministic per task and credential: CloudTrail shows the same name for each of its sessions. */
export function roleSessionName(task: AgentTask, credential: string): string {
  const safe = (s: string) => s.replace(/[^\w+=,.@-]/g, '-');
  const digest = createHash('sha256').update(task.metadata.uid ?? '').digest('hex').slice(0, 8);
  const base = safe(`${task.metadata.namespace ?? ''}.${task.metadata.name ?? ''}.${credential}`);
  return `${base.slice(0, 64 - digest.length - 1)}.${digest}`;
}

export function sessionTags(task: AgentTask, credential: AwsCredential): Record<string, string> {
  return {
    ...credential.sessionTags,
    [TAG_TASK]: task.metadata.name ?? '',
    [TAG_NAMESPACE]: task.metadata.namespace ?? '',
    [TAG_SERVICE_ACCOUNT]: task.spec.serviceAccountName,
  };
}

/** `arn:aws:iam::123:role/path/name` → `name`, what IAM's role APIs take. */
export function roleNameOf(roleArn: string): string {
  return roleArn.slice(roleArn.lastIndexOf('/') + 1);
}

/** After STS or IAM failed to answer, chainwarden calls again about that credential or role no sooner than this… */
export const AWS_RETRY_BASE_MS = 1_000;
/** …doubling with each failure in a row, up to this. */
export const AWS_RETRY_MAX_MS = 30_000;

/**
 * How long to leave STS (for one credential) or IAM (for one role) alone after the `failures`-th
 * failure in a row. Each call already carries the SDK's own retries; without a wait between calls,
 * whatever keeps asking (an agent's SDK fetching credentials, the controller woken by every status
 * write) turns an AWS outage into a steady stream of calls. Doubling from twice the base, with
 * "equal jitter" (a random point in the upper half of the step), so what failed together does not
 * come back together.
 */
export function planAwsRetry(failures: number, random: () => number = Math.random, baseMs = AWS_RETRY_BASE_MS, maxMs = AWS_RETRY_MAX_MS): number {
  const step = Math.min(maxMs, baseMs * 2 ** Math.min(Math.max(failures, 1), 30));
  return Math.round(step / 2 + random() * (step / 2));
}
