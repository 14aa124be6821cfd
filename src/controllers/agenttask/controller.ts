import { isDeepStrictEqual } from 'node:util';
import type { AgentApproval, AgentPolicy, AgentTask, AgentTaskStatus } from '../../api/schema.js';
import { showsInjection } from '../../admission/plugins/pod.js';
import { FINALIZER, isTerminal, TASK_LABEL } from '../../api/task.js';
import type { PodRecord } from '../../broker/auth.js';
import type { RevocationResult } from '../../credentials/revocation.js';
import { IamUnavailableError } from '../../credentials/revoke.js';
import { ChainwardenError, errorMessage } from '../../errors.js';
import type { JsonPatchOperation } from '../../runtime/apply.js';
import { faultPoint } from '../../runtime/faults.js';
import type { TaskClient, TaskStatusWriter } from '../../kube/tasks.js';
import type { Logger } from '../../log.js';
import type { Clock } from '../../runtime/clock.js';
import { withFinalizer } from '../../runtime/finalizer.js';
import type { Informer } from '../../runtime/informer.js';
import type { Metrics } from '../../runtime/metrics.js';
import { done, requeueAfter, type ReconcileResult } from '../../runtime/reconcile.js';
import { WorkQueue } from '../../runtime/workqueue.js';
import type { AuditEvent } from '../../audit/journal.js';
import { decide, factsOf, needsRevocation, revocationPending, revoked, type PodView, type TaskEvent, type TaskRecord } from './decide.js';

/** Where the controller's inputs come from: the informer caches, or twins in unit tests. */
export interface TaskControllerSources {
  task(namespace: string, name: string): AgentTask | undefined;
  /** The task's policy, parsed; undefined when it is missing or does not parse. */
  policy(namespace: string, name: string): AgentPolicy | undefined;
  pods(namespace: string, task: string): PodRecord[];
}

export interface TaskControllerDeps {
  sources: TaskControllerSources;
  client: TaskClient;
  clock: Clock;
  log: Logger;
  metrics: Metrics;
  trustDomain: string;
  /** Approvals and timeouts of waiting hops; every replica's broker shares it. */
  resolvePending?: (task: AgentTask) => Promise<number>;
  /** Where the controller's audit records go. */
  journal?: {
    record(task: AgentTask, change: { events: AuditEvent[] }): void;
    /** Resolves, with the task as written, once the records are in the task's status (undefined: the task is gone). */
    commit?(task: AgentTask, change: { events: AuditEvent[] }): Promise<AgentTask | undefined>;
    /** Sees that an ended task's records all reach the stream; returns when to look again (ms). */
    settleOutbox?(task: AgentTask): Promise<number | undefined>;
  };
  /** Keeps a deleted task's final audit head beyond the task; throws (retryable) when it cannot. */
  /** Keeps the task's final audit head beyond it; returns the task as sealed, when it wrote the journal's last records first. */
  seal?: (task: AgentTask) => Promise<AgentTask | void>;
  /**
   * Whether this replica may act as the leader at this moment (its own clock says its lease still
   * holds); checked before every write, since a replica may have been frozen past its lease while
   * a reconcile was under way. Absent: always.
   */
  leading?: () => boolean;
  /** AWS-side revocation; must treat "already denied" as done. Absent: nothing to deny. */
  revoke?: (task: AgentTask, policy: AgentPolicy | undefined) => Promise<RevocationResult>;
}

/** What wakes the controller: the informers, wired by `watch`. */
export interface TaskControllerTriggers {
  tasks: Informer<AgentTask>;
  policies: Informer<AgentPolicy>;
  pods: Informer<PodRecord>;
  approvals?: Informer<AgentApproval>;
}

/** The deleted tasks awaiting cleanup, and the cleaned-up uids, one leader remembers at most. */
const MAX_ORPHANS = 10_000;

/** A write that lost a race to a newer version: look again once the watch has brought it. */
const CONFLICT_RETRY_MS = 100;

/**
 * How long a task created moments ago, with no pod yet, waits for its first look. Its pod usually
 * follows within moments (created with it, by the same client or its Job); the pod's arrival looks
 * at once, and the task is bound in one status write with one Event, instead of first written
 * WaitingForPods and then Bound. A task whose pod does not come says WaitingForPods this much later.
 */
export const NEW_TASK_FIRST_LOOK_MS = 1_000;

