import type { Condition } from './schema.js';

/**
 * Condition types and their reasons. Every reason a condition can carry is listed here, and
 * the README documents each; nothing else is written.
 */
export const ConditionType = {
  Ready: 'Ready',
  IdentityBound: 'IdentityBound',
  CredentialsIssued: 'CredentialsIssued',
  Completed: 'Completed',
  Violated: 'Violated',
  Revoked: 'Revoked',
  Expired: 'Expired',
} as const;
export type ConditionType = (typeof ConditionType)[keyof typeof ConditionType];

export const Reason = {
  // Ready
  Bound: 'Bound',
  WaitingForPods: 'WaitingForPods',
  PolicyNotFound: 'PolicyNotFound',
  OutsidePolicy: 'OutsidePolicy',
  Ended: 'Ended',
  // IdentityBound
  PodsBound: 'PodsBound',
  NoAgentPods: 'NoAgentPods',
  Released: 'Released',
  // Completed
  AgentReported: 'AgentReported',
  PodsFinished: 'PodsFinished',
  NotCompleted: 'NotCompleted',
  // Expired
  DeadlinePassed: 'DeadlinePassed',
  BeforeDeadline: 'BeforeDeadline',
  // CredentialsIssued
  Issued: 'Issued',
  AssumeRoleFailed: 'AssumeRoleFailed',
  RoleNotAllowed: 'RoleNotAllowed',
  StsLimitExceeded: 'StsLimitExceeded',
  StsUnavailable: 'StsUnavailable',
  // Revoked
  DenyWritten: 'DenyWritten',
  DenyPending: 'DenyPending',
  NothingIssued: 'NothingIssued',
  // Violated
  PolicyViolation: 'PolicyViolation',
} as const;
export type Reason = (typeof Reason)[keyof typeof Reason];

export interface DesiredCondition {
  type: ConditionType;
  status: 'True' | 'False' | 'Unknown';
  reason: Reason;
  message: string;
}

/**
 * Merges desired conditions into the current list. `lastTransitionTime` moves only when the
 * status changes; a new reason or message with the same status keeps the old time.
 */
export function mergeConditions(current: readonly Condition[] | undefined, desired: readonly DesiredCondition[], now: string, generation?: number): Condition[] {
  const byType = new Map((current ?? []).map((c) => [c.type, c]));
  for (const d of desired) {
    const old = byType.get(d.type);
    byType.set(d.type, {
      ...d,
      lastTransitionTime: old && old.status === d.status ? old.lastTransitionTime : now,
      ...(generation !== undefined ? { observedGeneration: generation } : {}),
    });
  }
  return [...byType.values()];
}

export const conditionOf = (conditions: readonly Condition[] | undefined, type: ConditionType) => conditions?.find((c) => c.type === type);
