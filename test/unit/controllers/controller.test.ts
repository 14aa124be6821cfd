import { describe, expect, it } from 'vitest';
import type { AgentPolicy, AgentTask } from '../../../src/api/schema.js';
import { FINALIZER } from '../../../src/api/task.js';
import type { PodRecord } from '../../../src/broker/auth.js';
import { AgentTaskController } from '../../../src/controllers/agenttask/controller.js';
import { IamUnavailableError } from '../../../src/credentials/revoke.js';
import { ORPHANED_OUTBOX_MS, TaskJournal } from '../../../src/audit/journal.js';
import type { AuditRecord } from '../../../src/audit/record.js';
import { silentLogger } from '../../../src/log.js';
import { withFinalizer } from '../../../src/runtime/finalizer.js';
import { Metrics } from '../../../src/runtime/metrics.js';
import { TaskClientTwin } from '../../builders/task-client-twin.js';

const created = Date.parse('2026-11-21T10:00:00Z');
const policy: AgentPolicy = { apiVersion: 'chainwarden.io/v1alpha1', kind: 'AgentPolicy', metadata: { name: 'pol', namespace: 'ns' }, spec: { aws: { allowedRoleArns: ['arn:aws:iam::111122223333:role/*'] } } };
const newTask = (meta: Partial<AgentTask['metadata']> = {}, status?: AgentTask['status']): AgentTask => ({
  apiVersion: 'chainwarden.io/v1alpha1',
  kind: 'AgentTask',
  metadata: { name: 't', namespace: 'ns', uid: 'u1', generation: 1, creationTimestamp: new Date(created).toISOString(), ...meta },
  spec: { serviceAccountName: 'agent', policyRef: { name: 'pol' }, ttl: '30m', credentials: [{ name: 'default', aws: { roleArn: 'arn:aws:iam::111122223333:role/agent' } }] },
  status,
});
/** What admission leaves in an agent pod's spec, as far as the controller looks. */
const injectedSpec = {
  serviceAccountName: 'agent',
  initContainers: [{ name: 'chainwarden-agent', restartPolicy: 'Always', volumeMounts: [{ name: 'chainwarden-token' }] }],
  containers: [{ name: 'agent' }],
  volumes: [{ name: 'chainwarden-token', projected: { sources: [{ serviceAccountToken: { audience: 'chainwarden' } }] } }],
};
const agentPod: PodRecord = { metadata: { name: 'agent-0', namespace: 'ns', uid: 'p1', creationTimestamp: new Date(created + 1000).toISOString(), labels: { 'chainwarden.io/task': 't' } }, spec: injectedSpec, status: { phase: 'Running' } };

function setup(task: AgentTask, options: { revokeFails?: boolean; iamUnavailableFor?: number; seal?: (task: AgentTask) => Promise<AgentTask | void> } = {}) {
  const client = new TaskClientTwin(task);
  const revocations: string[] = [];
  const records: string[] = [];
  let now = created + 60_000;
  const clock = { now: () => now };
  const revoke = (t: AgentTask) => {
    revocations.push(t.metadata.name ?? '');
    if (options.iamUnavailableFor) return Promise.reject(new IamUnavailableError('agent', Object.assign(new Error('Rate exceeded'), { name: 'Throttling' }), now + options.iamUnavailableFor));
    return options.revokeFails ? Promise.reject(new Error('Throttling: Rate exceeded')) : Promise.resolve({ marker: `chainwarden-${t.metadata.uid ?? ''}`, roles: ['agent'], pruneAfter: now + 3_600_000 });
  };
  // Another controller on the same task, clock and revocations: a replica with a journal of its own.
  const controllerWith = (journal: ConstructorParameters<typeof AgentTaskController>[0]['journal']) =>
    new AgentTaskController({ sources: { task: () => client.task, policy: () => policy, pods: () => [agentPod] }, client, clock, log: silentLogger(), metrics: new Metrics(), trustDomain: 'cluster.local', journal, revoke, ...(options.seal ? { seal: options.seal } : {}) });
  const controller = controllerWith({ record: (_task, change) => void records.push(...change.events.map((e) => e.type)) });
  return { client, controller, controllerWith, clock, revocations, records, advance: (ms: number) => (now += ms) };
}

