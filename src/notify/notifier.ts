import { setTimeout as sleep } from 'node:timers/promises';
import type { AgentPolicy, AgentPolicySpec, AgentTask, AgentTaskStatus } from '../api/schema.js';
import { endOf, taskKey } from '../api/task.js';
import { errorMessage } from '../errors.js';
import type { TaskClient, TaskStatusWriter } from '../kube/tasks.js';
import type { Logger } from '../log.js';
import type { SecretReader } from '../mcp/secrets.js';
import type { Clock } from '../runtime/clock.js';
import type { Metrics } from '../runtime/metrics.js';
import { notifyRetryDelay } from './backoff.js';
import { notifyRequest, type PendingHop } from './payload.js';
import { notifyTransport, ReceiverRefused, type NotifyTransport } from './transport.js';
import { childSignal } from '../runtime/abort.js';

const defaultTransport = notifyTransport();

export type NotifyTarget = NonNullable<NonNullable<AgentPolicySpec['approval']>['notify']>;
type NotifiedHop = NonNullable<AgentTaskStatus['notifiedHops']>[number];

/** Attempts under way at once; the rest wait for the next pass, so a burst of waiting hops cannot open a connection each. */
const MAX_IN_FLIGHT = 32;
/**
 * Attempts under way at once for the tasks of one namespace: a tenant whose receiver never
 * answers (each attempt then takes the whole timeout) holds this many of the slots, never all.
 * A namespace with none under way may start one even when every slot is taken, so however many
 * tenants' receivers hang, every other namespace's approvers still hear of their hops.
 */
const MAX_IN_FLIGHT_PER_NAMESPACE = 8;

export const NotifyEventReason = { Notified: 'ApprovalNotified', Failed: 'ApprovalNotifyFailed' } as const;

export type { NotifyTransport } from './transport.js';

/** One waiting hop the leader owes a notification for. */
export interface DueNotice {
  task: AgentTask;
  hop: PendingHop;
  target: NotifyTarget;
}

/** What this replica knows of one hop's notification: failures so far, when to try next, whether it was delivered. */
export interface AttemptState {
  failures: number;
  nextAt: number;
  inFlight: boolean;
  delivered: boolean;
}

/** Whether the task has a pending hop not yet recorded as notified: only then is a look worth it. */
export function owesNotice(task: AgentTask): boolean {
  const notified = new Set((task.status?.notifiedHops ?? []).map((n) => n.hopId));
  return (task.status?.pendingHops ?? []).some((h) => !notified.has(h.hopId));
}

export const noticeKey = (task: AgentTask, hopId: string) => `${task.metadata.uid ?? taskKey(task)}/${hopId}`;

/**
 * The notifications due now, from observed state alone: hops pending in a live task whose policy
 * has `approval.notify`, not recorded as notified, not timed out, and not already in flight,
 * delivered or waiting out a backoff on this replica.
 */
export function dueNotices(tasks: AgentTask[], policyOf: (task: AgentTask) => AgentPolicy | undefined, attempts: ReadonlyMap<string, AttemptState>, now: number): DueNotice[] {
  const due: DueNotice[] = [];
  for (const task of tasks) {
    const pending = task.status?.pendingHops ?? [];
    if (pending.length === 0 || endOf(task, now)) continue;
    const target = policyOf(task)?.spec.approval?.notify;
    if (!target) continue;
    const notified = new Set((task.status?.notifiedHops ?? []).map((n) => n.hopId));
    for (const hop of pending) {
      if (notified.has(hop.hopId) || Date.parse(hop.timeoutAt) <= now) continue;
      const state = attempts.get(noticeKey(task, hop.hopId));
      if (state && (state.inFlight || state.delivered || state.nextAt > now)) continue;
      due.push({ task, hop, target });
    }
  }
  return due;
}

/** The notified list after `hopId` was delivered: entries of hops still pending, and this one. */
export function withNotified(task: AgentTask, hopId: string, at: string): NotifiedHop[] | undefined {
  const pending = new Set((task.status?.pendingHops ?? []).map((h) => h.hopId));
  const before = task.status?.notifiedHops ?? [];
  if (!pending.has(hopId) || before.some((n) => n.hopId === hopId)) return undefined;
  return [...before.filter((n) => pending.has(n.hopId)), { hopId, at }];
}

/** The receiver named for people: its host only, as a URL's path may itself be a credential. */
export const receiverHost = (url: string): string => {
  try {
    return new URL(url).host;
  } catch {
    return '(invalid URL)';
  }
};

/** A failed attempt in words, from codes only: an error's message may quote a header, and so the credential. */
export function describeFailure(err: unknown, timeoutMs: number): string {
  if (err instanceof ReceiverRefused) return err.message;
  if (err instanceof Error && (err.name === 'TimeoutError' || err.name === 'AbortError')) return `no answer within ${Math.round(timeoutMs / 1000)}s`;
  const code = err instanceof Error ? ((err as { code?: unknown }).code ?? (err.cause as { code?: unknown } | undefined)?.code) : undefined;
  if (typeof code === 'string') return code;
  return err instanceof Error ? err.name : 'error';
}

