import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { KubeConfig } from '@kubernetes/client-node';
import { CoordinationV1Api } from '@kubernetes/client-node';
import type { EnvironmentDescription } from '../../../src/controlplane/environment.js';
import { examplePolicy, exampleTask } from '../../builders/examples.js';
import { brokerRequest } from '../../env/agents.js';
import { createRole } from '../../env/aws.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { create } from '../../env/kube.js';
import { overlappingLeaderWork, replicasOwnTheLease, startReplica, type Replica, type ReplicaOptions } from '../../env/operator-process.js';

// Replicas of the operator as real processes on a 3 s lease (renew deadline 2 s, retry 300 ms),
// pruning the revocation policy every 200 ms so that leader-only work runs all the time: every
// prune pass, revocation and finalizer removal is logged with when it ran, and no two replicas'
// may overlap.
const LEASE_MS = 3_000;
const RETRY_MS = 300;
/** Process start, a request in flight and the log line reaching the test. */
const SLACK_MS = 1_500;

const serving = replicasOwnTheLease();

describe('leadership changes between real operator processes', () => {
  async function replicas(env: EnvironmentDescription, admin: KubeConfig, namespace: string, specs: Partial<ReplicaOptions>[]): Promise<Replica[]> {
    // A task naming a role, so every prune pass has a role to read.
    const role = `failover-${namespace}`;
    const roleArn = await createRole(env, role);
    const policy = examplePolicy(namespace);
    policy.spec.aws = { allowedRoleArns: [roleArn], maxDuration: '1h' };
    await create(admin, policy);
    const task = exampleTask(namespace);
    task.spec.credentials![0]!.aws.roleArn = roleArn;
    await create(admin, task);
    const auditFile = path.join(await mkdtemp(path.join(os.tmpdir(), 'failover-')), 'audit.jsonl');
    const started: Replica[] = [];
    for (const [i, spec] of specs.entries()) {
      started.push(await startReplica(env, { namespace, identity: `replica-${String.fromCharCode(97 + i)}`, tls: serving(), auditFile, pruneInterval: '200ms', ...spec }));
    }
    return started;
  }

  const leading = (r: Replica) => r.terms().some((t) => t.to === Infinity);
  const workSince = (r: Replica, since: number) => r.leaderWork().filter((w) => w.from >= since);

  async function leaderOf(all: Replica[]): Promise<[Replica, Replica[]]> {
    await expect.poll(() => all.filter(leading).length, { timeout: 15_000, interval: 100 }).toBe(1);
    const leader = all.find(leading)!;
    // Its leader-only work is running.
    await expect.poll(() => leader.leaderWork().length, { timeout: 5_000, interval: 100 }).toBeGreaterThan(0);
    return [leader, all.filter((r) => r !== leader)];
  }

  /** When `r` logged that it became leader after `since`; Infinity if it has not (yet). */
  const tookOverAt = (r: Replica, since: number) => r.terms().find((t) => t.from >= since)?.from ?? Infinity;

  test('SIGTERM hands leadership over at once: the old leader stops acting before the new one starts', async ({ admin, env, namespace }) => {
    const all = await replicas(env, admin, namespace, [{}, {}]);
    try {
      const [leader, [standby]] = await leaderOf(all);
      const signalled = Date.now();
      leader.signal('SIGTERM');
      expect(await leader.exited).toEqual({ code: 0, signal: null });
      // Released, not left to expire.
      await expect.poll(() => tookOverAt(standby!, signalled), { timeout: LEASE_MS, interval: 50 }).toBeLessThan(Infinity);
      expect(tookOverAt(standby!, signalled) - signalled).toBeLessThan(LEASE_MS);
      await expect.poll(() => workSince(standby!, signalled).length, { timeout: 2_000, interval: 50 }).toBeGreaterThan(0);
      expect(overlappingLeaderWork(all)).toEqual([]);
    } finally {
      await Promise.all(all.map((r) => r.stop()));
    }
  });

  test('SIGKILL: a standby takes over within one lease duration and its leader-only work resumes', async ({ admin, env, namespace }) => {
    const all = await replicas(env, admin, namespace, [{}, {}]);
    try {
      const [leader, [standby]] = await leaderOf(all);
      const killed = Date.now();
      leader.signal('SIGKILL');
      expect(await leader.exited).toEqual({ code: null, signal: 'SIGKILL' });
      await expect.poll(() => workSince(standby!, killed).length, { timeout: LEASE_MS + SLACK_MS + 2_000, interval: 50 }).toBeGreaterThan(0);
      expect(tookOverAt(standby!, killed) - killed).toBeLessThan(LEASE_MS + RETRY_MS + SLACK_MS);
      expect(workSince(standby!, killed)[0]!.from - killed).toBeLessThan(LEASE_MS + RETRY_MS + SLACK_MS);
      expect(overlappingLeaderWork(all)).toEqual([]);
    } finally {
      await Promise.all(all.map((r) => r.stop()));
    }
  });

  test('a leader frozen (SIGSTOP) past its lease wakes up a standby: it writes nothing once continued, and does not lead again', async ({ admin, env, namespace }) => {
    const all = await replicas(env, admin, namespace, [{}, {}]);
    try {
      const [leader, [standby]] = await leaderOf(all);
      const frozen = Date.now();
      leader.signal('SIGSTOP');
      await expect.poll(() => tookOverAt(standby!, frozen), { timeout: LEASE_MS + SLACK_MS + 2_000, interval: 50 }).toBeLessThan(Infinity);
      expect(tookOverAt(standby!, frozen) - frozen).toBeLessThan(LEASE_MS + RETRY_MS + SLACK_MS);
      await expect.poll(() => workSince(standby!, frozen).length, { timeout: 2_000, interval: 50 }).toBeGreaterThan(0);
      // Asked while still frozen, answered as its first act once continued: it does not claim to lead.
      const claim = brokerRequest({ ...env, brokerUrl: leader.url, brokerCA: serving().ca }, 'GET', '/metrics');
      await new Promise((r) => setTimeout(r, 200));
      const continued = Date.now();
      leader.signal('SIGCONT');
      expect(String((await claim).body)).toMatch(/^chainwarden_leader 0$/m);
      await expect.poll(() => leader.logs.some((l) => l.msg === 'stopped leading' && l.at >= continued), { timeout: 5_000, interval: 50 }).toBe(true);
      // A few more rounds of the new leader's work, then look at everything both did.
      await new Promise((r) => setTimeout(r, 1_500));
      expect(leader.leaderWork().filter((w) => w.to >= continued)).toEqual([]);
      expect(leading(standby!)).toBe(true);
      expect(leading(leader)).toBe(false);
      expect(overlappingLeaderWork(all)).toEqual([]);
    } finally {
      await Promise.all(all.map((r) => r.stop()));
    }
  });

  test.for([
    ['ahead', 5_000],
    ['behind', -5_000],
  ] as const)('a replica whose clock is 5 s %s never takes a lease that is being renewed, and takes a dead one within one lease duration', async ([, skew], { admin, env, namespace }) => {
    const all = await replicas(env, admin, namespace, [{}]);
    try {
      const [leader] = await leaderOf(all);
      const skewed = await startReplica(env, { namespace, identity: 'replica-skewed', tls: serving(), auditFile: path.join(await mkdtemp(path.join(os.tmpdir(), 'failover-')), 'audit.jsonl'), pruneInterval: '200ms', clockSkewMs: skew });
      all.push(skewed);
      const leases = admin.makeApiClient(CoordinationV1Api);
      // Ten renewals' worth of chances to steal the lease.
      await new Promise((r) => setTimeout(r, 10 * RETRY_MS));
      expect(skewed.terms()).toEqual([]);
      expect((await leases.readNamespacedLease({ name: 'chainwarden-controller', namespace })).spec?.holderIdentity).toBe(leader.identity);

      const killed = Date.now();
      leader.signal('SIGKILL');
      await expect.poll(() => tookOverAt(skewed, killed), { timeout: LEASE_MS + SLACK_MS + Math.abs(skew) + 2_000, interval: 50 }).toBeLessThan(Infinity);
      expect(tookOverAt(skewed, killed) - killed).toBeLessThan(LEASE_MS + RETRY_MS + SLACK_MS);
      expect(overlappingLeaderWork(all)).toEqual([]);
    } finally {
      await Promise.all(all.map((r) => r.stop()));
    }
  });
});
