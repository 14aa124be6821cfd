import { ConditionType } from './conditions.js';
import type { AgentTaskStatus } from './schema.js';

/**
 * Who writes which field of an AgentTask's status. Each writer applies only its own fields, with
 * server-side apply under its own field manager, so no writer can overwrite another's facts and
 * `managedFields` on a live task shows who wrote what. The tables are typed over the status
 * schema: a new status field does not compile until it has an owner.
 */
export const FieldManager = {
  /** Turns facts into state: lifecycle conditions, bound pods, revocation. */
  controller: 'chainwarden-controller',
  /** Records hops: the chain context, pending and recent hops, the audit head, a violation. */
  journal: 'chainwarden-journal',
  /** Records what it handed out and what the agent reported: sessions, completion. */
  broker: 'chainwarden-broker',
  /** Records which pending hops' approval notifications were delivered. */
  notifier: 'chainwarden-notifier',
} as const;
export type StatusOwner = keyof typeof FieldManager;

type Credentials = NonNullable<AgentTaskStatus['credentials']>;

/** Fields of `status.credentials`: the broker records sessions, the controller revocation. */
export const CREDENTIALS_OWNERS: Record<keyof Credentials, StatusOwner> = {
  sourceIdentity: 'broker',
  sessions: 'broker',
  expiration: 'broker',
  revokedAt: 'controller',
  awsDenyInPlace: 'controller',
};

/** Top-level status fields; `credentials` and `conditions` are split by the tables around this one. */
export const STATUS_OWNERS: Record<Exclude<keyof AgentTaskStatus, 'credentials' | 'conditions'>, StatusOwner> = {
  state: 'controller',
  observedGeneration: 'controller',
  spiffeID: 'controller',
  boundPods: 'controller',
  deadline: 'controller',
  hops: 'journal',
  chain: 'journal',
  pendingHops: 'journal',
  recentHops: 'journal',
  notifiedHops: 'notifier',
  violation: 'journal',
  audit: 'journal',
  completion: 'broker',
};

/** Conditions, by type. */
export const CONDITION_OWNERS: Record<ConditionType, StatusOwner> = {
  [ConditionType.Ready]: 'controller',
  [ConditionType.IdentityBound]: 'controller',
  [ConditionType.Completed]: 'controller',
  [ConditionType.Expired]: 'controller',
  [ConditionType.Violated]: 'controller',
  [ConditionType.Revoked]: 'controller',
  [ConditionType.CredentialsIssued]: 'broker',
};

function pick<T extends object>(value: T | undefined, owners: Partial<Record<keyof T, StatusOwner>>, owner: StatusOwner): Partial<T> {
  const out: Partial<T> = {};
  for (const key of Object.keys(value ?? {}) as (keyof T)[]) {
    if (owners[key] === owner && value?.[key] !== undefined) out[key] = value[key];
  }
  return out;
}

/**
 * The part of `status` that `owner` writes. A server-side apply states every field its manager
 * owns (a field left out is removed), so writers apply this of their full view of the status.
 */
export function ownedStatus(owner: StatusOwner, status: AgentTaskStatus): AgentTaskStatus {
  const out = pick(status, STATUS_OWNERS as Partial<Record<keyof AgentTaskStatus, StatusOwner>>, owner) as AgentTaskStatus;
  const credentials = pick(status.credentials, CREDENTIALS_OWNERS, owner);
  if (Object.keys(credentials).length > 0) out.credentials = credentials;
  const conditions = (status.conditions ?? []).filter((c) => CONDITION_OWNERS[c.type as ConditionType] === owner);
  if (conditions.length > 0) out.conditions = conditions;
  return out;
}
