import { isDeepStrictEqual } from 'node:util';
import { checkTaskAgainstPolicy } from '../../admission/plugins/agenttask.js';
import { SIDECAR_NAME } from '../../admission/plugins/pod.js';
import { conditionOf, ConditionType, mergeConditions, Reason, type DesiredCondition } from '../../api/conditions.js';
import { ownedStatus } from '../../api/ownership.js';
import type { AgentPolicy, AgentTask, AgentTaskStatus, TaskState } from '../../api/schema.js';
import { deadlineOf, isTerminal, TASK_LABEL } from '../../api/task.js';
import { printable } from '../../api/text.js';
import type { RevocationResult } from '../../credentials/revocation.js';
import { spiffeIdFor } from '../../identity/spiffe.js';

/** What the controller needs to know of a pod labelled with the task. */
export interface PodView {
  name: string;
  uid: string;
  serviceAccountName: string;
  phase: string;
  deleting: boolean;
  /** Whether admission injected the pod (`showsInjection`): a pod it did not never binds. */
  injected: boolean;
  /** Epoch ms; a pod older than its task never binds. */
  createdAt: number;
}

export interface Observed {
  task: AgentTask;
  policy: AgentPolicy | undefined;
  pods: readonly PodView[];
  now: number;
  trustDomain: string;
}

export interface TaskEvent {
  type: 'Normal' | 'Warning';
  reason: string;
  message: string;
}

/** An audit record the controller writes for a transition it made. */
export interface TaskRecord {
  type: 'task_admitted' | 'identity_bound' | 'completion' | 'expiry' | 'revocation';
  data: Record<string, unknown>;
}

/** What to do with a live task, decided from what was observed alone. */
export interface Plan {
  /** The controller's full view of the status; only its own fields of it are written. */
  status: AgentTaskStatus;
  /** Whether any field the controller owns differs from what the task shows. */
  changed: boolean;
  /** The task has ended and what it was given is not yet taken back. */
  revoke: boolean;
  events: TaskEvent[];
  records: TaskRecord[];
  requeueAfterMs?: number;
}

/**
 * The facts the controller acts on: its own fields, the facts the broker and the journal record
 * for it to turn into state, and the metadata a reconcile reads. A task update that changes none
 * of these (the journal recording hops) needs no reconcile.
 */
export function factsOf(task: AgentTask): unknown {
  const { generation, deletionTimestamp, finalizers, uid } = task.metadata;
  const status = task.status ?? {};
  return {
    meta: { generation, deletionTimestamp, finalizers, uid },
    own: ownedStatus('controller', status),
    violation: status.violation,
    completion: status.completion,
    pending: (status.pendingHops ?? []).map((h) => [h.hopId, h.timeoutAt]),
  };
}

const finished = (p: PodView) => p.phase === 'Succeeded' || p.phase === 'Failed';

/** Pods that may hold the task's identity: injected, right service account, created after the task, not finished, not going away. */
export function bindablePods(task: AgentTask, pods: readonly PodView[]): PodView[] {
  const created = Date.parse(task.metadata.creationTimestamp ?? '');
  return pods.filter((p) => p.injected && p.serviceAccountName === task.spec.serviceAccountName && p.createdAt >= created && !p.deleting && !finished(p));
}

interface Verdict {
  state: TaskState;
  conditions: DesiredCondition[];
  bound: PodView[];
}

const describePods = (pods: readonly PodView[]) => pods.map((p) => `${p.name} (${p.uid})`).join(', ');

function ended(state: TaskState, own: DesiredCondition): Verdict {
  return {
    state,
    bound: [],
    conditions: [
      own,
      { type: ConditionType.Ready, status: 'False', reason: Reason.Ended, message: `the task is ${state.toLowerCase()}` },
      { type: ConditionType.IdentityBound, status: 'False', reason: Reason.Released, message: 'the task has ended; no pod holds its identity' },
    ],
  };
}

function notEnded(deadline: number): DesiredCondition[] {
  return [
    { type: ConditionType.Completed, status: 'False', reason: Reason.NotCompleted, message: 'the task has not completed' },
    { type: ConditionType.Expired, status: 'False', reason: Reason.BeforeDeadline, message: `the deadline is ${new Date(deadline).toISOString()}` },
  ];
}

