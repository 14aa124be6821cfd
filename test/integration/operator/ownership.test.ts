import type { KubeConfig } from '@kubernetes/client-node';
import type { AgentTask } from '../../../src/api/schema.js';
import { KubeTaskClient } from '../../../src/kube/tasks.js';
import { applyDelta, emptyDelta, TaskJournal } from '../../../src/audit/journal.js';
import type { AuditRecord } from '../../../src/audit/record.js';
import { silentLogger } from '../../../src/log.js';
import { applyStatus } from '../../../src/runtime/apply.js';
import { examplePolicy, exampleTask } from '../../builders/examples.js';
import { brokerRequest } from '../../env/agents.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { createRole } from '../../env/aws.js';
import { boundExampleAgent } from '../../env/hops.js';
import { create } from '../../env/kube.js';
import { eventReasons, readTask, waitForTask } from './helpers.js';

interface ManagedField {
  manager: string;
  operation: string;
  subresource?: string;
  fieldsV1?: { 'f:status'?: Record<string, unknown> };
}

/** The status fields each field manager owns on the live object, as `kubectl get -o yaml --show-managed-fields` shows them. */
function owners(task: AgentTask): Map<string, string[]> {
  const fields = ((task.metadata as { managedFields?: ManagedField[] }).managedFields ?? []).filter((m) => m.subresource === 'status');
  return new Map(fields.map((m) => [m.manager, Object.keys(m.fieldsV1?.['f:status'] ?? {})]));
}

/** The example task, Pending (it has no pods), and a client writing its status as the operator's owners do. */
async function pendingTask(admin: KubeConfig, namespace: string) {
  await create(admin, examplePolicy(namespace));
  const created = await create(admin, exampleTask(namespace));
  const name = created.metadata.name ?? '';
  // Pending, and its admission recorded: the operator's journal writes that record apart from the
  // state, and nothing more comes until a pod does, so a test's own writes are the only ones left.
  await waitForTask(admin, namespace, name, (t) => t.status?.state === 'Pending' && (t.status.audit?.count ?? 0) >= 1);
  return { name, client: new KubeTaskClient(admin) };
}