export function podView(pod: PodRecord): PodView {
  return {
    name: pod.metadata?.name ?? '',
    uid: pod.metadata?.uid ?? '',
    serviceAccountName: pod.spec?.serviceAccountName ?? 'default',
    phase: pod.status?.phase ?? 'Pending',
    deleting: Boolean(pod.metadata?.deletionTimestamp),
    injected: showsInjection(pod.spec),
    createdAt: Date.parse(pod.metadata?.creationTimestamp ?? '') || 0,
  };
}

const keyOf = (namespace: string | undefined, name: string | undefined) => `${namespace ?? ''}/${name ?? ''}`;

const outboxAppeared = (old: AgentTask, task: AgentTask) =>
  isTerminal(task.status?.state) && (task.status?.audit?.unsent?.length ?? 0) > 0 && task.status?.audit?.head !== old.status?.audit?.head;

/**
 * The AgentTask controller: gather → decide → act. It never knows why it ran; it reads the
 * caches, asks `decide` for a plan, carries it out, and writes its own status fields once.
 */
export class AgentTaskController {
  private queue?: WorkQueue;
  private readonly status: TaskStatusWriter;
  /**
   * Tasks this leader saw deleted without its cleanup, by key, as last seen: someone removed the
   * finalizer (a tenant, or an administrator unsticking a deletion) before the task went. Their
   * sessions are denied and their audit heads sealed from that last state all the same.
   */
  private readonly orphans = new Map<string, AgentTask>();
  /** Uids of tasks whose cleanup ran here, so that their deletion is not taken for an orphan. */
  private readonly finalized = new Set<string>();

  constructor(private readonly deps: TaskControllerDeps) {
    this.status = deps.client.statusWriter('controller');
  }

  /** Subscribes to the informers; events reach the queue only while `run` is running. */
  watch(triggers: TaskControllerTriggers): void {
    triggers.tasks.on((event, task, old) => {
      // The journal records hops many times a second; only a change of what the controller acts on wakes it.
      // So does a new outbox on an ended task: no later write may come to carry its records out.
      if (event === 'update' && old && isDeepStrictEqual(factsOf(old), factsOf(task)) && !outboxAppeared(old, task)) return;
      const key = keyOf(task.metadata.namespace, task.metadata.name);
      if (event === 'delete') this.noteDeleted(key, task);
      if (event === 'add' && this.awaitsItsPod(task)) return this.queue?.addAfter(key, NEW_TASK_FIRST_LOOK_MS);
      this.enqueue(key);
    });
    triggers.pods.on((_event, pod) => {
      const task = pod.metadata?.labels?.[TASK_LABEL];
      if (task) this.enqueue(keyOf(pod.metadata?.namespace, task));
    });
    triggers.approvals?.on((_event, approval) => this.enqueue(keyOf(approval.metadata.namespace, approval.spec.taskRef.name)));
    triggers.policies.on((_event, policy) => {
      for (const task of triggers.tasks.list()) {
        if (task.metadata.namespace === policy.metadata.namespace && task.spec.policyRef.name === policy.metadata.name) this.enqueue(keyOf(task.metadata.namespace, task.metadata.name));
      }
    });
  }

  private enqueue(key: string): void {
    this.queue?.add(key);
  }

  /** A deletion the leader's cleanup did not see through is an orphan, cleaned up when its key is next reconciled. */
  private noteDeleted(key: string, task: AgentTask): void {
    const uid = task.metadata.uid ?? '';
    if (!uid || this.finalized.delete(uid) || (this.deps.leading && !this.deps.leading())) return;
    if (this.orphans.size >= MAX_ORPHANS) this.orphans.delete(this.orphans.keys().next().value ?? '');
    this.orphans.set(key, task);
  }

  /** A task never looked at, created within the last moments, whose pod has not arrived yet. */
  private awaitsItsPod(task: AgentTask): boolean {
    const { namespace = '', name = '', creationTimestamp } = task.metadata;
    const age = this.deps.clock.now() - (Date.parse(String(creationTimestamp ?? '')) || 0);
    return task.status?.state === undefined && age >= -1_000 && age < 2_000 && this.deps.sources.pods(namespace, name).length === 0;
  }

