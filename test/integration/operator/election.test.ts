import { readFile } from 'node:fs/promises';
import { CoordinationV1Api, KubeConfig } from '@kubernetes/client-node';
import { examplePolicy, exampleTask } from '../../builders/examples.js';
import { createAgentPod, createServiceAccount } from '../../env/agents.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { create } from '../../env/kube.js';
import { createLogger } from '../../../src/log.js';
import { startOperator, type RunningOperator } from '../../../src/operator/operator.js';
import { waitForTask } from './helpers.js';

const lease = { leaseDurationMs: 3000, renewDeadlineMs: 2000, retryPeriodMs: 300 };

async function replica(kubeconfig: string, namespace: string, identity: string): Promise<RunningOperator> {
  const kc = new KubeConfig();
  kc.loadFromString(await readFile(kubeconfig, 'utf8'));
  // Each replica watches only the test's namespace and elects on a Lease there.
  return startOperator({ kc, log: createLogger({ level: 'silent' }), namespace, watchNamespace: namespace, identity, leaderElection: lease });
}

const reconciles = (op: RunningOperator) => /chainwarden_reconcile_total\{queue="agenttask",result="success"\} (\d+)/.exec(op.metrics.render())?.[1] ?? '0';

async function task(admin: KubeConfig, namespace: string, name: string) {
  const t = exampleTask(namespace);
  t.metadata.name = name;
  await create(admin, t);
  await createAgentPod(admin, namespace, { name: `${name}-pod`, task: name, serviceAccount: 'support-agent' });
}

describe('replicas', () => {
  test('only the leader reconciles; a standby takes over within the lease duration after the leader dies', async ({ admin, env, namespace }) => {
    await create(admin, examplePolicy(namespace));
    await createServiceAccount(admin, namespace, 'support-agent');
    const a = await replica(env.kubeconfig, namespace, 'replica-a');
    const b = await replica(env.kubeconfig, namespace, 'replica-b');
    try {
      await expect.poll(() => [a.isLeader(), b.isLeader()].filter(Boolean).length, { timeout: 10_000 }).toBe(1);
      const [leader, standby] = a.isLeader() ? [a, b] : [b, a];
      await task(admin, namespace, 'first');
      await expect.poll(() => Number(reconciles(leader)), { timeout: 10_000 }).toBeGreaterThan(0);
      expect(reconciles(standby)).toBe('0');

      // Killed, not stopped: the lease is not released and must expire.
      const killedAt = Date.now();
      await leader.crash();
      await expect.poll(() => standby.isLeader(), { timeout: lease.leaseDurationMs + 3000, interval: 100 }).toBe(true);
      expect(Date.now() - killedAt).toBeLessThan(lease.leaseDurationMs + 2 * lease.retryPeriodMs + 1000);

      const before = Number(reconciles(standby));
      await task(admin, namespace, 'second');
      await waitForTask(admin, namespace, 'second', (t) => t.status?.state === 'Bound');
      await expect.poll(() => Number(reconciles(standby)), { timeout: 10_000 }).toBeGreaterThan(before);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  });

  test('a stopped leader releases its lease, so the standby leads at once', async ({ admin, env, namespace }) => {
    void admin;
    const a = await replica(env.kubeconfig, namespace, 'replica-a');
    await expect.poll(() => a.isLeader(), { timeout: 10_000 }).toBe(true);
    const b = await replica(env.kubeconfig, namespace, 'replica-b');
    try {
      const stoppedAt = Date.now();
      await a.stop();
      await expect.poll(() => b.isLeader(), { timeout: 5000, interval: 50 }).toBe(true);
      expect(Date.now() - stoppedAt).toBeLessThan(lease.leaseDurationMs);
    } finally {
      await b.stop();
    }
  });

  test('a watch interrupted and resumed misses no task', async ({ admin, env, namespace }) => {
    await create(admin, examplePolicy(namespace));
    await createServiceAccount(admin, namespace, 'support-agent');
    const op = await replica(env.kubeconfig, namespace, 'replica-w');
    try {
      const names = ['w-1', 'w-2', 'w-3', 'w-4'];
      for (const name of names) {
        op.informers.tasks.disconnect();
        op.informers.pods.disconnect();
        await task(admin, namespace, name);
      }
      await expect.poll(() => op.informers.tasks.list().map((t) => t.metadata?.name).sort(), { timeout: 10_000 }).toEqual(names);
      for (const name of names) await waitForTask(admin, namespace, name, (t) => t.status?.state === 'Bound');
    } finally {
      await op.stop();
    }
  });

  test('a replica that loses its Lease and wins it back reconciles again', async ({ admin, env, namespace }) => {
    await create(admin, examplePolicy(namespace));
    await createServiceAccount(admin, namespace, 'support-agent');
    const a = await replica(env.kubeconfig, namespace, 'replica-a');
    try {
      await expect.poll(() => a.isLeader(), { timeout: 10_000 }).toBe(true);
      await task(admin, namespace, 'before-loss');
      await expect.poll(() => Number(reconciles(a)), { timeout: 10_000 }).toBeGreaterThan(0);
      // Another holder takes the Lease (a replica whose clock ran ahead, say): this one must step down.
      await takeLease(admin, namespace, 'usurper');
      await expect.poll(() => a.isLeader(), { timeout: 10_000, interval: 50 }).toBe(false);
      // The usurper never renews; this replica wins the Lease back within a lease duration and works again.
      await expect.poll(() => a.isLeader(), { timeout: lease.leaseDurationMs + 5_000, interval: 100 }).toBe(true);
      const before = Number(reconciles(a));
      await task(admin, namespace, 'after-regain');
      await expect.poll(() => Number(reconciles(a)), { timeout: 10_000 }).toBeGreaterThan(before);
    } finally {
      await a.stop();
    }
  });
});

/** Writes `holder` into the controllers' Lease as if it had just renewed it; retried over the leader's own renewals. */
async function takeLease(admin: KubeConfig, namespace: string, holder: string): Promise<void> {
  const api = admin.makeApiClient(CoordinationV1Api);
  let last: unknown;
  for (let attempt = 0; attempt < 20; attempt++) {
    const current = await api.readNamespacedLease({ name: 'chainwarden-controller', namespace });
    current.spec = { ...current.spec, holderIdentity: holder, renewTime: new Date().toISOString().replace('Z', '000Z') as never, leaseDurationSeconds: lease.leaseDurationMs / 1000 };
    try {
      await api.replaceNamespacedLease({ name: 'chainwarden-controller', namespace, body: current });
      return;
    } catch (err) {
      // The leader renewed in between: read again.
      last = err;
    }
  }
  throw new Error(`could not take the Lease: ${String((last as { body?: unknown })?.body ?? last)}`);
}
