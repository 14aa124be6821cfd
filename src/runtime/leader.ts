import type { KubeAccess } from '../kube/access.js';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { errorMessage } from '../errors.js';
import { rawRequest } from '../kube/raw.js';
import type { Logger } from '../log.js';
import type { Clock } from './clock.js';

export interface LeaderElectionOptions {
  kc: KubeAccess;
  namespace: string;
  name: string;
  identity: string;
  log: Logger;
  clock: Clock;
  /** How long a lease is valid without renewal; a standby takes over after this. */
  leaseDurationMs?: number;
  /** A leader that cannot renew for this long steps down. */
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  /**
   * Milliseconds on this machine's monotonic clock: the only time the election trusts. Another
   * replica's clock (in the lease's renewTime) and this one's wall clock may be off by any amount.
   */
  monotonic?: () => number;
}

interface Lease {
  metadata: { name: string; namespace: string; resourceVersion?: string };
  spec: { holderIdentity?: string; leaseDurationSeconds?: number; acquireTime?: string; renewTime?: string; leaseTransitions?: number };
}

/** RFC 3339 with microseconds, the format of a Lease's MicroTime fields. */
const microTime = (ms: number) => new Date(ms).toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');

/** What identifies one write of the lease: a renewal changes renewTime, a takeover the holder. */
const recordOf = (spec: Lease['spec']) => `${spec.holderIdentity ?? ''}|${spec.renewTime ?? ''}|${spec.leaseTransitions ?? 0}|${spec.leaseDurationSeconds ?? 0}`;

/**
 * Leader election on a coordination.k8s.io Lease, as client-go does it: the holder renews every
 * retry period; a standby takes the lease once it has seen it go unrenewed for its duration; a
 * leader that cannot renew within the renew deadline steps down; stopping releases the lease so
 * a standby takes over at once instead of after the lease expires.
 *
 * No replica compares another's clock with its own: a standby times the lease from the moment
 * it saw the record change, on its own monotonic clock, and a leader counts its renew deadline
 * from when it sent its last successful renewal. A standby sees that renewal no earlier than it
 * was sent, so it takes over no earlier than `sent + leaseDuration`, while the leader stopped
 * acting at `sent + renewDeadline`: with renewDeadline < leaseDuration the two never act at
 * once, whatever their wall clocks say, and a process frozen past its lease (SIGSTOP, a long
 * GC pause) wakes up no longer leading.
 */
export class LeaderElector {
  private leading = false;
  private stopped = false;
  private inflight: Promise<boolean> | undefined;
  /** The current term: aborting it stops the leader-only work, which settles `work` once it has. */
  private term: { leadership: AbortController; work: Promise<unknown> } | undefined;
  /** The work of the latest term, ended or not: the lease is released only once it has settled. */
  private work: Promise<unknown> = Promise.resolve();
  /** Monotonic time the last successful acquire or renew was sent. */
  private renewedAt = -Infinity;
  /** The lease record last seen, and when (monotonic) this replica first saw it. */
  private observed: { record: string; at: number } | undefined;
  private readonly leaseMs: number;
  private readonly renewDeadlineMs: number;
  private readonly retryMs: number;
  private readonly path: string;
  private readonly monotonic: () => number;

  constructor(private readonly options: LeaderElectionOptions) {
    this.leaseMs = options.leaseDurationMs ?? 15_000;
    this.renewDeadlineMs = options.renewDeadlineMs ?? Math.round(this.leaseMs * (2 / 3));
    this.retryMs = options.retryPeriodMs ?? Math.max(200, Math.round(this.leaseMs / 7));
    if (this.renewDeadlineMs >= this.leaseMs) throw new Error(`leader election: the renew deadline (${this.renewDeadlineMs} ms) must be shorter than the lease duration (${this.leaseMs} ms)`);
    this.path = `/apis/coordination.k8s.io/v1/namespaces/${options.namespace}/leases/${options.name}`;
    this.monotonic = options.monotonic ?? (() => performance.now());
  }

  /**
   * Whether this replica may act as the leader right now: it won the lease and renewed it within
   * the renew deadline, by its own monotonic clock. Checked before every leader-only write, so a
   * leader that was frozen past its lease does not write before its loop notices the loss.
   */
  get isLeader(): boolean {
    return this.leading && this.monotonic() - this.renewedAt < this.renewDeadlineMs;
  }

  private tryAcquireOrRenew(): Promise<boolean> {
    this.inflight = this.acquireOrRenew();
    return this.inflight;
  }

  /** Notes the record read; returns since when (monotonic) this replica has seen it unchanged. */
  private observe(spec: Lease['spec']): number {
    const record = recordOf(spec);
    if (this.observed?.record !== record) this.observed = { record, at: this.monotonic() };
    return this.observed.at;
  }