  /**
   * Reconciles `keys` and whatever the informers bring until `signal` aborts (leadership lost,
   * shutdown). Each run has a queue of its own, so a replica that leads again starts afresh.
   */
  async run(signal: AbortSignal, keys: string[], workers = 2): Promise<void> {
    const queue = new WorkQueue('agenttask', { baseMs: 200, maxMs: 60_000 }, this.deps.metrics);
    this.queue = queue;
    for (const key of keys) queue.add(key);
    const stop = () => {
      if (this.queue === queue) this.queue = undefined;
      queue.shutdown();
    };
    if (signal.aborted) stop();
    signal.addEventListener('abort', stop);
    await queue.run(workers, (key) => this.reconcile(key), (key, err, retryIn) => {
      if (retryIn < 0) this.deps.log.error({ task: key, err: errorMessage(err) }, 'reconcile failed permanently; waiting for the task to change');
      else this.deps.log.warn({ task: key, err: errorMessage(err), retryInMs: retryIn }, 'reconcile failed; retrying');
    });
  }

  /** Retryable: another replica may lead now; this one's queue is shut down as soon as its election loop notices. */
  private assertLeading(): void {
    if (this.deps.leading && !this.deps.leading()) throw new ChainwardenError('not_leader', 'this replica no longer holds the lease');
  }

  private async revokeAtAws(task: AgentTask): Promise<RevocationResult> {
    this.assertLeading();
    this.deps.log.info({ leaderWork: 'revoke', task: keyOf(task.metadata.namespace, task.metadata.name) }, 'denying the task\'s sessions at AWS');
    const policy = this.deps.sources.policy(task.metadata.namespace ?? '', task.spec.policyRef.name);
    return this.deps.revoke ? this.deps.revoke(task, policy) : { marker: '', roles: [], pruneAfter: 0 };
  }

  /** Level-triggered: whatever woke it, it converges the task named by `key` from what the caches show. */
  async reconcile(key: string): Promise<ReconcileResult> {
    const [namespace = '', name = ''] = key.split('/');
    const task = this.deps.sources.task(namespace, name);
    const orphan = this.orphans.get(key);
    if (orphan && task?.metadata.uid !== orphan.metadata.uid) {
      // Retryable as the finalizer's cleanup is: a failing deny throws, and the queue backs off.
      await this.cleanUp(orphan);
      this.orphans.delete(key);
      this.deps.log.warn({ leaderWork: 'finalize', task: key, uid: orphan.metadata.uid }, 'task deleted without its finalizer (someone removed it): its sessions were denied and its audit head sealed from its last state');
    }
    if (!task) return done();
    this.assertLeading();
    const patch = (ops: JsonPatchOperation[]) => {
      this.assertLeading();
      return this.deps.client.patch(task, ops);
    };
    return withFinalizer(task, FINALIZER, patch, {
      // Retryable: a failing deny throws, the finalizer stays, the queue backs off.
      cleanup: async (t) => {
        const sealed = await this.cleanUp(t);
        if (this.finalized.size >= MAX_ORPHANS) this.finalized.delete(this.finalized.values().next().value ?? '');
        this.finalized.add(t.metadata.uid ?? '');
        this.deps.log.info({ leaderWork: 'finalize', task: key }, 'task cleaned up; removing the finalizer');
        // Removed only while the task's audit head is the one sealed: a record another replica wrote meanwhile is sealed on the next pass.
        const audit = sealed?.status?.audit;
        return audit
          ? [
              { op: 'test', path: '/status/audit/head', value: audit.head },
              { op: 'test', path: '/status/audit/count', value: audit.count },
            ]
          : undefined;
      },
      apply: (t) => this.converge(t),
    });
  }

  /** What a task's deletion undoes outside the cluster: its sessions denied at AWS, its audit head kept beyond it. */
  private async cleanUp(task: AgentTask): Promise<AgentTask | undefined> {
    this.assertLeading();
    if (needsRevocation(task)) await this.revokeAtAws(task);
    faultPoint('finalize.after-deny');
    // The audit head lives in the task's status; it is kept elsewhere before the task goes.
    const sealed = await this.deps.seal?.(task);
    faultPoint('finalize.after-seal');
    return sealed ?? undefined;
  }

