import { describe, expect, it } from 'vitest';
import type { AgentPolicy, AgentTask } from '../../../src/api/schema.js';
import { decide, FINALIZER, type Observed, type PodView } from '../../../src/controllers/agenttask/decide.js';

const created = Date.parse('2026-11-21T10:00:00Z');
const policy: AgentPolicy = { apiVersion: 'chainwarden.io/v1alpha1', kind: 'AgentPolicy', metadata: { name: 'pol', namespace: 'ns' }, spec: { maxTaskTTL: '2h' } };
const task = (status?: AgentTask['status'], meta: Partial<AgentTask['metadata']> = {}): AgentTask => ({
  apiVersion: 'chainwarden.io/v1alpha1',
  kind: 'AgentTask',
  metadata: { name: 't', namespace: 'ns', generation: 2, creationTimestamp: new Date(created).toISOString(), finalizers: [FINALIZER], ...meta },
  spec: { serviceAccountName: 'agent', policyRef: { name: 'pol' }, ttl: '30m' },
  status,
});
const pod = (name: string, extra: Partial<PodView> = {}): PodView => ({ name, uid: `uid-${name}`, serviceAccountName: 'agent', phase: 'Pending', deleting: false, ...extra });
const observe = (o: Partial<Observed>): Observed => ({ task: task(), policy, pods: [], now: created + 60_000, trustDomain: 'cluster.local', ...o });
const ready = (o: Observed) => decide(o).status.conditions?.find((c) => c.type === 'Ready');

describe('decide', () => {
  it.each([
    { name: 'no pods yet', o: observe({}), state: 'Pending', reason: 'WaitingForPods' },
    { name: 'a running pod', o: observe({ pods: [pod('a')] }), state: 'Bound', reason: 'Bound' },
    { name: 'a pod under another service account', o: observe({ pods: [pod('a', { serviceAccountName: 'other' })] }), state: 'Pending', reason: 'WaitingForPods' },
    { name: 'a pod being deleted', o: observe({ pods: [pod('a', { deleting: true })] }), state: 'Pending', reason: 'WaitingForPods' },
    { name: 'the policy is gone', o: observe({ policy: undefined, pods: [pod('a')] }), state: 'Pending', reason: 'PolicyNotFound' },
    { name: 'the policy tightened below the task', o: observe({ policy: { ...policy, spec: { maxTaskTTL: '10m' } }, pods: [pod('a')] }), state: 'Pending', reason: 'OutsidePolicy' },
    { name: 'the pods finished', o: observe({ pods: [pod('a', { phase: 'Succeeded' })] }), state: 'Completed', reason: 'Ended' },
    { name: 'one pod finished, one still runs', o: observe({ pods: [pod('a', { phase: 'Succeeded' }), pod('b')] }), state: 'Bound', reason: 'Bound' },
    { name: 'the deadline passed', o: observe({ pods: [pod('a')], now: created + 30 * 60_000 }), state: 'Expired', reason: 'Ended' },
    { name: 'completed stays completed even with pods', o: observe({ task: task({ state: 'Completed' }), pods: [pod('a')] }), state: 'Completed', reason: 'Ended' },
    { name: 'violated stays violated after the deadline', o: observe({ task: task({ state: 'Violated' }), now: created + 99 * 60_000 }), state: 'Violated', reason: 'Ended' },
  ])('$name → $state ($reason)', ({ o, state, reason }) => {
    const plan = decide(o);
    expect(plan.status.state).toBe(state);
    expect(ready(o)?.reason).toBe(reason);
    if (state !== 'Bound') expect(plan.status.boundPods).toEqual([]);
  });

  it('binds only the bindable pods, by name and UID', () => {
    const plan = decide(observe({ pods: [pod('a'), pod('b', { serviceAccountName: 'x' }), pod('c', { phase: 'Failed' })] }));
    expect(plan.status.boundPods).toEqual([{ name: 'a', uid: 'uid-a' }]);
  });

  it('derives the SPIFFE ID and deadline, and records the generation observed', () => {
    const { status } = decide(observe({}));
    expect(status.spiffeID).toBe('spiffe://cluster.local/ns/ns/sa/agent/task/t');
    expect(status.deadline).toBe('2026-11-21T10:30:00.000Z');
    expect(status.observedGeneration).toBe(2);
  });

  it('asks for the finalizer first, and to revoke and finalize on deletion', () => {
    expect(decide(observe({ task: task(undefined, { finalizers: [] }) })).addFinalizer).toBe(true);
    const deleting = decide(observe({ task: task(undefined, { deletionTimestamp: '2026-11-21T10:05:00Z' }) }));
    expect(deleting).toMatchObject({ finalize: true, revoke: true, statusChanged: false });
  });

  it('revokes once the task has ended and looks again at the deadline otherwise', () => {
    expect(decide(observe({ pods: [pod('a')], now: created + 31 * 60_000 })).revoke).toBe(true);
    const running = decide(observe({ pods: [pod('a')] }));
    expect(running.revoke).toBe(false);
    expect(running.requeueAfterMs).toBe(29 * 60_000 + 50);
  });

  it('is a fixed point: deciding again on its own output changes nothing and emits no Event', () => {
    const first = decide(observe({ pods: [pod('a')] }));
    const second = decide(observe({ task: task(first.status), pods: [pod('a')], now: created + 120_000 }));
    expect(second.statusChanged).toBe(false);
    expect(second.events).toEqual([]);
  });

  it('emits one Event per transition, and Rebound when the bound pods change', () => {
    const bound = decide(observe({ pods: [pod('a')] }));
    expect(bound.events).toEqual([{ type: 'Normal', reason: 'Bound', message: 'identity bound to a (uid-a)' }]);
    const rebound = decide(observe({ task: task(bound.status), pods: [pod('b')] }));
    expect(rebound.events).toEqual([{ type: 'Normal', reason: 'Rebound', message: 'bound b (uid-b); released a (uid-a)' }]);
    const expired = decide(observe({ task: task(bound.status), pods: [pod('a')], now: created + 40 * 60_000 }));
    expect(expired.events[0]).toMatchObject({ type: 'Warning', reason: 'Expired' });
  });

  it('moves lastTransitionTime only when a condition changes status', () => {
    const first = decide(observe({ pods: [pod('a')] }));
    const readyAt = first.status.conditions?.find((c) => c.type === 'Ready')?.lastTransitionTime;
    const later = decide(observe({ task: task(first.status), pods: [pod('a'), pod('b')], now: created + 300_000 }));
    expect(later.status.conditions?.find((c) => c.type === 'Ready')?.lastTransitionTime).toBe(readyAt);
  });
});

describe('onlyJournalChanged', () => {
  const base = task({ state: 'Bound', hops: { allowed: 1, denied: 0, pending: 0 } });
  it('skips a reconcile for writes of hop counters, chain and audit head only', async () => {
    const { onlyJournalChanged } = await import('../../../src/controllers/agenttask/controller.js');
    expect(onlyJournalChanged(base, { ...base, status: { ...base.status, hops: { allowed: 2, denied: 0, pending: 0 }, audit: { head: 'x', count: 3 } } })).toBe(true);
    expect(onlyJournalChanged(base, { ...base, status: { ...base.status, state: 'Violated' } })).toBe(false);
    expect(onlyJournalChanged(base, { ...base, status: { ...base.status, pendingHops: [] } })).toBe(false);
    expect(onlyJournalChanged(base, { ...base, metadata: { ...base.metadata, deletionTimestamp: 'now' } })).toBe(false);
  });
});