function unbound(deadline: number, reason: Reason, message: string): Verdict {
  return {
    state: 'Pending',
    bound: [],
    conditions: [
      { type: ConditionType.Ready, status: 'False', reason, message },
      { type: ConditionType.IdentityBound, status: 'False', reason: reason === Reason.WaitingForPods ? Reason.NoAgentPods : Reason.Released, message },
      ...notEnded(deadline),
    ],
  };
}

/** One named check: a verdict when it applies, undefined to pass to the next. */
type Check = (o: Observed, deadline: number) => Verdict | undefined;

/** An ended task stays ended, with the condition that ended it. */
const alreadyEnded: Check = ({ task }) => {
  const current = task.status?.state;
  if (!isTerminal(current)) return undefined;
  const own = (['Completed', 'Expired', 'Violated'] as const).map((t) => conditionOf(task.status?.conditions, t)).find((c) => c?.status === 'True');
  return ended(current ?? 'Completed', {
    type: (own?.type as ConditionType | undefined) ?? ConditionType.Completed,
    status: 'True',
    reason: (own?.reason as Reason | undefined) ?? Reason.AgentReported,
    message: own?.message ?? 'the task has ended',
  });
};

/** The journal recorded a hop that broke the policy. */
const violated: Check = ({ task }) => {
  const v = task.status?.violation;
  if (!v) return undefined;
  return ended('Violated', { type: ConditionType.Violated, status: 'True', reason: Reason.PolicyViolation, message: `hop ${v.hopId} broke ${v.rule}: ${v.message}` });
};

/** The broker recorded that the agent reported the chain complete. */
const completedByAgent: Check = ({ task }) => {
  const c = task.status?.completion;
  if (!c) return undefined;
  return ended('Completed', { type: ConditionType.Completed, status: 'True', reason: Reason.AgentReported, message: `pod ${c.pod} reported the chain complete at ${c.at}` });
};

const deadlinePassed: Check = ({ now }, deadline) =>
  now >= deadline ? ended('Expired', { type: ConditionType.Expired, status: 'True', reason: Reason.DeadlinePassed, message: `the deadline ${new Date(deadline).toISOString()} has passed` }) : undefined;

/** Every agent pod has finished and none is left to run. */
const podsFinished: Check = ({ task, pods }) => {
  const mine = pods.filter((p) => p.injected && p.serviceAccountName === task.spec.serviceAccountName);
  if (bindablePods(task, pods).length > 0 || !mine.some(finished) || mine.some((p) => !finished(p) && !p.deleting)) return undefined;
  return ended('Completed', { type: ConditionType.Completed, status: 'True', reason: Reason.PodsFinished, message: `the agent pods finished: ${mine.filter(finished).map((p) => `${p.name} ${p.phase}`).join(', ')}` });
};

const policyMissing: Check = ({ task, policy }, deadline) =>
  policy ? undefined : unbound(deadline, Reason.PolicyNotFound, `AgentPolicy "${task.spec.policyRef.name}" does not exist in namespace ${task.metadata.namespace ?? ''}; create it, and the task binds`);

const outsidePolicy: Check = ({ task, policy }, deadline) => {
  if (!policy) return undefined;
  const violations = checkTaskAgainstPolicy(task, policy);
  if (violations.length === 0) return undefined;
  return unbound(deadline, Reason.OutsidePolicy, `the task is outside AgentPolicy ${policy.metadata.name ?? ''}: ${violations.map((v) => `${v.field}: ${v.message}`).join('; ')}`);
};

