import { InvalidObjectError, parseAgentPolicy, parseAgentTask } from '../../api/parse.js';
import type { AgentPolicy, AgentTask } from '../../api/schema.js';
import type { PodRecord } from '../../broker/auth.js';
import { errorMessage } from '../../errors.js';
import type { TaskWriter } from '../../kube/tasks.js';
import type { Logger } from '../../log.js';
import type { Clock } from '../../runtime/clock.js';
import type { Informer } from '../../runtime/informer.js';
import type { Metrics } from '../../runtime/metrics.js';
import { WorkQueue, type ReconcileResult } from '../../runtime/workqueue.js';
import { decide, FINALIZER, TASK_LABEL, type PodView, type TaskEvent } from './decide.js';
import { ConditionType, mergeConditions, Reason } from '../../api/conditions.js';
import type { AgentApproval, AgentTaskStatus } from '../../api/schema.js';
import type { TaskJournal } from '../../audit/journal.js';
import type { RevocationResult } from '../../credentials/revocation.js';
import { isDeepStrictEqual } from 'node:util';

export interface TaskControllerDeps {
  tasks: Informer<AgentTask>;
  policies: Informer<AgentPolicy>;
  pods: Informer<PodRecord>;
  writer: TaskWriter;
  clock: Clock;
  log: Logger;
  metrics: Metrics;
  trustDomain: string;
  /** Approvals and timeouts of waiting hops; every replica's broker shares it. */
  resolvePending?: (task: AgentTask) => Promise<number>;
  /** Where the controller's audit records go. */
  journal?: TaskJournal;
  approvals?: Informer<AgentApproval>;
  /** AWS-side revocation; must treat "already denied" as done. Absent: nothing to deny. */
  revoke?: (task: AgentTask, policy: AgentPolicy | undefined) => Promise<RevocationResult>;
}

const CONFLICT_RETRY_MS = 100;

export function podView(pod: PodRecord): PodView {
  return {
    name: pod.metadata?.name ?? '',
    uid: pod.metadata?.uid ?? '',
    serviceAccountName: pod.spec?.serviceAccountName ?? 'default',
    phase: pod.status?.phase ?? 'Pending',
    deleting: Boolean(pod.metadata?.deletionTimestamp),
  };
}

/** Status fields the broker's journal owns; a write that changes only these needs no reconcile. */
const JOURNAL_FIELDS = new Set(['chain', 'hops', 'audit', 'recentHops']);

/**
 * True when an update touched nothing the controller decides on: the same spec and metadata
 * (bar the resourceVersion) and a status that differs only in the journal's fields.
 */
export function onlyJournalChanged(old: AgentTask, next: AgentTask): boolean {
  if (old.metadata.generation !== next.metadata.generation || old.metadata.deletionTimestamp !== next.metadata.deletionTimestamp) return false;
  if (!isDeepStrictEqual(old.metadata.finalizers, next.metadata.finalizers) || !isDeepStrictEqual(old.metadata.labels, next.metadata.labels)) return false;
  const a = (old.status ?? {}) as Record<string, unknown>;
  const b = (next.status ?? {}) as Record<string, unknown>;
  for (const key of new Set([...Object.keys(a), ...Object.keys(b)])) {
    if (!JOURNAL_FIELDS.has(key) && !isDeepStrictEqual(a[key], b[key])) return false;
  }
  return true;
}

/**
 * The AgentTask controller: gather → decide → act → report. It never knows why it ran; it
 * reads the caches, asks `decide` for a plan, carries it out, and writes the status once.
 */
export class AgentTaskController {
  readonly queue: WorkQueue;
  private active = false;

  constructor(private readonly deps: TaskControllerDeps) {
    this.queue = new WorkQueue('agenttask', { baseMs: 200, maxMs: 60_000 }, deps.metrics);
    deps.tasks.on((event, task, old) => {
      if (event === 'update' && old && onlyJournalChanged(old, task)) return;
      this.enqueue(`${task.metadata.namespace ?? ''}/${task.metadata.name ?? ''}`);
    });
    deps.pods.on((_event, pod) => {
      const task = pod.metadata?.labels?.[TASK_LABEL];
      if (task) this.enqueue(`${pod.metadata?.namespace ?? ''}/${task}`);
    });
    deps.approvals?.on((_event, approval) => this.enqueue(`${approval.metadata.namespace ?? ''}/${approval.spec.taskRef.name}`));
    deps.policies.on((_event, policy) => {
      for (const task of deps.tasks.list()) {
        if (task.metadata.namespace === policy.metadata.namespace && task.spec.policyRef.name === policy.metadata.name) this.enqueue(`${task.metadata.namespace}/${task.metadata.name ?? ''}`);
      }
    });
  }

  private enqueue(key: string): void {
    if (this.active) this.queue.add(key);
  }

  /** Reconciles until `signal` aborts (leadership lost, shutdown). Every known task is looked at on start. */
  async run(signal: AbortSignal, workers = 2): Promise<void> {
    this.active = true;
    for (const task of this.deps.tasks.list()) this.queue.add(`${task.metadata.namespace ?? ''}/${task.metadata.name ?? ''}`);
    signal.addEventListener('abort', () => {
      this.active = false;
      this.queue.shutdown();
    });
    await this.queue.run(workers, (key) => this.reconcile(key), (key, err, retryIn) => {
      this.deps.log.warn({ task: key, err: errorMessage(err), retryInMs: retryIn }, 'reconcile failed; retrying');
    });
  }

  private async revoke(task: AgentTask, policy: AgentPolicy | undefined): Promise<RevocationResult> {
    return this.deps.revoke ? this.deps.revoke(task, policy) : { marker: '', roles: [], pruneAfter: 0 };
  }

