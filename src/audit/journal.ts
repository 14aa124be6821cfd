import type { AgentTask, AgentTaskStatus } from '../api/schema.js';
import { errorMessage } from '../errors.js';
import type { TaskStatusWriter } from '../kube/tasks.js';
import type { Logger } from '../log.js';
import { GENESIS, linkRecords, type AuditEventType, type AuditRecord } from './record.js';

type PendingHop = NonNullable<AgentTaskStatus['pendingHops']>[number];
type RecentHop = NonNullable<AgentTaskStatus['recentHops']>[number];
type Violation = NonNullable<AgentTaskStatus['violation']>;

/** What one replica changed in a task since its last write: counters add, sets unite. */
export interface TaskDelta {
  allowed: number;
  denied: number;
  pending: number;
  hopCount: number;
  /** The deepest hop decided; merges as a maximum. */
  deepest: number;
  priorDenials: number;
  systems: Set<string>;
  dataClasses: Set<string>;
  addPending: PendingHop[];
  removePending: Set<string>;
  recent: RecentHop[];
  violation?: Violation;
  events: AuditEvent[];
  /** Decisions on pending hops; each applies only if its hop is still pending when written. */
  resolutions: Resolution[];
}

export interface AuditEvent {
  type: AuditEventType;
  at: string;
  data: Record<string, unknown>;
}

export interface Resolution {
  hopId: string;
  decision: 'allow' | 'deny';
  systems: string[];
  dataClasses: string[];
  recent: RecentHop;
  events: AuditEvent[];
}

export const emptyDelta = (): TaskDelta => ({
  allowed: 0,
  denied: 0,
  pending: 0,
  hopCount: 0,
  deepest: 0,
  priorDenials: 0,
  systems: new Set(),
  dataClasses: new Set(),
  addPending: [],
  removePending: new Set(),
  recent: [],
  events: [],
  resolutions: [],
});

const RECENT_HOPS = 20;

/**
 * The task's status with a delta applied, and the audit records linked onto its chain head.
 * The journal records facts only: a violation is recorded once (the first wins); turning it
 * into state, conditions and Events is the controller's.
 */
export function applyDelta(task: AgentTask, delta: TaskDelta): { status: AgentTaskStatus; records: AuditRecord[] } {
  const before = task.status ?? {};
  const chain = before.chain ?? { version: 0, hopCount: 0, priorDenials: 0, systemsTouched: [], dataClassesTouched: [] };
  const hops = { ...(before.hops ?? { allowed: 0, denied: 0, pending: 0 }) };
  let pending = [...(before.pendingHops ?? []), ...delta.addPending];
  const events = [...delta.events];
  const systems = new Set(delta.systems);
  const dataClasses = new Set(delta.dataClasses);
  const recent = [...delta.recent];
  // Two replicas may decide the same pending hop at once; only the first write counts.
  for (const r of delta.resolutions) {
    if (!pending.some((h) => h.hopId === r.hopId)) continue;
    pending = pending.filter((h) => h.hopId !== r.hopId);
    hops.pending -= 1;
    if (r.decision === 'allow') hops.allowed += 1;
    else hops.denied += 1;
    r.systems.forEach((x) => systems.add(x));
    r.dataClasses.forEach((x) => dataClasses.add(x));
    recent.push(r.recent);
    events.push(...r.events);
  }
  pending = pending.filter((h) => !delta.removePending.has(h.hopId));
  const records = linkRecords(
    { key: `${task.metadata.namespace ?? ''}/${task.metadata.name ?? ''}`, uid: task.metadata.uid ?? '' },
    before.audit?.head ?? GENESIS,
    before.audit?.count ?? 0,
    events,
  );
  const status: AgentTaskStatus = {
    ...before,
    chain: {
      version: chain.version + 1,
      hopCount: chain.hopCount + delta.hopCount,
      deepest: Math.max(chain.deepest ?? 0, delta.deepest),
      priorDenials: chain.priorDenials + delta.priorDenials,
      systemsTouched: [...new Set([...chain.systemsTouched, ...systems])],
      dataClassesTouched: [...new Set([...chain.dataClassesTouched, ...dataClasses])],
    },
    hops: { allowed: hops.allowed + delta.allowed, denied: hops.denied + delta.denied, pending: Math.max(0, hops.pending + delta.pending) },
    pendingHops: pending,
    recentHops: [...(before.recentHops ?? []), ...recent].slice(-RECENT_HOPS),
    audit: records.length > 0 ? { head: records.at(-1)?.hash ?? GENESIS, count: records.at(-1)?.seq ?? 0 } : before.audit,
  };
  if (delta.violation && !before.violation) status.violation = delta.violation;
  return { status, records };
}

