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
  /**
   * Records hops (the chain context, pending and recent hops, the audit head, a violation) and the
   * sessions handed out. A manager name of its own, apart from the `chainwarden-journal` of
   * versions whose journal did not record sessions: a field only one manager owns is removed when
   * that manager applies without it, and those journals apply without the session record.
   */
  journal: 'chainwarden-journal-v2',
  /** Records what the agent reported (completion) and why a credential could not be issued. */
  broker: 'chainwarden-broker',
  /** Records which pending hops' approval notifications were delivered. */
  notifier: 'chainwarden-notifier',
} as const;
export type StatusOwner = keyof typeof FieldManager;

type Credentials = NonNullable<AgentTaskStatus['credentials']>;

/**
 * A field two writers share. Each states it as it read it, or as it changes it, in every write,
 * so neither removes it by leaving it out; the write whose version is current wins, as for any
 * field. The sessions the broker hands out are recorded by the journal, in the same write as
 * their audit records and whatever else the task's journal has queued; the broker wrote them
 * itself in earlier versions, so it still states them (and the CredentialsIssued condition it
 * sets when an issuance fails). With replicas of both versions running, each version's writers
 * leave the other's record in place: the earlier broker states the record, the earlier journal
 * (another manager name, see FieldManager) never owned it.
 */
type Owners = StatusOwner | readonly StatusOwner[];
const SESSIONS: Owners = ['journal', 'broker'];

/** Fields of `status.credentials`: sessions are recorded with their audit records, revocation by the controller. */
export const CREDENTIALS_OWNERS: Record<keyof Credentials, Owners> = {
  sourceIdentity: SESSIONS,
  sessions: SESSIONS,
  expiration: SESSIONS,
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
export const CONDITION_OWNERS: Record<ConditionType, Owners> = {
  [ConditionType.Ready]: 'controller',
  [ConditionType.IdentityBound]: 'controller',
  [ConditionType.Completed]: 'controller',
  [ConditionType.Expired]: 'controller',
  [ConditionType.Violated]: 'controller',
  [ConditionType.Revoked]: 'controller',
  [ConditionType.CredentialsIssued]: SESSIONS,
};

/** Whether `owner` writes a field owned by `owners`. */
const writes = (owners: Owners | undefined, owner: StatusOwner): boolean => (typeof owners === 'string' ? owners === owner : (owners?.includes(owner) ?? false));

function pick<T extends object>(value: T | undefined, owners: Partial<Record<keyof T, Owners>>, owner: StatusOwner): Partial<T> {
  const out: Partial<T> = {};
  for (const key of Object.keys(value ?? {}) as (keyof T)[]) {
    if (writes(owners[key], owner) && value?.[key] !== undefined) out[key] = value[key];
  }
  return out;
}

/**
 * The part of `status` that `owner` writes. A server-side apply states every field its manager
 * owns (a field left out is removed), so writers apply this of their full view of the status.
 */
export function ownedStatus(owner: StatusOwner, status: AgentTaskStatus): AgentTaskStatus {
  const out = pick(status, STATUS_OWNERS as Partial<Record<keyof AgentTaskStatus, Owners>>, owner) as AgentTaskStatus;
  const credentials = pick(status.credentials, CREDENTIALS_OWNERS, owner);
  if (Object.keys(credentials).length > 0) out.credentials = credentials;
  const conditions = (status.conditions ?? []).filter((c) => writes(CONDITION_OWNERS[c.type as ConditionType], owner));
  if (conditions.length > 0) out.conditions = conditions;
  return out;
}
