import type { KubeConfig } from '@kubernetes/client-node';
import { setTimeout as sleep } from 'node:timers/promises';
import { errorMessage } from '../errors.js';
import { rawRequest } from '../kube/raw.js';
import type { Logger } from '../log.js';
import type { Clock } from './clock.js';

export interface LeaderElectionOptions {
  kc: KubeConfig;
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
}

interface Lease {
  metadata: { name: string; namespace: string; resourceVersion?: string };
  spec: { holderIdentity?: string; leaseDurationSeconds?: number; acquireTime?: string; renewTime?: string; leaseTransitions?: number };
}

/** RFC 3339 with microseconds, the format of a Lease's MicroTime fields. */
const microTime = (ms: number) => new Date(ms).toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');

/**
 * Leader election on a coordination.k8s.io Lease, as client-go does it: the holder renews every
 * retry period; a standby takes the lease once it has gone unrenewed for its duration; a leader
 * that cannot renew within the renew deadline steps down; stopping releases the lease so a
 * standby takes over at once instead of after the lease expires.
 */
export class LeaderElector {
  private leading = false;
  private stopped = false;
  private inflight: Promise<boolean> | undefined;
  private readonly leaseMs: number;
  private readonly renewDeadlineMs: number;
  private readonly retryMs: number;
  private readonly path: string;

  constructor(private readonly options: LeaderElectionOptions) {
    this.leaseMs = options.leaseDurationMs ?? 15_000;
    this.renewDeadlineMs = options.renewDeadlineMs ?? Math.round(this.leaseMs * (2 / 3));
    this.retryMs = options.retryPeriodMs ?? Math.max(200, Math.round(this.leaseMs / 7));
    this.path = `/apis/coordination.k8s.io/v1/namespaces/${options.namespace}/leases/${options.name}`;
  }

  get isLeader(): boolean {
    return this.leading;
  }

  private tryAcquireOrRenew(): Promise<boolean> {
    this.inflight = this.acquireOrRenew();
    return this.inflight;
  }

  private async acquireOrRenew(): Promise<boolean> {
    const { kc, identity, clock } = this.options;
    const now = clock.now();
    const current = await rawRequest(kc, 'GET', this.path);
    const spec = { holderIdentity: identity, leaseDurationSeconds: Math.ceil(this.leaseMs / 1000), renewTime: microTime(now) };
    if (current.status === 404) {
      const lease: Lease = { metadata: { name: this.options.name, namespace: this.options.namespace }, spec: { ...spec, acquireTime: microTime(now), leaseTransitions: 0 } };
      const created = await rawRequest(kc, 'POST', this.path.slice(0, this.path.lastIndexOf('/')), { apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', ...lease });
      return created.status === 201;
    }
    if (current.status !== 200) throw new Error(`reading lease ${this.options.name}: ${current.status}`);
    const lease = current.body as Lease;
    const holder = lease.spec.holderIdentity;
    const renewed = lease.spec.renewTime ? Date.parse(lease.spec.renewTime) : 0;
    const expired = renewed + (lease.spec.leaseDurationSeconds ?? 0) * 1000 <= now;
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
    return updated.status === 200;
  }

  /**
   * Campaigns until stopped. `lead` is called on winning with a signal that aborts when
   * leadership is lost or `stop` is called; it is called again if leadership is won again.
   */
  async run(lead: (signal: AbortSignal) => void): Promise<void> {
    const { log, clock } = this.options;
    while (!this.stopped) {
      let won = false;
      try {
        won = await this.tryAcquireOrRenew();
      } catch (err) {
        log.warn({ err: errorMessage(err) }, 'leader election: could not reach the lease');
      }
      if (!won) {
        await sleep(this.retryMs);
        continue;
      }
      this.leading = true;
      log.info({ identity: this.options.identity, lease: this.options.name }, 'became leader');
      const leadership = new AbortController();
      lead(leadership.signal);
      let lastRenew = clock.now();
      while (!this.stopped) {
        await sleep(this.retryMs);
        if (this.stopped) break;
        try {
          if (await this.tryAcquireOrRenew()) {
            lastRenew = clock.now();
            continue;
          }
          log.warn('leader election: the lease was taken over');
          break;
        } catch (err) {
          if (clock.now() - lastRenew > this.renewDeadlineMs) {
            log.warn({ err: errorMessage(err) }, 'leader election: could not renew within the deadline; stepping down');
            break;
          }
        }
      }
      this.leading = false;
      leadership.abort();
    }
  }

  /** Stops campaigning and leaves the lease to expire, as a killed process does. */
  async abandon(): Promise<void> {
    this.stopped = true;
    await this.inflight?.catch(() => false);
    this.leading = false;
  }

  /** Stops campaigning and, if leading, releases the lease for the next candidate. */
  async stop(): Promise<void> {
    this.stopped = true;
    // A renewal in flight would overwrite the release; let it land first.
    await this.inflight?.catch(() => false);
    if (!this.leading) return;
    this.leading = false;
    const current = await rawRequest(this.options.kc, 'GET', this.path).catch(() => undefined);
    const lease = current?.body as Lease | undefined;
    if (current?.status !== 200 || lease?.spec.holderIdentity !== this.options.identity) return;
    lease.spec = { ...lease.spec, holderIdentity: '', leaseDurationSeconds: 1, renewTime: microTime(this.options.clock.now() - 1000) };
    await rawRequest(this.options.kc, 'PUT', this.path, { apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', ...lease }).catch(() => undefined);
  }
}