const noPods: Check = ({ task, pods }, deadline) => {
  if (bindablePods(task, pods).length > 0) return undefined;
  const created = Date.parse(task.metadata.creationTimestamp ?? '');
  const uninjected = pods.filter((p) => !p.injected);
  const strangers = pods.filter((p) => p.injected && p.serviceAccountName !== task.spec.serviceAccountName);
  const older = pods.filter((p) => p.injected && p.serviceAccountName === task.spec.serviceAccountName && p.createdAt < created);
  const hints = [
    uninjected.length > 0 ? `ignored ${describePods(uninjected)}: not injected by chainwarden's admission (no ${SIDECAR_NAME} sidecar holding the broker token); create the pod again, labelled, while the chainwarden webhook is registered` : '',
    strangers.length > 0 ? `ignored ${describePods(strangers)}: not running as service account ${task.spec.serviceAccountName}` : '',
    older.length > 0 ? `ignored ${describePods(older)}: created before the task; a pod must be created after its AgentTask` : '',
  ].filter(Boolean);
  return unbound(deadline, Reason.WaitingForPods, `no running pod labelled ${TASK_LABEL}=${task.metadata.name ?? ''} with service account ${task.spec.serviceAccountName}${hints.length ? `; ${hints.join('; ')}` : ''}`);
};

const bound: Check = ({ task, pods }, deadline) => {
  const live = bindablePods(task, pods);
  return {
    state: 'Bound',
    bound: live,
    conditions: [
      { type: ConditionType.Ready, status: 'True', reason: Reason.Bound, message: `identity bound to ${describePods(live)}` },
      { type: ConditionType.IdentityBound, status: 'True', reason: Reason.PodsBound, message: `bound to ${describePods(live)}` },
      ...notEnded(deadline),
    ],
  };
};

/** In order: the first check that applies decides. Ending facts come before anything that could bind. */
const CHECKS: readonly Check[] = [alreadyEnded, violated, completedByAgent, deadlinePassed, podsFinished, policyMissing, outsidePolicy, noPods, bound];

function judge(o: Observed, deadline: number): Verdict {
  for (const check of CHECKS) {
    const verdict = check(o, deadline);
    if (verdict) return verdict;
  }
  throw new Error('unreachable: the last check always decides');
}

const ENDED_EVENT: Record<string, TaskEvent['type']> = { Completed: 'Normal', Expired: 'Warning', Violated: 'Warning' };

function transitionEvents(before: AgentTaskStatus | undefined, after: AgentTaskStatus, verdict: Verdict): TaskEvent[] {
  const ready = verdict.conditions.find((c) => c.type === ConditionType.Ready);
  if (before?.state !== after.state) {
    const state = after.state ?? 'Pending';
    if (isTerminal(state)) return [{ type: ENDED_EVENT[state] ?? 'Normal', reason: state, message: verdict.conditions[0]?.message ?? '' }];
    const warn = state === 'Pending' && ready?.reason !== Reason.WaitingForPods;
    return [{ type: warn ? 'Warning' : 'Normal', reason: ready?.reason ?? 'Pending', message: ready?.message ?? '' }];
  }
  if (after.state !== 'Bound' || isDeepStrictEqual(before?.boundPods, after.boundPods)) return [];
  const was = new Set((before?.boundPods ?? []).map((p) => p.uid));
  const now = new Set((after.boundPods ?? []).map((p) => p.uid));
  const released = (before?.boundPods ?? []).filter((p) => !now.has(p.uid));
  const added = (after.boundPods ?? []).filter((p) => !was.has(p.uid));
  const parts = [added.length ? `bound ${added.map((p) => `${p.name} (${p.uid})`).join(', ')}` : '', released.length ? `released ${released.map((p) => `${p.name} (${p.uid})`).join(', ')}` : ''];
  return [{ type: 'Normal', reason: 'Rebound', message: parts.filter(Boolean).join('; ') }];
}

function transitionRecords(task: AgentTask, before: AgentTaskStatus | undefined, after: AgentTaskStatus): TaskRecord[] {
  const records: TaskRecord[] = [];
  if (!before?.state) {
    records.push({
      type: 'task_admitted',
      data: {
        policy: task.spec.policyRef.name,
        serviceAccount: task.spec.serviceAccountName,
        ttl: task.spec.ttl,
        deadline: after.deadline,
        intent: task.spec.intent,
        credentials: (task.spec.credentials ?? []).map((c) => ({ name: c.name, roleArn: c.aws.roleArn })),
      },
    });
  }
  if (after.state === 'Bound' && (before?.state !== 'Bound' || !isDeepStrictEqual(before.boundPods, after.boundPods))) {
    records.push({ type: 'identity_bound', data: { spiffeID: after.spiffeID, pods: after.boundPods } });
  }
  if (after.state === before?.state) return records;
  if (after.state === 'Expired') records.push({ type: 'expiry', data: { deadline: after.deadline } });
  if (after.state === 'Completed') {
    const reason = conditionOf(after.conditions, ConditionType.Completed)?.reason;
    records.push({ type: 'completion', data: { reason, ...(reason === Reason.AgentReported ? { pod: after.completion?.pod } : {}) } });
  }
  return records;
}