export interface ApprovalNotifierDeps {
  /** The tasks as the informer has them; scanned every second, so not copied. */
  tasks: () => Iterable<AgentTask>;
  task: (namespace: string, name: string) => AgentTask | undefined;
  policy: (namespace: string, name: string) => AgentPolicy | undefined;
  secrets: Pick<SecretReader, 'value'>;
  status: TaskStatusWriter;
  events: Pick<TaskClient, 'recordEvent'>;
  transport?: NotifyTransport;
  clock: Clock;
  log: Logger;
  metrics?: Metrics;
  random?: () => number;
  retryBaseMs?: number;
  /** How long one attempt may take. */
  timeoutMs?: number;
  /** How often the cache is looked at when nothing wakes the loop. */
  scanMs?: number;
}

/**
 * Posts every hop that starts waiting to its policy's `approval.notify` receiver. Run by the
 * leader only, from task status (where a hop is recorded before the agent hears it waits), so a
 * replica that dies after making a hop wait loses no notification. A delivery is recorded in
 * `status.notifiedHops` after the receiver accepted it: delivery is at least once, and a leader
 * that dies between the two makes the next leader send that hop once more (with the same
 * CloudEvents id, so receivers can drop it). A hop decided or timed out first is not sent.
 */
export class ApprovalNotifier {
  private readonly attempts = new Map<string, AttemptState>();
  private readonly inFlight = new Set<Promise<void>>();
  private readonly inFlightByNamespace = new Map<string, number>();
  /** Notices left for want of a slot: the next look comes when an attempt ends, not at the next scan. */
  private waiting = false;
  private wakeUp: (() => void) | undefined;

  constructor(private readonly deps: ApprovalNotifierDeps) {}