describe('one owner per status field, through the real API server', () => {
  test('a live task shows the controller, the journal and the broker each owning only its own fields, the session record shared', async ({ admin, env, namespace }) => {
    // Direct delivery: the session is minted and recorded when the agent asks for it.
    const roleArn = await createRole(env, `support-agent-${namespace}`);
    const agent = await boundExampleAgent(admin, env, namespace, {
      policy: (p) => void (p.spec.aws = { allowedRoleArns: [roleArn], maxDuration: '1h', allowDirect: true }),
      task: (t) => void (t.spec.credentials![0]!.aws = { ...t.spec.credentials![0]!.aws, roleArn, delivery: 'Direct' }),
    });
    const credentials = await brokerRequest(env, 'GET', '/v1/credentials', { token: agent.token });
    expect(credentials.status).toBe(200);
    const hop = await agent.hop({ tool: 'tickets', action: 'read', resource: 'ticket/4711' });
    expect(hop.body.decision).toBe('allow');
    const done = await brokerRequest(env, 'POST', `/v1/tasks/${namespace}/ticket-4711/complete`, { token: agent.token });
    expect(done.status).toBe(200);
    const task = await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.state === 'Completed' && (t.status.hops?.allowed ?? 0) === 1);
    const byManager = owners(task);
    expect([...byManager.keys()].sort()).toEqual(['chainwarden-broker', 'chainwarden-controller', 'chainwarden-journal-v2']);
    expect(byManager.get('chainwarden-controller')).toEqual(expect.arrayContaining(['f:state', 'f:boundPods', 'f:conditions', 'f:spiffeID', 'f:deadline']));
    // The session went into status with its audit record, in the journal's write; the broker states it with its completion.
    expect(byManager.get('chainwarden-journal-v2')).toEqual(expect.arrayContaining(['f:chain', 'f:hops', 'f:audit', 'f:recentHops', 'f:credentials']));
    expect(byManager.get('chainwarden-broker')?.sort()).toEqual(['f:completion', 'f:conditions', 'f:credentials']);
    expect(task.status?.credentials?.sessions).toHaveLength(1);
    // No field has two owners.
    const all = [...byManager.values()].flat().filter((f) => f !== 'f:conditions' && f !== 'f:credentials');
    expect(new Set(all).size).toBe(all.length);
    // The agent's completion is a fact; the controller turned it into Completed and said so.
    expect(task.status?.conditions?.find((c) => c.type === 'Completed')).toMatchObject({ status: 'True', reason: 'AgentReported' });
    await expect.poll(() => eventReasons(admin, namespace, 'ticket-4711')).toContain('Completed');
  });

  test('a violation the journal records becomes Violated with a Violated Event from the controller', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace);
    await agent.hop({ tool: 'tickets', action: 'read', resource: 'ticket/4711' });
    const denied = await agent.hop({ tool: 'email', action: 'send', resource: 'customer@example.com' });
    expect(denied.body.decision).toBe('deny');
    const task = await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.state === 'Violated');
    expect(task.status?.violation).toMatchObject({ hopId: denied.body.hopId, rule: 'no-exfiltration' });
    expect(owners(task).get('chainwarden-journal-v2')).toContain('f:violation');
    await expect.poll(() => eventReasons(admin, namespace, 'ticket-4711')).toContain('Violated');
  });

  test('two writers changing their own fields at once lose nothing, and neither removes the other\'s', async ({ admin, namespace }) => {
    // The operator's controller writes this task too (it is Pending: no pods): a third writer.
    const { name, client } = await pendingTask(admin, namespace);
    const journal = client.statusWriter('journal');
    const broker = client.statusWriter('broker');
    const rounds = 15;
    // Each owner writes its own fields over and over, both at the same time (as the journal and
    // the broker do on a busy task), while the controller writes its own.
    const countHops = async () => {
      for (let i = 0; i < rounds; i++) await journal.update(namespace, name, (t) => ({ ...t.status, hops: { allowed: (t.status?.hops?.allowed ?? 0) + 1, denied: 0, pending: 0 } }));
    };
    const recordSessions = async () => {
      for (let i = 0; i < rounds; i++) {
        await broker.update(namespace, name, (t) => ({
          ...t.status,
          credentials: { ...t.status?.credentials, sessions: [...(t.status?.credentials?.sessions ?? []), { credential: 'default', accessKeyId: `ASIA${i}`, expiration: '2026-11-21T11:00:00Z', sessionName: 's' }] },
        }));
      }
    };
    await Promise.all([countHops(), recordSessions()]);
    const task = await readTask(admin, namespace, name);
    expect(task?.status?.hops?.allowed).toBe(rounds);
    expect(task?.status?.credentials?.sessions).toHaveLength(rounds);
    expect(task?.status?.state).toBe('Pending');
    // A writer that applies only its fields leaves everyone else's in place.
    await journal.update(namespace, name, (t) => ({ hops: t.status?.hops }));
    const after = await readTask(admin, namespace, name);
    expect(after?.status?.credentials?.sessions).toHaveLength(rounds);
    expect(after?.status?.state).toBe('Pending');
  });

  test('sessions an earlier version\'s broker recorded alone stay through this version\'s writes', async ({ admin, namespace }) => {
    const { name, client } = await pendingTask(admin, namespace);
    // A replica of the version before applied the session record under the broker's manager, its sole owner.
    const earlier = { credential: 'default', accessKeyId: 'ASIAEARLIERVERSION', expiration: '2026-11-21T11:00:00Z', sessionName: 's', issuedBy: 'old', issuedAt: '2026-11-21T10:45:00Z' };
    const read = (await readTask(admin, namespace, name))!;
    const issued = { type: 'CredentialsIssued', status: 'True' as const, reason: 'Issued', message: 'session ASIAEARLIERVERSION', lastTransitionTime: '2026-11-21T10:45:00Z' };
    expect((await applyStatus(admin, { path: `/apis/chainwarden.io/v1alpha1/namespaces/${namespace}/agenttasks/${name}`, apiVersion: 'chainwarden.io/v1alpha1', kind: 'AgentTask', namespace, name }, 'chainwarden-broker', { credentials: { sourceIdentity: 'marker', expiration: earlier.expiration, sessions: [earlier] }, conditions: [issued] }, read.metadata.resourceVersion)).outcome).toBe('written');
    // This version's broker records a completion, its journal a hop: neither leaves the record out.
    await client.statusWriter('broker').update(namespace, name, (t) => ({ ...t.status, completion: { pod: 'p', at: '2026-11-21T10:50:00Z' } }));
    await client.statusWriter('journal').update(namespace, name, (t) => ({ ...t.status, hops: { allowed: 1, denied: 0, pending: 0 } }));
    const task = await readTask(admin, namespace, name);
    expect(task?.status?.credentials?.sessions).toEqual([earlier]);
    expect(task?.status?.credentials?.sourceIdentity).toBe('marker');
    expect(task?.status?.conditions?.find((c) => c.type === 'CredentialsIssued')).toMatchObject({ status: 'True', message: 'session ASIAEARLIERVERSION' });
  });

  test('a session this version\'s journal recorded stays through an earlier version\'s journal write, which never stated it', async ({ admin, namespace }) => {
    const { name, client } = await pendingTask(admin, namespace);
    // This version's journal records a session with its condition (the journal's manager its sole owner of what changed).
    const at = '2026-11-21T10:45:00.000Z';
    const session = { credential: 'default', accessKeyId: 'ASIATHISVERSION', expiration: '2026-11-21T11:00:00.000Z', sessionName: 's', issuedBy: 'new', issuedAt: at };
    await client.statusWriter('journal').update(namespace, name, (t) => ({
      ...t.status,
      credentials: { sourceIdentity: 'marker', expiration: session.expiration, sessions: [session] },
      conditions: [{ type: 'CredentialsIssued', status: 'True', reason: 'Issued', message: 'session ASIATHISVERSION', lastTransitionTime: at }],
    }));
    // A replica of the earlier version journals a hop: its manager applies the journal's fields of then, no session record.
    const read = (await readTask(admin, namespace, name))!;
    const ref = { path: `/apis/chainwarden.io/v1alpha1/namespaces/${namespace}/agenttasks/${name}`, apiVersion: 'chainwarden.io/v1alpha1', kind: 'AgentTask', namespace, name };
    expect((await applyStatus(admin, ref, 'chainwarden-journal', { hops: { allowed: 1, denied: 0, pending: 0 } }, read.metadata.resourceVersion)).outcome).toBe('written');
    const task = await readTask(admin, namespace, name);
    expect(task?.status?.hops?.allowed).toBe(1);
    expect(task?.status?.credentials?.sessions).toEqual([session]);
    expect(task?.status?.conditions?.find((c) => c.type === 'CredentialsIssued')).toMatchObject({ status: 'True', message: 'session ASIATHISVERSION' });
  });

  test('an outbox an earlier version\'s journal left, marked emitted, is replaced by this version\'s next records, not left looking emitted', async ({ admin, namespace }) => {
    const { name, client } = await pendingTask(admin, namespace);
    const read = (await readTask(admin, namespace, name))!;
    const ref = { path: `/apis/chainwarden.io/v1alpha1/namespaces/${namespace}/agenttasks/${name}`, apiVersion: 'chainwarden.io/v1alpha1', kind: 'AgentTask', namespace, name };
    // The earlier journal's manager wrote a head with its outbox, and marked it emitted.
    const earlier = { head: 'e'.repeat(64), count: 1, writer: 'earlier/1', unsent: ['eyJlYXJsaWVyIjp0cnVlfQ=='], emitted: true };
    expect((await applyStatus(admin, ref, 'chainwarden-journal', { audit: earlier }, read.metadata.resourceVersion)).outcome).toBe('written');
    // This version's journal writes a record on top.
    const event = { type: 'hop_decided' as const, at: '2026-11-21T10:50:00.000Z', data: { hopId: 'h1_x', decision: 'allow' } };
    await client.statusWriter('journal').update(namespace, name, (t) => applyDelta(t, { ...emptyDelta(), events: [event] }, Date.parse(event.at), 'this/1').status);
    const audit = (await readTask(admin, namespace, name))?.status?.audit;
    expect(audit).toMatchObject({ count: 2, writer: 'this/1' });
    expect(audit?.emitted ?? false).toBe(false);
    expect(audit?.unsent).toHaveLength(1);
    expect(audit?.unsent?.[0]).not.toBe(earlier.unsent[0]);
  });

  test('a status field the installed CRD lacks (an operator upgraded before its CRDs) stops that task alone, saying how to fix it, and keeps the replica ready', async ({ admin, namespace }) => {
    const { name, client } = await pendingTask(admin, namespace);
    const emitted: AuditRecord[] = [];
    const stops: string[] = [];
    const journal = new TaskJournal({ writer: client.statusWriter('journal'), emit: (r) => emitted.push(r), log: silentLogger(), flushMs: 0, onStop: (_t, _cause, message) => stops.push(message) });
    const task = (await readTask(admin, namespace, name))!;
    // What a newer version writes into a field this CRD does not declare; the API server types an apply against the schema and answers 500.
    const waiting = { hopId: 'h1_new', digest: 'd', tool: 'payments', action: 'refund', resource: 'order/1', depth: 1, rules: ['refunds-need-a-human'], fieldOfANewerVersion: ['x'], requestedAt: '2026-11-21T10:50:00Z', timeoutAt: '2026-11-21T11:05:00Z' };
    const event = { type: 'hop_decided' as const, at: '2026-11-21T10:50:00.000Z', data: { hopId: 'h1_new', decision: 'pending_approval' } };
    journal.record(task, { ...emptyDelta(), hopCount: 1, pending: 1, addPending: [waiting], events: [event] });
    // Given up (three tries over 5 s), not retried for ever: its record still reaches the stream.
    await expect.poll(() => stops, { timeout: 15_000, interval: 200 }).toEqual([expect.stringContaining('kubectl apply --server-side -f crds/')]);
    expect(stops[0]).toContain('field not declared in schema');
    expect(emitted.map((r) => r.data.hopId)).toEqual(['h1_new']);
    // A write retried for ever would have kept every replica that took such a hop unready.
    expect(journal.behind()).toBeUndefined();
    expect((await readTask(admin, namespace, name))?.status?.pendingHops ?? []).toEqual([]);
  });

  test('a finalizer patch from a stale read is a lost race, retried, never a refusal that names no cause', async ({ admin, namespace }) => {
    await create(admin, examplePolicy(namespace));
    const created = await create(admin, exampleTask(namespace));
    const name = created.metadata.name ?? '';
    const stale = (await readTask(admin, namespace, name))!;
    // The controller writes the task meanwhile, as it does right after a task is created.
    await waitForTask(admin, namespace, name, (t) => t.metadata.resourceVersion !== stale.metadata.resourceVersion);
    const client = new KubeTaskClient(admin);
    const guarded = (value: string | undefined) => [
      { op: 'test' as const, path: '/metadata/resourceVersion', value },
      { op: 'add' as const, path: '/metadata/annotations', value: { 'example.com/marked': 'yes' } },
    ];
    // The API server answers a failed test with a bare 422, the same as for any patch it cannot apply.
    expect(await client.patch(stale, guarded(stale.metadata.resourceVersion))).toBe('conflict');
    expect((await readTask(admin, namespace, name))?.metadata.annotations?.['example.com/marked']).toBeUndefined();
    // The controller looks at a task without pods again a second after creation, and that write
    // can land between a read and the patch: a lost race as well, which the read after it wins.
    let fresh = stale;
    let outcome: string | undefined;
    for (let attempt = 0; attempt < 5 && outcome !== 'written'; attempt++) {
      fresh = (await readTask(admin, namespace, name))!;
      outcome = await client.patch(fresh, guarded(fresh.metadata.resourceVersion));
      if (outcome === 'conflict') expect((await readTask(admin, namespace, name))?.metadata.resourceVersion).not.toBe(fresh.metadata.resourceVersion);
    }
    expect(outcome).toBe('written');
    expect((await readTask(admin, namespace, name))?.metadata.annotations?.['example.com/marked']).toBe('yes');
    // A patch that cannot apply whatever the object's version is refused, naming what it tried;
    // so is one whose tests all still hold.
    await expect(client.patch(fresh, [{ op: 'remove', path: '/metadata/labels/not-there' }])).rejects.toThrow(/remove \/metadata\/labels\/not-there\): 422/);
    const now = (await readTask(admin, namespace, name))!;
    await expect(client.patch(now, [{ op: 'test', path: '/metadata/name', value: name }, { op: 'remove', path: '/metadata/labels/not-there' }])).rejects.toThrow(/422/);
  });
});