function isEmpty(d: TaskDelta): boolean {
  return (
    d.events.length === 0 &&
    d.resolutions.length === 0 &&
    d.hopCount === 0 &&
    d.deepest === 0 &&
    d.allowed === 0 &&
    d.denied === 0 &&
    d.pending === 0 &&
    d.addPending.length === 0 &&
    d.removePending.size === 0 &&
    d.recent.length === 0 &&
    d.systems.size === 0 &&
    d.dataClasses.size === 0 &&
    !d.violation
  );
}

function merge(into: TaskDelta, from: TaskDelta): void {
  into.allowed += from.allowed;
  into.denied += from.denied;
  into.pending += from.pending;
  into.hopCount += from.hopCount;
  into.deepest = Math.max(into.deepest, from.deepest);
  into.priorDenials += from.priorDenials;
  for (const s of from.systems) into.systems.add(s);
  for (const d of from.dataClasses) into.dataClasses.add(d);
  into.addPending.push(...from.addPending);
  for (const h of from.removePending) into.removePending.add(h);
  into.recent.push(...from.recent);
  into.violation ??= from.violation;
  into.events.push(...from.events);
  into.resolutions.push(...from.resolutions);
}

interface Entry {
  namespace: string;
  name: string;
  /** Changes not yet in flight. */
  queued: TaskDelta;
  /** Changes being written now. */
  inflight?: TaskDelta;
  /** The write in flight, if any. */
  flushing?: Promise<void>;
  /** Waiters for the next write to land. */
  waiters: { resolve: () => void; reject: (err: Error) => void }[];
  timer?: NodeJS.Timeout;
}

/**
 * Every change a replica makes to a task's chain state and audit trail goes through here.
 * Changes queue per task and are written in one status update every few milliseconds,
 * conditional on the status read (a conflict re-reads and re-applies: counters add, sets unite,
 * and the audit records are linked onto whatever head is current). Records are emitted to the
 * audit log only once the head that covers them is in the task's status, so the log and the
 * head never disagree.
 */
export class TaskJournal {
  private readonly entries = new Map<string, Entry>();
  /** The chain state this replica last wrote, per task: newer than the watch may have shown yet. */
  private readonly written = new Map<string, { uid: string; chain: NonNullable<AgentTaskStatus['chain']> }>();

  constructor(
    private readonly writer: Pick<TaskStatusWriter, 'update'>,
    private readonly emit: (record: AuditRecord) => void,
    private readonly log: Logger,
    private readonly flushMs = 100,
    /** The task as last seen through the watch; a write starts from it instead of a fresh read. */
    private readonly cached?: (namespace: string, name: string) => AgentTask | undefined,
  ) {}

  /** Queues a change; it is written within `flushMs`. */
  record(namespace: string, name: string, change: Partial<TaskDelta>): void {
    const key = `${namespace}/${name}`;
    let entry = this.entries.get(key);
    if (!entry) {
      entry = { namespace, name, queued: emptyDelta(), waiters: [] };
      this.entries.set(key, entry);
    }
    merge(entry.queued, { ...emptyDelta(), ...change });
    this.schedule(entry, this.flushMs);
  }

  /** Queues a change and resolves once it is in the task's status. */
  commit(namespace: string, name: string, change: Partial<TaskDelta>): Promise<void> {
    this.record(namespace, name, change);
    const entry = this.entries.get(`${namespace}/${name}`) as Entry;
    const landed = new Promise<void>((resolve, reject) => entry.waiters.push({ resolve, reject }));
    this.schedule(entry, 0);
    return landed;
  }

