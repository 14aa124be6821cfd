import { describe, expect, it } from 'vitest';
import type { AgentPolicy, AgentTask } from '../../../src/api/schema.js';
import { FINALIZER } from '../../../src/api/task.js';
import { decide, factsOf, revocationPending, revoked, type Observed, type PodView } from '../../../src/controllers/agenttask/decide.js';

const created = Date.parse('2026-11-21T10:00:00Z');
const policy: AgentPolicy = { apiVersion: 'chainwarden.io/v1alpha1', kind: 'AgentPolicy', metadata: { name: 'pol', namespace: 'ns' }, spec: { maxTaskTTL: '2h' } };
const task = (status?: AgentTask['status'], meta: Partial<AgentTask['metadata']> = {}): AgentTask => ({
  apiVersion: 'chainwarden.io/v1alpha1',
  kind: 'AgentTask',
  metadata: { name: 't', namespace: 'ns', generation: 2, creationTimestamp: new Date(created).toISOString(), finalizers: [FINALIZER], ...meta },
  spec: { serviceAccountName: 'agent', policyRef: { name: 'pol' }, ttl: '30m' },
  status,
});
const pod = (name: string, extra: Partial<PodView> = {}): PodView => ({ name, uid: `uid-${name}`, serviceAccountName: 'agent', phase: 'Pending', deleting: false, injected: true, createdAt: created + 1000, ...extra });
const observe = (o: Partial<Observed>): Observed => ({ task: task(), policy, pods: [], now: created + 60_000, trustDomain: 'cluster.local', ...o });
const condition = (o: Observed, type: string) => decide(o).status.conditions?.find((c) => c.type === type);
const violation = { hopId: 'h1_abc', rule: 'no-exfiltration', message: 'email send x was denied by no-exfiltration' };
const completion = { pod: 'agent-0', at: '2026-11-21T10:05:00Z' };
const boundStatus = () => decide(observe({ pods: [pod('a')] })).status;