describe('AgentTaskController: acting on the plan', () => {
  it('adds its finalizer before anything else, then binds and writes only its own fields', async () => {
    const { client, controller, records } = setup(newTask({}, { hops: { allowed: 3, denied: 0, pending: 0 } }));
    await controller.reconcile('ns/t');
    expect(client.task?.metadata.finalizers).toEqual([FINALIZER]);
    expect(client.writes).toEqual([]);
    await controller.reconcile('ns/t');
    expect(client.task?.status).toMatchObject({ state: 'Bound', boundPods: [{ name: 'agent-0', uid: 'p1' }], hops: { allowed: 3, denied: 0, pending: 0 } });
    expect(client.writes.map((w) => w.owner)).toEqual(['controller']);
    expect(Object.keys(client.writes[0]?.status ?? {})).not.toContain('hops');
    expect(records).toEqual(['task_admitted', 'identity_bound']);
    expect(client.events).toEqual([expect.objectContaining({ reason: 'Bound' })]);
  });

  it('turns a violation the journal recorded into Violated, a Violated Event, and one revocation', async () => {
    const { client, controller, revocations } = setup(newTask({ finalizers: [FINALIZER] }));
    await controller.reconcile('ns/t');
    await client.statusWriter('journal').update('ns', 't', (t) => ({ ...t.status, violation: { hopId: 'h1_x', rule: 'no-exfiltration', message: 'email send was denied' } }));
    await controller.reconcile('ns/t');
    expect(client.task?.status?.state).toBe('Violated');
    expect(client.events.map((e) => `${e.type} ${e.reason}`)).toEqual(['Normal Bound', 'Warning Violated', 'Normal Revoked']);
    expect(client.task?.status?.conditions?.find((c) => c.type === 'Revoked')).toMatchObject({ status: 'True', reason: 'DenyWritten' });
    expect(client.task?.status?.violation?.hopId).toBe('h1_x');
    await controller.reconcile('ns/t');
    expect(revocations).toEqual(['t']);
    expect(client.events).toHaveLength(3);
  });

  it('keeps the deny pending and retries when AWS refuses it; the state is still Violated', async () => {
    const { client, controller } = setup(newTask({ finalizers: [FINALIZER] }, { violation: { hopId: 'h1_x', rule: 'r', message: 'm' } }), { revokeFails: true });
    await expect(controller.reconcile('ns/t')).rejects.toThrow('Throttling');
    expect(client.task?.status?.state).toBe('Violated');
    expect(client.task?.status?.conditions?.find((c) => c.type === 'Revoked')).toMatchObject({ status: 'False', reason: 'DenyPending' });
    expect(client.task?.status?.credentials?.revokedAt).toBeDefined();
  });

  it('when IAM failed, keeps the deny pending and looks again when the Revoker will ask IAM again, not sooner', async () => {
    const { client, controller } = setup(newTask({ finalizers: [FINALIZER] }, { violation: { hopId: 'h1_x', rule: 'r', message: 'm' } }), { iamUnavailableFor: 4_000 });
    expect(await controller.reconcile('ns/t')).toEqual({ requeueAfterMs: 4_000 });
    expect(client.task?.status?.conditions?.find((c) => c.type === 'Revoked')).toMatchObject({ status: 'False', reason: 'DenyPending', message: expect.stringContaining('IAM failed for role agent (Throttling: Rate exceeded)') as string });
    // Woken again by its own write: the status stays as it is (an apply that changes nothing wakes no one), no Event.
    const before = structuredClone(client.task?.status);
    expect(await controller.reconcile('ns/t')).toEqual({ requeueAfterMs: 4_000 });
    expect(client.task?.status).toEqual(before);
    expect(client.events.filter((e) => e.reason === 'Revoked')).toEqual([]);
  });

  it('reports nothing and looks again soon when its write loses a race', async () => {
    const { client, controller, records } = setup(newTask({ finalizers: [FINALIZER] }));
    client.conflicts = 1;
    expect(await controller.reconcile('ns/t')).toEqual({ requeueAfterMs: 100 });
    expect(records).toEqual([]);
    expect(client.events).toEqual([]);
  });

  it('on deletion revokes, then removes only its own finalizer', async () => {
    const { client, controller, revocations } = setup(newTask({ finalizers: ['example.com/other', FINALIZER], deletionTimestamp: new Date(created + 5000).toISOString() }));
    await controller.reconcile('ns/t');
    expect(revocations).toEqual(['t']);
    expect(client.task?.metadata.finalizers).toEqual(['example.com/other']);
  });

  it('a task deleted after someone removed its finalizer is still revoked and sealed, from its last state; one it cleaned up itself is not cleaned up again', async () => {
    const bound = { state: 'Bound' as const, credentials: { sourceIdentity: 'chainwarden-u1', sessions: [{ credential: 'default', accessKeyId: 'ASIAEXAMPLE', sessionName: 'chainwarden-u1', expiration: new Date(created + 3_600_000).toISOString() }], expiration: new Date(created + 3_600_000).toISOString() } };
    const watched = (controller: AgentTaskController) => {
      let emit: (event: 'add' | 'update' | 'delete', task: AgentTask) => void = () => undefined;
      const quiet = { on: () => undefined, list: () => [] };
      controller.watch({ tasks: { on: (cb: typeof emit) => void (emit = cb), list: () => [] }, policies: quiet, pods: quiet } as unknown as Parameters<AgentTaskController['watch']>[0]);
      return (event: 'add' | 'update' | 'delete', task: AgentTask) => emit(event, task);
    };

    // A tenant patches the finalizer away and deletes the task: it is gone before the controller looks.
    const sealed: string[] = [];
    const stripped = setup(newTask({ finalizers: [FINALIZER] }, bound), { seal: (t) => Promise.resolve(void sealed.push(t.metadata.uid ?? '')) });
    const emit = watched(stripped.controller);
    const last = stripped.client.task as AgentTask;
    stripped.client.delete();
    emit('delete', { ...last, metadata: { ...last.metadata, finalizers: [] } });
    await stripped.controller.reconcile('ns/t');
    expect(stripped.revocations).toEqual(['t']);
    expect(sealed).toEqual(['u1']);
    await stripped.controller.reconcile('ns/t');
    expect(stripped.revocations).toEqual(['t']);

    // Deleted with its finalizer: cleaned up once, before the finalizer goes; the deletion that follows is no orphan.
    const kept = setup(newTask({ finalizers: [FINALIZER], deletionTimestamp: new Date(created + 5000).toISOString() }, bound));
    const emitKept = watched(kept.controller);
    await kept.controller.reconcile('ns/t');
    const gone = kept.client.task as AgentTask;
    kept.client.delete();
    emitKept('delete', gone);
    await kept.controller.reconcile('ns/t');
    expect(kept.revocations).toEqual(['t']);
  });

  it('keeps the finalizer while the deny cannot be written', async () => {
    const { client, controller } = setup(newTask({ finalizers: [FINALIZER], deletionTimestamp: new Date(created + 5000).toISOString() }), { revokeFails: true });
    await expect(controller.reconcile('ns/t')).rejects.toThrow('Throttling');
    expect(client.task?.metadata.finalizers).toEqual([FINALIZER]);
  });

  it("keeps the finalizer when another replica's record lands between the seal and the removal, and seals again with it; other writes meanwhile do not hold it", async () => {
    const deleting = () => newTask({ finalizers: [FINALIZER], deletionTimestamp: new Date(created + 5000).toISOString() });
    const record = (hopId: string) => ({ events: [{ type: 'hop_decided' as const, at: '2026-11-21T10:01:00Z', data: { hopId, decision: 'allow' } }] });
    const sealedCounts: number[] = [];
    let meanwhile: (() => Promise<unknown>) | undefined;
    const seal = async (t: AgentTask) => {
      sealedCounts.push(t.status?.audit?.count ?? 0);
      await meanwhile?.();
      meanwhile = undefined;
      return t;
    };
    const { client, controller } = setup(deleting(), { seal });
    const replica = new TaskJournal({ writer: client.statusWriter('journal'), emit: () => undefined, log: silentLogger(), flushMs: 0, process: 'replica-b' });
    await replica.commit(client.task!, record('h1_first'));
    // Another replica's queued hop record reaches the task's status just after the seal read it.
    meanwhile = () => replica.commit(client.task!, record('h1_late'));
    expect(await controller.reconcile('ns/t')).toEqual({ requeueAfterMs: 100 });
    expect(client.task?.metadata.finalizers).toEqual([FINALIZER]);
    await controller.reconcile('ns/t');
    expect(client.task?.metadata.finalizers ?? []).toEqual([]);
    // Sealed first without the late record, then with it: the head kept beyond the task is its last.
    expect(sealedCounts).toEqual([1, 2]);

    // A write that leaves the audit head alone (a tenant's label, another controller's finalizer) does not hold the finalizer, nor clean up again.
    const quiet = setup(deleting(), { seal });
    const other = new TaskJournal({ writer: quiet.client.statusWriter('journal'), emit: () => undefined, log: silentLogger(), flushMs: 0, process: 'replica-b' });
    await other.commit(quiet.client.task!, record('h1_first'));
    meanwhile = () => quiet.client.patch(quiet.client.task!, [{ op: 'add', path: '/metadata/labels', value: { team: 'support' } }]);
    expect(await quiet.controller.reconcile('ns/t')).toEqual({});
    expect(quiet.client.task?.metadata.finalizers ?? []).toEqual([]);
    expect(quiet.revocations.length).toBeLessThanOrEqual(1);
  });

  it('does not remove an entry that moved since it was read', async () => {
    const { client } = setup(newTask({ finalizers: [FINALIZER], deletionTimestamp: new Date(created + 5000).toISOString() }));
    const stale = client.task as AgentTask;
    // Another controller's entry lands in front of ours between our read and our write.
    await client.patch(stale, [{ op: 'add', path: '/metadata/finalizers/0', value: 'example.com/other' }]);
    const result = await withFinalizer(stale, FINALIZER, (ops) => client.patch(stale, ops), { cleanup: () => Promise.resolve(undefined), apply: () => Promise.resolve({}) });
    expect(result).toEqual({ requeueAfterMs: 100 });
    expect(client.task?.metadata.finalizers).toEqual(['example.com/other', FINALIZER]);
  });
});