  /** Look now (a task changed), rather than at the next scan. */
  wake(): void {
    this.wakeUp?.();
  }

  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      this.pass(signal);
      const tick = childSignal(signal);
      this.wakeUp = () => tick.abort();
      await sleep(this.deps.scanMs ?? 1_000, undefined, { signal: tick.signal }).catch(() => undefined);
      tick.release();
    }
    this.wakeUp = undefined;
    await Promise.all([...this.inFlight]);
    // A later term starts from what status says, not from this one's memory.
    this.attempts.clear();
  }

  /** Starts every attempt due now; forgets hops no longer pending. */
  pass(signal: AbortSignal): void {
    const now = this.deps.clock.now();
    // Most tasks have no hop waiting: they cost a look, and no allocation, every second.
    const tasks: AgentTask[] = [];
    for (const task of this.deps.tasks()) if ((task.status?.pendingHops?.length ?? 0) > 0) tasks.push(task);
    const policyOf = (t: AgentTask) => this.deps.policy(t.metadata.namespace ?? '', t.spec.policyRef.name);
    const live = new Set(tasks.flatMap((t) => (t.status?.pendingHops ?? []).map((h) => noticeKey(t, h.hopId))));
    for (const [key, state] of this.attempts) if (!live.has(key) && !state.inFlight) this.attempts.delete(key);
    this.waiting = false;
    for (const notice of dueNotices(tasks, policyOf, this.attempts, now)) {
      const namespace = notice.task.metadata.namespace ?? '';
      const ours = this.inFlightByNamespace.get(namespace) ?? 0;
      if (ours >= MAX_IN_FLIGHT_PER_NAMESPACE || (ours > 0 && this.inFlight.size >= MAX_IN_FLIGHT)) {
        this.waiting = true;
        continue;
      }
      this.inFlightByNamespace.set(namespace, ours + 1);
      const attempt = this.attempt(notice, signal).finally(() => {
        this.inFlight.delete(attempt);
        const left = (this.inFlightByNamespace.get(namespace) ?? 1) - 1;
        if (left > 0) this.inFlightByNamespace.set(namespace, left);
        else this.inFlightByNamespace.delete(namespace);
        if (this.waiting) this.wake();
      });
      this.inFlight.add(attempt);
    }
  }

  /** Waits for the attempts under way (for tests and shutdown). */
  async settle(): Promise<void> {
    await Promise.all([...this.inFlight]);
  }

  private stillPending(notice: DueNotice): boolean {
    const { namespace = '', name = '' } = notice.task.metadata;
    const current = this.deps.task(namespace, name);
    return current !== undefined && current.metadata.uid === notice.task.metadata.uid && (current.status?.pendingHops ?? []).some((h) => h.hopId === notice.hop.hopId);
  }

  private async attempt(notice: DueNotice, signal: AbortSignal): Promise<void> {
    const key = noticeKey(notice.task, notice.hop.hopId);
    const state = this.attempts.get(key) ?? { failures: 0, nextAt: 0, inFlight: false, delivered: false };
    this.attempts.set(key, { ...state, inFlight: true });
    let credential: string | undefined;
    const host = receiverHost(notice.target.url);
    try {
      // Decided while this waited its turn: nobody needs to be asked any more.
      if (!this.stillPending(notice)) return void this.attempts.set(key, { ...state, inFlight: false, delivered: true });
      const request = notifyRequest(notice.target.format, { namespace: notice.task.metadata.namespace ?? '', task: notice.task.metadata.name ?? '', hop: notice.hop });
      const headers: Record<string, string> = { 'content-type': request.contentType, 'user-agent': 'chainwarden' };
      const ref = notice.target.secretRef;
      if (ref) {
        credential = await this.deps.secrets.value(notice.task.metadata.namespace ?? '', ref.name, ref.key, 'spec.approval.notify.secretRef');
        headers[(notice.target.header ?? 'Authorization').toLowerCase()] = `${notice.target.prefix ?? ''}${credential}`;
      }
      const timeoutMs = this.deps.timeoutMs ?? 10_000;
      let outcome: string;
      const bounded = childSignal(signal, timeoutMs);
      try {
        const { status } = await (this.deps.transport ?? defaultTransport)(notice.target.url, { headers, body: request.body, signal: bounded.signal });
        outcome = status >= 200 && status < 300 ? 'delivered' : `HTTP ${status}`;
      } catch (err) {
        outcome = describeFailure(err, timeoutMs);
      } finally {
        bounded.release();
      }
      // Leadership lost mid-attempt: not a failure of the receiver; the next leader starts from status.
      if (signal.aborted && outcome !== 'delivered') return void this.attempts.set(key, { ...state, inFlight: false });
      this.deps.metrics?.counter('chainwarden_approval_notifications_total', 'Approval notification attempts by outcome.', { outcome: outcome === 'delivered' ? 'delivered' : 'failed' }).inc();
      if (outcome === 'delivered') await this.delivered(notice, key, state, host);
      else await this.failed(notice, key, state, host, outcome);
    } catch (err) {
      // The credential could not be read, or recording failed: a failed attempt like any other.
      await this.failed(notice, key, state, host, errorMessage(err), credential);
    }
  }

  private async delivered(notice: DueNotice, key: string, state: AttemptState, host: string): Promise<void> {
    // Delivered on this replica whatever happens next; only a new leader could send it again.
    this.attempts.set(key, { ...state, inFlight: false, delivered: true });
    const { task, hop } = notice;
    const { namespace = '', name = '' } = task.metadata;
    const at = new Date(this.deps.clock.now()).toISOString();
    this.deps.log.info({ task: `${namespace}/${name}`, hopId: hop.hopId, receiver: host, attempts: state.failures + 1 }, 'approval notification delivered');
    await this.event(task, 'Normal', NotifyEventReason.Notified, `hop ${hop.hopId} (waiting for approval) was posted to ${host} as ${notice.target.format ?? 'Slack'}${state.failures > 0 ? ` after ${state.failures} failed attempt(s)` : ''}`);
    await this.deps.status
      .update(namespace, name, (t) => {
        const notifiedHops = t.metadata.uid === task.metadata.uid ? withNotified(t, hop.hopId, at) : undefined;
        return notifiedHops ? { ...t.status, notifiedHops } : undefined;
      }, () => this.deps.task(namespace, name))
      .catch((err: unknown) => this.deps.log.warn({ task: `${namespace}/${name}`, hopId: hop.hopId, err: errorMessage(err) }, 'could not record an approval notification; a new leader would send it again'));
  }

  private async failed(notice: DueNotice, key: string, state: AttemptState, host: string, why: string, credential?: string): Promise<void> {
    const failures = state.failures + 1;
    const delay = notifyRetryDelay(failures, this.deps.random, this.deps.retryBaseMs);
    this.attempts.set(key, { failures, nextAt: this.deps.clock.now() + delay, inFlight: false, delivered: false });
    const reason = credential ? why.split(credential).join('[redacted]') : why;
    const { task, hop } = notice;
    this.deps.log.warn({ task: taskKey(task), hopId: hop.hopId, receiver: host, attempt: failures, retryInMs: delay, reason }, 'approval notification failed');
    await this.event(task, 'Warning', NotifyEventReason.Failed, `could not post hop ${hop.hopId} (waiting for approval) to ${host}: ${reason} (attempt ${failures}); trying again in ${Math.ceil(delay / 1000)}s`);
  }

  private async event(task: AgentTask, type: 'Normal' | 'Warning', reason: string, message: string): Promise<void> {
    await this.deps.events.recordEvent(task, type, reason, message).catch((err: unknown) => this.deps.log.warn({ task: taskKey(task), reason, err: errorMessage(err) }, 'could not record an Event'));
  }
}