describe('decide: facts → state, conditions and Events', () => {
  it.each([
    { name: 'no pods yet', o: observe({}), state: 'Pending', ready: 'WaitingForPods', event: { type: 'Normal', reason: 'WaitingForPods' } },
    { name: 'a running pod', o: observe({ pods: [pod('a')] }), state: 'Bound', ready: 'Bound', event: { type: 'Normal', reason: 'Bound' } },
    { name: 'a pod under another service account', o: observe({ pods: [pod('a', { serviceAccountName: 'other' })] }), state: 'Pending', ready: 'WaitingForPods' },
    { name: 'a pod created before its task', o: observe({ pods: [pod('a', { createdAt: created - 5000 })] }), state: 'Pending', ready: 'WaitingForPods' },
    { name: 'a pod being deleted', o: observe({ pods: [pod('a', { deleting: true })] }), state: 'Pending', ready: 'WaitingForPods' },
    { name: 'a labelled pod admission did not inject', o: observe({ pods: [pod('a', { injected: false })] }), state: 'Pending', ready: 'WaitingForPods' },
    { name: 'the policy is gone', o: observe({ policy: undefined, pods: [pod('a')] }), state: 'Pending', ready: 'PolicyNotFound', event: { type: 'Warning', reason: 'PolicyNotFound' } },
    { name: 'the policy tightened below the task', o: observe({ policy: { ...policy, spec: { maxTaskTTL: '10m' } }, pods: [pod('a')] }), state: 'Pending', ready: 'OutsidePolicy' },
    { name: 'the pods finished', o: observe({ pods: [pod('a', { phase: 'Succeeded' })] }), state: 'Completed', ready: 'Ended', event: { type: 'Normal', reason: 'Completed' } },
    { name: 'one pod finished, one still runs', o: observe({ pods: [pod('a', { phase: 'Succeeded' }), pod('b')] }), state: 'Bound', ready: 'Bound' },
    { name: 'the deadline passed', o: observe({ task: task(boundStatus()), pods: [pod('a')], now: created + 30 * 60_000 }), state: 'Expired', ready: 'Ended', event: { type: 'Warning', reason: 'Expired' } },
    { name: 'the journal recorded a violation', o: observe({ task: task({ ...boundStatus(), violation }), pods: [pod('a')] }), state: 'Violated', ready: 'Ended', event: { type: 'Warning', reason: 'Violated', message: `hop h1_abc broke no-exfiltration: ${violation.message}` } },
    { name: 'the agent reported completion', o: observe({ task: task({ ...boundStatus(), completion }), pods: [pod('a')] }), state: 'Completed', ready: 'Ended', event: { type: 'Normal', reason: 'Completed' } },
    { name: 'a violation wins over a completion', o: observe({ task: task({ ...boundStatus(), violation, completion }), pods: [pod('a')] }), state: 'Violated', ready: 'Ended' },
    { name: 'a violation wins over a passed deadline', o: observe({ task: task({ ...boundStatus(), violation }), now: created + 99 * 60_000 }), state: 'Violated', ready: 'Ended' },
    { name: 'completed stays completed even with pods', o: observe({ task: task({ state: 'Completed' }), pods: [pod('a')] }), state: 'Completed', ready: 'Ended' },
    { name: 'completed stays completed when a violation arrives late', o: observe({ task: task({ state: 'Completed', violation }) }), state: 'Completed', ready: 'Ended' },
    { name: 'violated stays violated after the deadline', o: observe({ task: task({ state: 'Violated' }), now: created + 99 * 60_000 }), state: 'Violated', ready: 'Ended' },
  ])('$name → $state ($ready)', ({ o, state, ready, event }) => {
    const plan = decide(o);
    expect(plan.status.state).toBe(state);
    expect(condition(o, 'Ready')?.reason).toBe(ready);
    if (state !== 'Bound') expect(plan.status.boundPods).toEqual([]);
    if (event) expect(plan.events).toEqual([expect.objectContaining(event)]);
  });

  it('turns a violation into the Violated condition, a Warning Event and revocation', () => {
    const plan = decide(observe({ task: task({ ...boundStatus(), violation }), pods: [pod('a')] }));
    expect(plan.status.conditions?.find((c) => c.type === 'Violated')).toMatchObject({ status: 'True', reason: 'PolicyViolation', message: expect.stringContaining('h1_abc') as string });
    expect(plan.revoke).toBe(true);
    expect(plan.changed).toBe(true);
  });

  it('turns a completion into Completed (AgentReported) with an audit record naming the pod', () => {
    const plan = decide(observe({ task: task({ ...boundStatus(), completion }), pods: [pod('a')] }));
    expect(plan.status.conditions?.find((c) => c.type === 'Completed')).toMatchObject({ status: 'True', reason: 'AgentReported' });
    expect(plan.records).toContainEqual({ type: 'completion', data: { reason: 'AgentReported', pod: 'agent-0' } });
  });

  it('names the pods it ignored and why', () => {
    const message = condition(observe({ pods: [pod('old', { createdAt: created - 1 }), pod('x', { serviceAccountName: 'other' }), pod('rogue', { injected: false })] }), 'Ready')?.message ?? '';
    expect(message).toContain('old (uid-old): created before the task');
    expect(message).toContain('x (uid-x): not running as service account agent');
    expect(message).toContain("rogue (uid-rogue): not injected by chainwarden's admission (no chainwarden-agent sidecar holding the broker token)");
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

  it('revokes once the task has ended and looks again at the deadline otherwise', () => {
    expect(decide(observe({ pods: [pod('a')], now: created + 31 * 60_000 })).revoke).toBe(true);
    const running = decide(observe({ pods: [pod('a')] }));
    expect(running.revoke).toBe(false);
    expect(running.requeueAfterMs).toBe(29 * 60_000 + 50);
  });

  it('does not revoke twice: a Revoked task stays revoked', () => {
    const ended = decide(observe({ task: task({ ...boundStatus(), violation }) }));
    const after = revoked(ended.status, { marker: 'm', roles: ['r'], pruneAfter: created + 3_600_000 }, created + 61_000).status;
    expect(decide(observe({ task: task(after) })).revoke).toBe(false);
  });

  it('is a fixed point: deciding again on its own output changes nothing and emits no Event', () => {
    const first = decide(observe({ pods: [pod('a')] }));
    const second = decide(observe({ task: task(first.status), pods: [pod('a')], now: created + 120_000 }));
    expect(second.changed).toBe(false);
    expect(second.events).toEqual([]);
  });

  it('ignores the fields other owners write when judging whether its own changed', () => {
    const first = decide(observe({ pods: [pod('a')] }));
    const withHops = task({ ...first.status, hops: { allowed: 9, denied: 0, pending: 0 }, conditions: [...(first.status.conditions ?? []), { type: 'CredentialsIssued', status: 'True', reason: 'Issued', message: 'm', lastTransitionTime: 'x' }] });
    expect(decide(observe({ task: withHops, pods: [pod('a')] })).changed).toBe(false);
  });

  it('emits one Event per transition, and Rebound when the bound pods change', () => {
    const bound = decide(observe({ pods: [pod('a')] }));
    expect(bound.events).toEqual([{ type: 'Normal', reason: 'Bound', message: 'identity bound to a (uid-a)' }]);
    const rebound = decide(observe({ task: task(bound.status), pods: [pod('b')] }));
    expect(rebound.events).toEqual([{ type: 'Normal', reason: 'Rebound', message: 'bound b (uid-b); released a (uid-a)' }]);
  });

  it('moves lastTransitionTime only when a condition changes status', () => {
    const first = decide(observe({ pods: [pod('a')] }));
    const readyAt = first.status.conditions?.find((c) => c.type === 'Ready')?.lastTransitionTime;
    const later = decide(observe({ task: task(first.status), pods: [pod('a'), pod('b')], now: created + 300_000 }));
    expect(later.status.conditions?.find((c) => c.type === 'Ready')?.lastTransitionTime).toBe(readyAt);
  });

  it('escapes control and bidi characters that agent-supplied text brings into conditions', () => {
    const hostile = { ...violation, message: 'denied \u001b[2J\u202egnp.exe' };
    const message = condition(observe({ task: task({ ...boundStatus(), violation: hostile }) }), 'Violated')?.message ?? '';
    expect(message).not.toContain('\u001b');
    expect(message).not.toContain('\u202e');
    expect(message).toContain('\\x1b[2J\\u202egnp.exe');
  });
});

describe('revocation outcomes', () => {
  it('records revocation with the deny it wrote, or says there was nothing to deny', () => {
    const ended = decide(observe({ task: task({ ...boundStatus(), violation }) })).status;
    const denied = revoked(ended, { marker: 'chainwarden-u1', roles: ['agent'], pruneAfter: created + 3_600_000 }, created + 61_000);
    expect(denied.status.credentials).toMatchObject({ awsDenyInPlace: true, revokedAt: '2026-11-21T10:01:01.000Z' });
    expect(denied.status.conditions?.find((c) => c.type === 'Revoked')).toMatchObject({ status: 'True', reason: 'DenyWritten' });
    expect(denied.event.message).toContain('aws:SourceIdentity=chainwarden-u1');
    const nothing = revoked(ended, { marker: 'chainwarden-u1', roles: [], pruneAfter: 0 }, created + 61_000);
    expect(nothing.status.conditions?.find((c) => c.type === 'Revoked')?.reason).toBe('NothingIssued');
  });

  it('keeps the broker refusing while the AWS-side deny is retried', () => {
    const ended = decide(observe({ task: task({ ...boundStatus(), violation }) })).status;
    const pending = revocationPending(ended, 'Throttling: Rate exceeded', created + 61_000);
    expect(pending.credentials).toMatchObject({ awsDenyInPlace: false, revokedAt: expect.any(String) as string });
    expect(pending.conditions?.find((c) => c.type === 'Revoked')).toMatchObject({ status: 'False', reason: 'DenyPending', message: expect.stringContaining('Throttling') as string });
  });
});

describe('factsOf: what wakes the controller', () => {
  const base = task({ ...boundStatus(), hops: { allowed: 1, denied: 0, pending: 0 } });
  const same = (next: AgentTask) => JSON.stringify(factsOf(base)) === JSON.stringify(factsOf(next));

  it('ignores what the journal records on every hop', () => {
    expect(same({ ...base, status: { ...base.status, hops: { allowed: 2, denied: 0, pending: 0 }, audit: { head: 'x', count: 3 }, chain: { version: 4, hopCount: 2, priorDenials: 0, systemsTouched: ['t'], dataClassesTouched: [] }, recentHops: [] } })).toBe(true);
  });

  it('sees every fact the controller turns into state, and its own fields', () => {
    expect(same({ ...base, status: { ...base.status, violation } })).toBe(false);
    expect(same({ ...base, status: { ...base.status, completion } })).toBe(false);
    expect(same({ ...base, status: { ...base.status, state: 'Violated' } })).toBe(false);
    expect(same({ ...base, status: { ...base.status, pendingHops: [{ hopId: 'h', digest: 'd', tool: 't', action: 'a', resource: 'r', depth: 1, rules: [], requestedAt: 'a', timeoutAt: 'b' }] } })).toBe(false);
    expect(same({ ...base, metadata: { ...base.metadata, deletionTimestamp: 'now' } })).toBe(false);
    expect(same({ ...base, metadata: { ...base.metadata, generation: 3 } })).toBe(false);
  });
});
