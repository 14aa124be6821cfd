import { isDeepStrictEqual } from 'node:util';
import { checkTaskAgainstPolicy } from '../../admission/plugins/agenttask.js';
import { conditionOf, ConditionType, mergeConditions, Reason, type DesiredCondition } from '../../api/conditions.js';
import { parseDuration } from '../../api/duration.js';
import type { AgentPolicy, AgentTask, AgentTaskStatus, TaskState } from '../../api/schema.js';
import { spiffeIdFor } from '../../identity/spiffe.js';

export const FINALIZER = 'chainwarden.io/revoke';
export const TASK_LABEL = 'chainwarden.io/task';

/** What the controller needs to know of a pod labelled with the task. */
export interface PodView {
  name: string;
  uid: string;
  serviceAccountName: string;
  phase: string;
  deleting: boolean;
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
  type: 'task_admitted' | 'identity_bound' | 'completion' | 'expiry';
  data: Record<string, unknown>;
}

/** What to do, decided from what was observed alone. */
export interface Plan {
  addFinalizer: boolean;
  /** The task is being deleted: clean up, then drop the finalizer. */
  finalize: boolean;
  /** The task has ended: everything it was given must be taken back. */
  revoke: boolean;
  status: AgentTaskStatus;
  statusChanged: boolean;
  events: TaskEvent[];
  records: TaskRecord[];
  requeueAfterMs?: number;
}

const TERMINAL: readonly TaskState[] = ['Completed', 'Expired', 'Violated'];
export const isTerminal = (state: TaskState | undefined) => state !== undefined && TERMINAL.includes(state);

export function deadlineOf(task: AgentTask): number {
  const created = Date.parse(task.metadata.creationTimestamp ?? '');
  return created + parseDuration(task.spec.ttl);
}

/** Pods that may hold the task's identity: right service account, not finished, not going away. */
export function bindablePods(task: AgentTask, pods: readonly PodView[]): PodView[] {
  return pods.filter((p) => p.serviceAccountName === task.spec.serviceAccountName && !p.deleting && p.phase !== 'Succeeded' && p.phase !== 'Failed');
}

const finished = (p: PodView) => p.phase === 'Succeeded' || p.phase === 'Failed';

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

/** The task's state from what is observed; each branch is one named check with its reason. */
function judge(o: Observed, deadline: number): Verdict {
  const { task, policy, pods, now } = o;
  const current = task.status?.state;
  if (isTerminal(current)) {
    const own = (['Completed', 'Expired', 'Violated'] as const).map((t) => conditionOf(task.status?.conditions, t)).find((c) => c?.status === 'True');
    return ended(current ?? 'Completed', {
      type: (own?.type as ConditionType | undefined) ?? ConditionType.Completed,
      status: 'True',
      reason: (own?.reason as Reason | undefined) ?? Reason.AgentReported,
      message: own?.message ?? 'the task has ended',
    });
  }
  if (now >= deadline) {
    return ended('Expired', { type: ConditionType.Expired, status: 'True', reason: Reason.DeadlinePassed, message: `the deadline ${new Date(deadline).toISOString()} has passed` });
  }
  const live = bindablePods(task, pods);
  const mine = pods.filter((p) => p.serviceAccountName === task.spec.serviceAccountName);
  if (live.length === 0 && mine.some(finished) && !mine.some((p) => !finished(p) && !p.deleting)) {
    return ended('Completed', { type: ConditionType.Completed, status: 'True', reason: Reason.PodsFinished, message: `the agent pods finished: ${mine.filter(finished).map((p) => `${p.name} ${p.phase}`).join(', ')}` });
  }
  const notEnded: DesiredCondition[] = [
    { type: ConditionType.Completed, status: 'False', reason: Reason.NotCompleted, message: 'the task has not completed' },
    { type: ConditionType.Expired, status: 'False', reason: Reason.BeforeDeadline, message: `the deadline is ${new Date(deadline).toISOString()}` },
  ];
  const unbound = (reason: Reason, message: string): Verdict => ({
    state: 'Pending',
    bound: [],
    conditions: [
      { type: ConditionType.Ready, status: 'False', reason, message },
      { type: ConditionType.IdentityBound, status: 'False', reason: reason === Reason.WaitingForPods ? Reason.NoAgentPods : Reason.Released, message },
      ...notEnded,
    ],
  });
  if (!policy) {
    return unbound(Reason.PolicyNotFound, `AgentPolicy "${task.spec.policyRef.name}" does not exist in namespace ${task.metadata.namespace ?? ''}; create it, and the task binds`);
  }
  const violations = checkTaskAgainstPolicy(task, policy);
  if (violations.length > 0) {
    return unbound(Reason.OutsidePolicy, `the task is outside AgentPolicy ${policy.metadata.name ?? ''}: ${violations.map((v) => `${v.field}: ${v.message}`).join('; ')}`);
  }
  if (live.length === 0) {
    const strangers = pods.filter((p) => p.serviceAccountName !== task.spec.serviceAccountName);
    const hint = strangers.length > 0 ? `; ignored ${describePods(strangers)}: not running as service account ${task.spec.serviceAccountName}` : '';
    return unbound(Reason.WaitingForPods, `no running pod labelled ${TASK_LABEL}=${task.metadata.name ?? ''} with service account ${task.spec.serviceAccountName}${hint}`);
  }
  return {
    state: 'Bound',
    bound: live,
    conditions: [
      { type: ConditionType.Ready, status: 'True', reason: Reason.Bound, message: `identity bound to ${describePods(live)}` },
      { type: ConditionType.IdentityBound, status: 'True', reason: Reason.PodsBound, message: `bound to ${describePods(live)}` },
      ...notEnded,
    ],
  };
}

