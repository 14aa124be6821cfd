import type { Metrics } from './metrics.js';
import { PermanentError, type ReconcileResult } from './reconcile.js';

export interface BackoffOptions {
  baseMs: number;
  maxMs: number;
}

export type { ReconcileResult } from './reconcile.js';

export type Reconciler = (key: string) => Promise<ReconcileResult | void>;

/**
 * A keyed, de-duplicating work queue. A key added while waiting is queued once; a key added while
 * being processed is processed again afterwards, never twice at once. Failures back off per key
 * (base × 2ⁿ up to a cap) and a success forgets the key's failures.
 */
export class WorkQueue {
  private readonly queue: string[] = [];
  private readonly queued = new Set<string>();
  private readonly processing = new Set<string>();
  private readonly dirty = new Set<string>();
  private readonly failures = new Map<string, number>();
  private readonly delays = new Delays((key) => this.add(key));
  private readonly waiters: (() => void)[] = [];
  private stopped = false;

  constructor(
    readonly name: string,
    private readonly backoff: BackoffOptions = { baseMs: 200, maxMs: 60_000 },
    private readonly metrics?: Metrics,
  ) {}

  get depth(): number {
    return this.queue.length;
  }

  add(key: string): void {
    if (this.stopped) return;
    if (this.processing.has(key)) {
      this.dirty.add(key);
      return;
    }
    if (this.queued.has(key)) return;
    this.queued.add(key);
    this.queue.push(key);
    this.reportDepth();
    this.waiters.shift()?.();
  }

  private reportDepth(): void {
    this.metrics?.gauge('chainwarden_workqueue_depth', 'Keys waiting in the work queue.', { queue: this.name }).set(this.queue.length);
  }

  /** Adds `key` after `ms`; an earlier pending delay for the same key wins over a later one. */
  addAfter(key: string, ms: number): void {
    if (this.stopped) return;
    if (ms <= 0) return this.add(key);
    this.delays.schedule(key, Date.now() + ms);
  }

  /** Adds `key` after its backoff, which doubles with every consecutive failure. */
  addRateLimited(key: string): number {
    const n = this.failures.get(key) ?? 0;
    this.failures.set(key, n + 1);
    const delay = Math.min(this.backoff.maxMs, this.backoff.baseMs * 2 ** n);
    this.addAfter(key, delay);
    return delay;
  }

  forget(key: string): void {
    this.failures.delete(key);
  }

  failuresOf(key: string): number {
    return this.failures.get(key) ?? 0;
  }

  private async next(): Promise<string | undefined> {
    while (!this.stopped) {
      const key = this.queue.shift();
      if (key !== undefined) {
        this.reportDepth();
        this.queued.delete(key);
        this.processing.add(key);
        return key;
      }
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
    return undefined;
  }

  private done(key: string): void {
    this.processing.delete(key);
    if (this.dirty.delete(key)) this.add(key);
  }

  /**
   * Runs `workers` loops calling `reconcile`; resolves once the queue is shut down and they have
   * finished. `onError` hears every failure; `retryInMs` is -1 for a permanent one (not retried).
   */
  async run(workers: number, reconcile: Reconciler, onError: (key: string, err: unknown, retryInMs: number) => void): Promise<void> {
    const loop = async () => {
      for (let key = await this.next(); key !== undefined; key = await this.next()) {
        const started = performance.now();
        try {
          const result = await reconcile(key);
          this.forget(key);
          if (result?.requeueAfterMs !== undefined) this.addAfter(key, result.requeueAfterMs);
          this.metrics?.counter('chainwarden_reconcile_total', 'Reconciles by result.', { queue: this.name, result: 'success' }).inc();
        } catch (err) {
          // Permanent: the object must change before another try can succeed; its next event brings it back.
          const permanent = err instanceof PermanentError;
          if (permanent) this.forget(key);
          const retryIn = permanent ? -1 : this.addRateLimited(key);
          this.metrics?.counter('chainwarden_reconcile_total', 'Reconciles by result.', { queue: this.name, result: permanent ? 'permanent' : 'error' }).inc();
          onError(key, err, retryIn);
        } finally {
          this.metrics?.histogram('chainwarden_reconcile_duration_seconds', 'Time spent in one reconcile.', { queue: this.name }).observe((performance.now() - started) / 1000);
          this.done(key);
        }
      }
    };
    await Promise.all(Array.from({ length: workers }, loop));
  }

  shutdown(): void {
    this.stopped = true;
    this.delays.clear();
    for (const wake of this.waiters.splice(0)) wake();
  }
}

/** setTimeout takes at most this (about 24.8 days); a later time is reached in steps. */
const MAX_TIMER_MS = 2 ** 31 - 1;

interface Due {
  key: string;
  at: number;
}

/**
 * Keys due at a time, behind one timer: a min-heap by due time, with the timer armed for the
 * earliest. Ten thousand tasks each waiting for their deadline are ten thousand heap entries,
 * not ten thousand Node timers (each a Timeout, a timer list of its own and a closure).
 * A key scheduled earlier than it was leaves its later entry behind; entries that no longer
 * match `due` are skipped, and swept once they outnumber the live ones.
 */
export class Delays {
  private readonly due = new Map<string, number>();
  private heap: Due[] = [];
  private timer: NodeJS.Timeout | undefined;
  private armedFor = Infinity;

  constructor(
    private readonly fire: (key: string) => void,
    private readonly now: () => number = Date.now,
  ) {}

  get size(): number {
    return this.due.size;
  }

  /** `key` is fired at `at`, or at the earlier time it was already due. */
  schedule(key: string, at: number): void {
    const current = this.due.get(key);
    if (current !== undefined && current <= at) return;
    this.due.set(key, at);
    this.push({ key, at });
    if (this.heap.length > 2 * this.due.size + 64) this.sweep();
    if (at < this.armedFor) this.arm(at);
  }

  clear(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.armedFor = Infinity;
    this.due.clear();
    this.heap = [];
  }

  private arm(at: number): void {
    clearTimeout(this.timer);
    this.armedFor = at;
    this.timer = setTimeout(() => this.expire(), Math.min(MAX_TIMER_MS, Math.max(0, at - this.now())));
    this.timer.unref();
  }

  private expire(): void {
    this.timer = undefined;
    this.armedFor = Infinity;
    const now = this.now();
    for (let next = this.heap[0]; next !== undefined && next.at <= now; next = this.heap[0]) {
      this.pop();
      if (this.due.get(next.key) !== next.at) continue;
      this.due.delete(next.key);
      this.fire(next.key);
    }
    const first = this.heap[0];
    if (first) this.arm(first.at);
  }

  private sweep(): void {
    this.heap = [];
    for (const [key, at] of this.due) this.push({ key, at });
  }

  private push(entry: Due): void {
    const heap = this.heap;
    let i = heap.push(entry) - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if ((heap[parent] as Due).at <= entry.at) break;
      heap[i] = heap[parent] as Due;
      i = parent;
    }
    heap[i] = entry;
  }

  private pop(): void {
    const heap = this.heap;
    const last = heap.pop();
    if (last === undefined || heap.length === 0) return;
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      if (left >= heap.length) break;
      const right = left + 1;
      const child = right < heap.length && (heap[right] as Due).at < (heap[left] as Due).at ? right : left;
      if ((heap[child] as Due).at >= last.at) break;
      heap[i] = heap[child] as Due;
      i = child;
    }
    heap[i] = last;
  }
}