  private async acquireOrRenew(): Promise<boolean> {
    const { kc, identity, clock } = this.options;
    const sent = this.monotonic();
    // renewTime is for people reading the lease; no replica's decision depends on it.
    const now = clock.now();
    const current = await rawRequest(kc, 'GET', this.path);
    const spec = { holderIdentity: identity, leaseDurationSeconds: Math.ceil(this.leaseMs / 1000), renewTime: microTime(now) };
    if (current.status === 404) {
      const lease: Lease = { metadata: { name: this.options.name, namespace: this.options.namespace }, spec: { ...spec, acquireTime: microTime(now), leaseTransitions: 0 } };
      const created = await rawRequest(kc, 'POST', this.path.slice(0, this.path.lastIndexOf('/')), { apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', ...lease });
      return this.won(created, sent);
    }
    if (current.status !== 200) throw new Error(`reading lease ${this.options.name}: ${current.status}`);
    const lease = current.body as Lease;
    const holder = lease.spec.holderIdentity;
    const seenSince = this.observe(lease.spec);
    const expired = seenSince + (lease.spec.leaseDurationSeconds ?? 0) * 1000 <= this.monotonic();
    if (holder && holder !== identity && !expired) return false;
    const next: Lease = {
      metadata: lease.metadata,
      spec: {
        ...lease.spec,
        ...spec,
        acquireTime: holder === identity ? lease.spec.acquireTime : microTime(now),
        leaseTransitions: (lease.spec.leaseTransitions ?? 0) + (holder === identity ? 0 : 1),
      },
    };
    const updated = await rawRequest(kc, 'PUT', this.path, { apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', ...next });
    // 409: someone else wrote the lease in between; they won this round.
    return this.won(updated, sent);
  }

  private won(written: { status: number; body: unknown }, sent: number): boolean {
    if (written.status !== 200 && written.status !== 201) return false;
    this.observe((written.body as Lease).spec);
    this.renewedAt = sent;
    return true;
  }

  /**
   * Campaigns until stopped. `lead` is called on winning with a signal that aborts when
   * leadership is lost or `stop` is called; it is called again if leadership is won again. What
   * it returns settles once the leader-only work has stopped: `stop` waits for it before it
   * releases the lease.
   */
  async run(lead: (signal: AbortSignal) => unknown): Promise<void> {
    const { log } = this.options;
    while (!this.stopped) {
      let won = false;
      try {
        won = await this.tryAcquireOrRenew();
      } catch (err) {
        log.warn({ err: errorMessage(err) }, 'leader election: could not reach the lease');
      }
      if (!won || this.stopped) {
        await sleep(this.retryMs);
        continue;
      }
      this.leading = true;
      log.info({ identity: this.options.identity, lease: this.options.name }, 'became leader');
      const leadership = new AbortController();
      // Whatever the loop below is doing (waiting on a request, frozen), the work stops at the deadline.
      let deadline = this.deadlineTimer(leadership);
      this.term = { leadership, work: Promise.resolve().then(() => lead(leadership.signal)).catch(() => undefined) };
      this.work = this.term.work;
      while (!this.stopped && !leadership.signal.aborted) {
        await sleep(this.retryMs);
        if (this.stopped || leadership.signal.aborted) break;
        if (!this.isLeader) {
          log.warn('leader election: not renewed within the renew deadline (this process was stalled); stepping down');
          break;
        }
        try {
          if (await this.tryAcquireOrRenew()) {
            clearTimeout(deadline);
            deadline = this.deadlineTimer(leadership);
            continue;
          }
          log.warn('leader election: the lease was taken over');
          break;
        } catch (err) {
          if (!this.isLeader) {
            log.warn({ err: errorMessage(err) }, 'leader election: could not renew within the deadline; stepping down');
            break;
          }
        }
      }
      clearTimeout(deadline);
      // A stop ends the term itself: it waits for the work to stop, then releases the lease.
      if (this.stopped) return;
      this.endTerm();
    }
  }

  private endTerm(): void {
    const term = this.term;
    this.term = undefined;
    this.leading = false;
    if (term && !term.leadership.signal.aborted) term.leadership.abort();
    this.options.log.info({ identity: this.options.identity, lease: this.options.name }, 'stopped leading');
  }

  /** Aborts the term when the renew deadline passes without a renewal. */
  private deadlineTimer(leadership: AbortController): NodeJS.Timeout {
    const timer = setTimeout(() => {
      if (this.isLeader) return;
      this.options.log.warn('leader election: the renew deadline passed without a renewal; stepping down');
      this.leading = false;
      leadership.abort();
    }, Math.max(0, this.renewedAt + this.renewDeadlineMs - this.monotonic()));
    timer.unref();
    return timer;
  }

  /** Stops campaigning and leaves the lease to expire, as a killed process does. */
  async abandon(): Promise<void> {
    this.stopped = true;
    await this.inflight?.catch(() => false);
    if (this.term) this.endTerm();
  }

  /**
   * Stops campaigning and, if this replica holds the lease, releases it for the next candidate,
   * once the leader-only work has stopped: a standby may start the moment it is released. Work
   * that does not stop within the renew deadline keeps the lease until it expires.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    // A renewal in flight would overwrite the release; let it land first.
    await this.inflight?.catch(() => false);
    if (this.term) this.endTerm();
    // Unreferenced: a stop that went well must not keep the process alive for the rest of the deadline.
    const stopped = await Promise.race([this.work.then(() => true), sleep(this.renewDeadlineMs, undefined, { ref: false }).then(() => false)]);
    if (!stopped) {
      this.options.log.warn('leader election: leader-only work did not stop within the renew deadline; leaving the lease to expire instead of releasing it');
      return;
    }
    const current = await rawRequest(this.options.kc, 'GET', this.path).catch(() => undefined);
    const lease = current?.body as Lease | undefined;
    if (current?.status !== 200 || lease?.spec.holderIdentity !== this.options.identity) return;
    lease.spec = { ...lease.spec, holderIdentity: '', leaseDurationSeconds: 1, renewTime: microTime(this.options.clock.now() - 1000) };
    await rawRequest(this.options.kc, 'PUT', this.path, { apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', ...lease }).catch(() => undefined);
  }
}
