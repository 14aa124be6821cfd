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
  private readonly timers = new Map<string, { timer: NodeJS.Timeout; due: number }>();
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
    const due = Date.now() + ms;
    const existing = this.timers.get(key);
    if (existing && existing.due <= due) return;
    if (existing) clearTimeout(existing.timer);
    const timer = setTimeout(() => {
      this.timers.delete(key);
      this.add(key);
    }, ms);
    timer.unref();
    this.timers.set(key, { timer, due });
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
    for (const { timer } of this.timers.values()) clearTimeout(timer);
    this.timers.clear();
    for (const wake of this.waiters.splice(0)) wake();
  }
}