  private withRevocation(status: AgentTaskStatus, outcome: RevocationResult, events: TaskEvent[]): AgentTaskStatus {
    const now = new Date(this.deps.clock.now()).toISOString();
    const denied = outcome.roles.length > 0;
    const message = denied
      ? `the broker refuses the task; Deny on aws:SourceIdentity=${outcome.marker} written to ${outcome.roles.join(', ')} until ${new Date(outcome.pruneAfter).toISOString()}`
      : 'the broker refuses the task; it requested no AWS credentials, so there is nothing to deny in AWS';
    events.push({ type: 'Normal', reason: 'Revoked', message });
    return {
      ...status,
      credentials: { ...status.credentials, ...(denied ? { sourceIdentity: outcome.marker } : {}), revokedAt: status.credentials?.revokedAt ?? now, awsDenyInPlace: denied },
      conditions: mergeConditions(status.conditions, [{ type: ConditionType.Revoked, status: 'True', reason: denied ? Reason.DenyWritten : Reason.NothingIssued, message }], now),
    };
  }

  private withPendingRevocation(status: AgentTaskStatus, err: unknown): AgentTaskStatus {
    const now = new Date(this.deps.clock.now()).toISOString();
    return {
      ...status,
      credentials: { ...status.credentials, revokedAt: status.credentials?.revokedAt ?? now, awsDenyInPlace: false },
      conditions: mergeConditions(
        status.conditions,
        [{ type: ConditionType.Revoked, status: 'False', reason: Reason.DenyPending, message: `the broker refuses the task; writing the AWS-side deny failed and is retried: ${errorMessage(err)}` }],
        now,
      ),
    };
  }

  private gatherPods(namespace: string, task: string): PodView[] {
    return this.deps.pods
      .list()
      .filter((p) => p.metadata?.namespace === namespace && p.metadata.labels?.[TASK_LABEL] === task)
      .map(podView);
  }

  async reconcile(key: string): Promise<ReconcileResult> {
    const [namespace = '', name = ''] = key.split('/');
    const raw = this.deps.tasks.get(namespace, name);
    if (!raw) return {};
    let task: AgentTask;
    try {
      task = parseAgentTask(raw);
    } catch (err) {
      // Permanent: the API server's schema admitted something we cannot read. Nothing to act on.
      if (err instanceof InvalidObjectError) {
        this.deps.log.error({ task: key, err: err.message }, 'AgentTask does not parse; not reconciling it');
        return {};
      }
      throw err;
    }
    const rawPolicy = this.deps.policies.get(namespace, task.spec.policyRef.name);
    let policy: AgentPolicy | undefined;
    try {
      policy = rawPolicy ? parseAgentPolicy(rawPolicy) : undefined;
    } catch {
      policy = undefined;
    }
    const plan = decide({ task, policy, pods: this.gatherPods(namespace, name), now: this.deps.clock.now(), trustDomain: this.deps.trustDomain });
    const { writer } = this.deps;

    if (plan.finalize) {
      // Retryable: a failure backs off and the finalizer stays until the deny is written.
      if (plan.revoke) await this.revoke(task, policy);
      const result = await writer.setFinalizers(task, (task.metadata.finalizers ?? []).filter((f) => f !== FINALIZER));
      return result === 'conflict' ? { requeueAfterMs: CONFLICT_RETRY_MS } : {};
    }
    if (plan.addFinalizer) {
      // Pending: the update wakes us again with the finalizer in place.
      const result = await writer.setFinalizers(task, [...(task.metadata.finalizers ?? []), FINALIZER]);
      return result === 'conflict' ? { requeueAfterMs: CONFLICT_RETRY_MS } : {};
    }
    let status = plan.status;
    const events = [...plan.events];
    let failure: Error | undefined;
    if (plan.revoke) {
      try {
        const outcome = await this.revoke(task, policy);
        status = this.withRevocation(status, outcome, events);
      } catch (err) {
        failure = err instanceof Error ? err : new Error(String(err));
        status = this.withPendingRevocation(status, err);
      }
    }
    if (!isDeepStrictEqual(task.status, status)) {
      const result = await writer.writeStatus(task, status);
      if (result === 'conflict') return { requeueAfterMs: CONFLICT_RETRY_MS };
      if (result === 'gone') return {};
      const at = new Date(this.deps.clock.now()).toISOString();
      const records = [...plan.records, ...(plan.revoke && !failure ? [{ type: 'revocation' as const, data: { marker: status.credentials?.sourceIdentity, awsDenyInPlace: status.credentials?.awsDenyInPlace, state: status.state } }] : [])];
      if (records.length > 0) this.deps.journal?.record(namespace, name, { events: records.map((r) => ({ type: r.type, at, data: r.data })) });
      for (const event of events) {
        await writer.recordEvent(task, event.type, event.reason, event.message).catch((err: unknown) => {
          this.deps.log.warn({ task: key, err: errorMessage(err) }, 'could not record an Event');
        });
      }
    }
    // Retryable: the status says the deny is pending; back off and try again.
    if (failure) throw failure;
    let requeue = plan.requeueAfterMs;
    const waiting = status.state === 'Bound' || status.state === 'Pending' ? (task.status?.pendingHops ?? []) : [];
    if (waiting.length > 0 && this.deps.resolvePending) {
      await this.deps.resolvePending(task);
      const next = Math.min(...waiting.map((h) => Date.parse(h.timeoutAt))) - this.deps.clock.now() + 50;
      requeue = Math.max(0, Math.min(requeue ?? Infinity, next));
    }
    return requeue === undefined || !Number.isFinite(requeue) ? {} : { requeueAfterMs: requeue };
  }
}