  /** The watch's copy of the task, unless this replica has written a newer chain since. */
  private newestKnown(namespace: string, name: string): AgentTask | undefined {
    const seen = this.cached?.(namespace, name);
    const mine = this.written.get(`${namespace}/${name}`);
    if (!seen || (mine && mine.uid === seen.metadata.uid && mine.chain.version > (seen.status?.chain?.version ?? 0))) return undefined;
    return seen;
  }

  /** The newer of the chain state observed through the watch and the one this replica last wrote. */
  latestChain(task: AgentTask): AgentTaskStatus['chain'] {
    const observed = task.status?.chain;
    const mine = this.written.get(`${task.metadata.namespace ?? ''}/${task.metadata.name ?? ''}`);
    if (!mine || mine.uid !== task.metadata.uid) return observed;
    return !observed || mine.chain.version > observed.version ? mine.chain : observed;
  }

  /** The changes this replica has not written yet, for deciding with a view that includes them. */
  unwritten(namespace: string, name: string): TaskDelta | undefined {
    const entry = this.entries.get(`${namespace}/${name}`);
    if (!entry?.inflight) return entry?.queued;
    const both = emptyDelta();
    merge(both, entry.inflight);
    merge(both, entry.queued);
    return both;
  }

  private schedule(entry: Entry, delay: number): void {
    if (entry.flushing) return; // the running flush picks the queue up when it ends
    if (entry.timer && delay > 0) return;
    if (entry.timer) clearTimeout(entry.timer);
    entry.timer = setTimeout(() => {
      entry.timer = undefined;
      entry.flushing = this.flush(entry).finally(() => {
        entry.flushing = undefined;
        const more = entry.waiters.length > 0 || !isEmpty(entry.queued);
        if (more) this.schedule(entry, 0);
        else if (this.entries.get(`${entry.namespace}/${entry.name}`) === entry) this.entries.delete(`${entry.namespace}/${entry.name}`);
      });
    }, delay);
  }

  private async flush(entry: Entry): Promise<void> {
    const delta = entry.queued;
    const waiters = entry.waiters;
    entry.inflight = delta;
    entry.queued = emptyDelta();
    entry.waiters = [];
    let records: AuditRecord[] = [];
    try {
      const written = await this.writer.update(
        entry.namespace,
        entry.name,
        (task) => {
          const applied = applyDelta(task, delta);
          records = applied.records;
          return applied.status;
        },
        this.cached && (() => this.newestKnown(entry.namespace, entry.name)),
      );
      if (!written) {
        // The task is gone; the records still go out, linked on what was last known.
        this.log.warn({ task: `${entry.namespace}/${entry.name}`, records: delta.events.length }, 'task gone before its journal was written');
      }
      const chain = written?.status?.chain;
      if (written && chain) {
        this.written.set(`${entry.namespace}/${entry.name}`, { uid: written.metadata.uid ?? '', chain });
        if (this.written.size > 50_000) this.written.delete(this.written.keys().next().value ?? '');
      }
      for (const record of records) this.emit(record);
      for (const w of waiters) w.resolve();
    } catch (err) {
      // Put the changes back in front of whatever queued since: nothing is lost, the next flush retries.
      const requeued = emptyDelta();
      merge(requeued, delta);
      merge(requeued, entry.queued);
      entry.queued = requeued;
      this.log.warn({ task: `${entry.namespace}/${entry.name}`, err: errorMessage(err) }, 'journal write failed; retrying');
      for (const w of waiters) w.reject(err instanceof Error ? err : new Error(String(err)));
      await new Promise((r) => setTimeout(r, 200));
    } finally {
      entry.inflight = undefined;
    }
  }

  /** Writes everything queued; for shutdown. */
  async drain(): Promise<void> {
    await Promise.all([...this.entries.values()].map((e) => this.commitQueued(e)));
  }

  private async commitQueued(entry: Entry): Promise<void> {
    await entry.flushing;
    if (isEmpty(entry.queued)) return;
    await this.commit(entry.namespace, entry.name, {}).catch(() => undefined);
  }
}