  private async converge(task: AgentTask): Promise<ReconcileResult> {
    const { namespace = '', name = '' } = task.metadata;
    const { clock, sources } = this.deps;
    const pods = sources.pods(namespace, name).map(podView);
    const plan = decide({ task, policy: sources.policy(namespace, task.spec.policyRef.name), pods, now: clock.now(), trustDomain: this.deps.trustDomain });
    let status = plan.status;
    const events = [...plan.events];
    const records = [...plan.records];
    let failure: Error | undefined;
    let base = task;
    if (plan.revoke) {
      let outcome: ReturnType<typeof revoked> | undefined;
      try {
        outcome = revoked(status, await this.revokeAtAws(task), clock.now());
        faultPoint('revoke.after-deny');
      } catch (err) {
        failure = err instanceof Error ? err : new Error(String(err));
        status = revocationPending(status, errorMessage(err), clock.now());
      }
      if (outcome) {
        status = outcome.status;
        events.push(outcome.event);
        const written = await this.recordRevocation(task, outcome.record);
        if (written === 'gone') return done();
        if (written === 'changed') return requeueAfter(CONFLICT_RETRY_MS);
        if (written) base = written;
        else records.push(outcome.record);
      }
    }
    if (plan.changed || plan.revoke) {
      // Conditional on the version decided from: a stale view never overwrites a newer state, nor reports its transitions twice.
      this.assertLeading();
      const { outcome } = await this.status.apply(base, status);
      if (outcome === 'conflict') return requeueAfter(CONFLICT_RETRY_MS);
      if (outcome === 'gone') return done();
      if (plan.revoke && !failure) faultPoint('revoke.after-status');
      await this.report(task, events, records);
    }
    // Pending: IAM failed, and the Revoker says when to ask it again. Until then, every
    // wake (each status write is one) is answered from its memory, without an IAM call.
    if (failure instanceof IamUnavailableError) return requeueAfter(failure.retryAt - clock.now());
    // Retryable: the status says the deny is pending; back off and try again.
    if (failure) throw failure;
    const settleIn = isTerminal(task.status?.state) ? await this.deps.journal?.settleOutbox?.(task) : undefined;
    return this.nextLook(task, status, plan.requeueAfterMs, settleIn);
  }

  /**
   * The revocation's audit record goes into the chain before the status says revoked. In the
   * other order a replica killed between the two writes left a revoked task whose stream never
   * said so: the next leader saw it revoked and had nothing to record. In this order the status
   * still says unrevoked, so the next leader revokes again (idempotent) and records again; the
   * stream may say it twice, never not at all. The status is then written over the version the
   * journal wrote, unless what the controller decided from changed meanwhile. Without a journal
   * that commits, the record goes with the others after the status write.
   */
  private async recordRevocation(task: AgentTask, record: TaskRecord): Promise<AgentTask | 'gone' | 'changed' | undefined> {
    const journal = this.deps.journal;
    if (!journal?.commit) return undefined;
    const written = await journal.commit(task, { events: [{ type: record.type, at: new Date(this.deps.clock.now()).toISOString(), data: record.data }] });
    if (!written) return 'gone';
    return isDeepStrictEqual(factsOf(written), factsOf(task)) ? written : 'changed';
  }

  /** Audit records and Events for the transitions just written; an Event that fails is logged, never retried into a duplicate. */
  private async report(task: AgentTask, events: TaskEvent[], records: TaskRecord[]): Promise<void> {
    const { namespace = '', name = '' } = task.metadata;
    const at = new Date(this.deps.clock.now()).toISOString();
    if (records.length > 0) this.deps.journal?.record(task, { events: records.map((r) => ({ type: r.type, at, data: r.data })) });
    for (const event of events) {
      await this.deps.client.recordEvent(task, event.type, event.reason, event.message).catch((err: unknown) => {
        this.deps.log.warn({ task: keyOf(namespace, name), err: errorMessage(err) }, 'could not record an Event');
      });
    }
  }

  /** Pending: the deadline, or the first waiting hop's timeout, whichever comes first. */
  private async nextLook(task: AgentTask, status: AgentTaskStatus, deadlineIn: number | undefined, settleIn: number | undefined): Promise<ReconcileResult> {
    const waiting = status.state === 'Bound' || status.state === 'Pending' ? (task.status?.pendingHops ?? []) : [];
    let next = Math.min(deadlineIn ?? Infinity, settleIn ?? Infinity);
    if (waiting.length > 0 && this.deps.resolvePending) {
      await this.deps.resolvePending(task);
      next = Math.min(next, Math.min(...waiting.map((h) => Date.parse(h.timeoutAt))) - this.deps.clock.now() + 50);
    }
    return Number.isFinite(next) ? requeueAfter(next) : done();
  }
}