describe("AgentTaskController: an ended task's audit records all reach the stream", () => {
  it('the leader emits and marks an outbox a dead replica left on an ended task, once it has sat unmarked for the orphan delay', async () => {
    const { client, controller, controllerWith, clock, advance } = setup(newTask({ finalizers: [FINALIZER] }, { violation: { hopId: 'h1_x', rule: 'no-exfiltration', message: 'email send was denied' } }));
    await controller.reconcile('ns/t');
    expect(client.task?.status?.state).toBe('Violated');
    // A replica writes one more record to the ended task, then dies before emitting it.
    const dead = new TaskJournal({ writer: client.statusWriter('journal'), emit: () => undefined, log: silentLogger(), flushMs: 0, process: 'replica-b/dead' });
    await dead.commit(client.task!, { events: [{ type: 'hop_decided', at: '2026-11-21T10:01:00Z', data: { hopId: 'h1_y', decision: 'deny' } }] });
    const head = client.task?.status?.audit?.head;

    const stream: AuditRecord[] = [];
    advance(60_000);
    const leader = controllerWith(new TaskJournal({ writer: client.statusWriter('journal'), emit: (r) => stream.push(r), log: silentLogger(), flushMs: 0, process: 'replica-a/leader', clock }));
    // A live writer marks its own within moments: the leader looks again after the delay, emitting nothing yet.
    expect(await leader.reconcile('ns/t')).toEqual({ requeueAfterMs: ORPHANED_OUTBOX_MS });
    expect(stream).toEqual([]);
    advance(ORPHANED_OUTBOX_MS);
    expect(await leader.reconcile('ns/t')).toEqual({});
    expect(stream.map((r) => [r.data.hopId, r.hash])).toEqual([['h1_y', head]]);
    expect(client.task?.status?.audit).toMatchObject({ head, emitted: true });
    // Marked: the next look emits nothing again.
    await leader.reconcile('ns/t');
    expect(stream).toHaveLength(1);
  });
});