function transitionEvents(before: AgentTaskStatus | undefined, after: AgentTaskStatus, verdict: Verdict): TaskEvent[] {
  const events: TaskEvent[] = [];
  const ready = verdict.conditions.find((c) => c.type === ConditionType.Ready);
  if (before?.state !== after.state) {
    const own = verdict.conditions[0];
    const warn = after.state === 'Expired' || after.state === 'Violated' || (after.state === 'Pending' && ready?.reason !== Reason.WaitingForPods);
    const reason = isTerminal(after.state) ? (after.state ?? 'Ended') : (ready?.reason ?? 'Pending');
    events.push({ type: warn ? 'Warning' : 'Normal', reason, message: (isTerminal(after.state) ? own?.message : ready?.message) ?? '' });
  } else if (after.state === 'Bound' && !isDeepStrictEqual(before?.boundPods, after.boundPods)) {
    const was = new Set((before?.boundPods ?? []).map((p) => p.uid));
    const now = new Set((after.boundPods ?? []).map((p) => p.uid));
    const released = (before?.boundPods ?? []).filter((p) => !now.has(p.uid));
    const added = (after.boundPods ?? []).filter((p) => !was.has(p.uid));
    const parts = [added.length ? `bound ${added.map((p) => `${p.name} (${p.uid})`).join(', ')}` : '', released.length ? `released ${released.map((p) => `${p.name} (${p.uid})`).join(', ')}` : ''];
    events.push({ type: 'Normal', reason: 'Rebound', message: parts.filter(Boolean).join('; ') });
  }
  return events;
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
  if (after.state !== before?.state && after.state === 'Expired') records.push({ type: 'expiry', data: { deadline: after.deadline } });
  if (after.state !== before?.state && after.state === 'Completed') records.push({ type: 'completion', data: { reason: after.conditions?.find((c) => c.type === 'Completed')?.reason } });
  return records;
}

/** From what is observed to what to do: pure, so most of the controller is tested as tables. */
export function decide(o: Observed): Plan {
  const { task, now } = o;
  const deleting = Boolean(task.metadata.deletionTimestamp);
  const hasFinalizer = (task.metadata.finalizers ?? []).includes(FINALIZER);
  const revoked = conditionOf(task.status?.conditions, ConditionType.Revoked)?.status === 'True';
  if (deleting) {
    return { addFinalizer: false, finalize: hasFinalizer, revoke: hasFinalizer && !revoked, status: task.status ?? {}, statusChanged: false, events: [], records: [] };
  }
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
    conditions: mergeConditions(before?.conditions, verdict.conditions, new Date(now).toISOString(), task.metadata.generation),
  };
  const terminal = isTerminal(verdict.state);
  return {
    addFinalizer: !hasFinalizer,
    finalize: false,
    revoke: terminal && !revoked,
    status,
    statusChanged: !isDeepStrictEqual(before, status),
    events: transitionEvents(before, status, verdict),
    records: transitionRecords(task, before, status),
    requeueAfterMs: terminal ? undefined : Math.max(0, deadline - now) + 50,
  };
}
