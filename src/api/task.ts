import type { TSchema } from '@sinclair/typebox';
import { parseDuration } from './duration.js';
import { AgentPolicySpec, AgentTaskStatus, type AgentTask, type TaskState } from './schema.js';

/**
 * The task vocabulary every part of chainwarden shares: when a task is over, its deadline, the
 * label and finalizer it carries, the audiences its tokens are minted for and the policy
 * defaults. It lives here, below everything that uses it, so nothing reaches sideways into a
 * controller to learn when a task has ended.
 */

/** The operator's own namespace unless told otherwise: its Lease, key Secrets and sealed audit heads live there. */
export const DEFAULT_NAMESPACE = 'chainwarden-system';
/** Agent pods carry this label; its value is the task's name. */
export const TASK_LABEL = 'chainwarden.io/task';
/** Held on every task until what it was given has been revoked. */
export const FINALIZER = 'chainwarden.io/revoke';
/** The audience an agent pod's projected service-account token must carry. */
export const BROKER_AUDIENCE = 'chainwarden';
/** The audience of the JWT-SVID presented to AssumeRoleWithWebIdentity. */
export const STS_AUDIENCE = 'sts.amazonaws.com';
/**
 * Audiences `GET /v1/svid` never mints for: with an STS-audience SVID an agent could assume roles
 * behind the broker's back. (An SVID for the broker's own audience is minted bound to the calling
 * pod, and the broker checks it as it checks the pod's token.)
 */
export const RESERVED_AUDIENCES: readonly string[] = [STS_AUDIENCE];
/** The claim of a broker-audience JWT-SVID that binds it to the pod it was minted for. */
export const SVID_POD_CLAIM = 'chainwarden.io/pod';

const TERMINAL: readonly TaskState[] = ['Completed', 'Expired', 'Violated'];
export const isTerminal = (state: TaskState | undefined): boolean => state !== undefined && TERMINAL.includes(state);

export const taskKey = (task: { metadata: { namespace?: string; name?: string } }): string => `${task.metadata.namespace ?? ''}/${task.metadata.name ?? ''}`;

/** Creation time plus ttl, in epoch milliseconds. */
export function deadlineOf(task: AgentTask): number {
  return Date.parse(task.metadata.creationTimestamp ?? '') + parseDuration(task.spec.ttl);
}

/** Why a task gets nothing more. */
export interface TaskEnd {
  state: TaskState | 'Deleting';
  message: string;
}

/**
 * Whether the task has ended, from facts alone: the state the controller wrote, or a fact the
 * controller has not turned into state yet (a violation, a completion, a passed deadline, a
 * deletion). Every replica's broker checks this on every request, so an ended task gets
 * nothing from any replica, with or without a leader.
 */
export function endOf(task: AgentTask, now: number): TaskEnd | undefined {
  const state = task.status?.state;
  if (isTerminal(state)) return { state: state ?? 'Completed', message: `is ${state ?? 'Completed'}` };
  if (task.metadata.deletionTimestamp) return { state: 'Deleting', message: 'is being deleted' };
  const violation = task.status?.violation;
  if (violation) return { state: 'Violated', message: `is Violated: hop ${violation.hopId} broke ${violation.rule}` };
  const completion = task.status?.completion;
  if (completion) return { state: 'Completed', message: `is Completed: pod ${completion.pod} reported the chain complete` };
  const deadline = deadlineOf(task);
  if (now >= deadline) return { state: 'Expired', message: `is Expired: its deadline ${new Date(deadline).toISOString()} has passed` };
  return undefined;
}

function defaultOf<T>(schema: TSchema | undefined, path: string): T {
  const value = (schema as { default?: unknown } | undefined)?.default;
  if (value === undefined) throw new Error(`the AgentPolicy schema has no default for ${path}`);
  return value as T;
}

const policy = AgentPolicySpec.properties;

/** What a policy that leaves a field out means: read from the one schema, so the CRD's defaults and the code agree. */
export const POLICY_DEFAULTS = {
  maxTaskTTL: defaultOf<string>(policy.maxTaskTTL, 'maxTaskTTL'),
  maxHops: defaultOf<number>(policy.limits.properties.maxHops, 'limits.maxHops'),
  maxDepth: defaultOf<number>(policy.limits.properties.maxDepth, 'limits.maxDepth'),
  maxDuration: defaultOf<string>(policy.aws.properties.maxDuration, 'aws.maxDuration'),
  onViolation: defaultOf<'Revoke' | 'Deny'>(policy.onViolation, 'onViolation'),
  mode: defaultOf<'Enforce' | 'Audit'>(policy.mode, 'mode'),
  approvalTimeout: defaultOf<string>(policy.approval.properties.timeout, 'approval.timeout'),
} as const;

function maxItemsOf(schema: TSchema | undefined, path: string): number {
  const value = (schema as { maxItems?: unknown } | undefined)?.maxItems;
  if (typeof value !== 'number') throw new Error(`the AgentTask status schema has no maxItems for ${path}`);
  return value;
}

const status = AgentTaskStatus.properties;

/**
 * The most entries each list the journal writes may hold, read from the status schema: a write
 * over a cap is refused by the API server every time, so the journal never makes one.
 */
export const STATUS_CAPS = {
  pendingHops: maxItemsOf(status.pendingHops, 'pendingHops'),
  recentHops: maxItemsOf(status.recentHops, 'recentHops'),
  systemsTouched: maxItemsOf(status.chain.properties.systemsTouched, 'chain.systemsTouched'),
  dataClassesTouched: maxItemsOf(status.chain.properties.dataClassesTouched, 'chain.dataClassesTouched'),
} as const;

/**
 * What JSON.stringify writes as one byte or two and the API server's encoder (Go's) as six: `<`,
 * `>`, `&`, U+2028, U+2029; and backspace and form feed, which Go before 1.22 wrote in six (newer Go
 * in two, so for them this is an upper bound).
 */
const WIDER_STORED = /[<>&\u2028\u2029\b\f]/g;

/**
 * The bytes `value` takes as JSON in the object the API server stores: as JSON.stringify writes it
 * in UTF-8, with each character Go's encoder escapes wider counted as its six bytes (`\u003c`).
 * An agent's text of `<` is stored six times its length.
 */
export function storedJsonBytes(value: unknown): number {
  return Buffer.byteLength(JSON.stringify(value, (_key, v: unknown) => (typeof v === 'string' ? v.replace(WIDER_STORED, '\u0000') : v)) ?? '');
}

/**
 * The most a waiting hop's own text may come to in status (its tool, action, resource, intent
 * and attributes, as `storedJsonBytes` counts them). Its fields are bounded in characters, and a
 * character can be three bytes, or six escaped: 100 waiting hops at those bounds made a status
 * past what etcd stores (1.5 MiB), which the API server then refused every time.
 */
export const MAX_PENDING_HOP_BYTES = 8 * 1024;

/**
 * The marker a hop names instead of its body's hash (`payloadSha256` that is no SHA-256: the
 * AWS gateway's UNSIGNED-PAYLOAD or streaming marker), when it does: such a body is bound to
 * nothing, so no approval can bind what it would release. Undefined for a hop with a hashed body or none.
 */
export function unhashedBody(attributes: Readonly<Record<string, string | number | boolean>> | undefined): string | undefined {
  const hash = attributes?.payloadSha256;
  if (hash === undefined || /^[0-9a-f]{64}$/.test(String(hash))) return undefined;
  return String(hash);
}