const isRevoked = (status: AgentTaskStatus | undefined) => conditionOf(status?.conditions, ConditionType.Revoked)?.status === 'True';

/** Whether a task being deleted still has something to take back before its finalizer goes. */
export const needsRevocation = (task: AgentTask): boolean => !isRevoked(task.status);

/** From what is observed to what to do with a live task: pure, so most of the controller is tested as tables. */
export function decide(o: Observed): Plan {
  const { task, now } = o;
  const deadline = deadlineOf(task);
  const verdict = judge(o, deadline);
  const before = task.status;
  const status: AgentTaskStatus = {
    ...before,
    state: verdict.state,
    observedGeneration: task.metadata.generation,
    spiffeID: spiffeIdFor(o.trustDomain, task.metadata.namespace ?? '', task.spec.serviceAccountName, task.metadata.name ?? ''),
    deadline: new Date(deadline).toISOString(),
    boundPods: verdict.bound.map((p) => ({ name: p.name, uid: p.uid })),
    conditions: mergeConditions(before?.conditions, verdict.conditions.map((c) => ({ ...c, message: printable(c.message) })), new Date(now).toISOString(), task.metadata.generation),
  };
  const terminal = isTerminal(verdict.state);
  return {
    status,
    changed: !isDeepStrictEqual(ownedStatus('controller', before ?? {}), ownedStatus('controller', status)),
    revoke: terminal && !isRevoked(before),
    events: transitionEvents(before, status, verdict),
    records: transitionRecords(task, before, status),
    requeueAfterMs: terminal ? undefined : Math.max(0, deadline - now) + 50,
  };
}

/** The status and Event once the task's revocation is done (broker-side always; AWS-side where it had roles). */
export function revoked(status: AgentTaskStatus, outcome: RevocationResult, now: number): { status: AgentTaskStatus; event: TaskEvent; record: TaskRecord } {
  const at = new Date(now).toISOString();
  const denied = outcome.roles.length > 0;
  const message = denied
    ? `the broker refuses the task; Deny on aws:SourceIdentity=${outcome.marker} written to ${outcome.roles.join(', ')} until ${new Date(outcome.pruneAfter).toISOString()}`
    : 'the broker refuses the task; it requested no AWS credentials, so there is nothing to deny in AWS';
  return {
    status: {
      ...status,
      credentials: { ...status.credentials, revokedAt: status.credentials?.revokedAt ?? at, awsDenyInPlace: denied },
      conditions: mergeConditions(status.conditions, [{ type: ConditionType.Revoked, status: 'True', reason: denied ? Reason.DenyWritten : Reason.NothingIssued, message }], at),
    },
    event: { type: 'Normal', reason: 'Revoked', message },
    record: { type: 'revocation', data: { marker: denied ? outcome.marker : undefined, awsDenyInPlace: denied, state: status.state } },
  };
}

/** The status while the AWS-side deny could not be written: the broker already refuses, the deny is retried. */
export function revocationPending(status: AgentTaskStatus, error: string, now: number): AgentTaskStatus {
  const at = new Date(now).toISOString();
  return {
    ...status,
    credentials: { ...status.credentials, revokedAt: status.credentials?.revokedAt ?? at, awsDenyInPlace: false },
    conditions: mergeConditions(
      status.conditions,
      [{ type: ConditionType.Revoked, status: 'False', reason: Reason.DenyPending, message: `the broker refuses the task; writing the AWS-side deny failed and is retried: ${printable(error)}` }],
      at,
    ),
  };
}
