import { describe, expect, it } from 'vitest';
import type { AgentPolicy, AgentTask } from '../../../src/api/schema.js';
import type { AgentPrincipal } from '../../../src/broker/auth.js';
import { TaskJournal } from '../../../src/audit/journal.js';
import type { AuditRecord } from '../../../src/audit/record.js';
import { CredentialBroker, type CredentialBrokerDeps } from '../../../src/credentials/broker.js';
import { PermittedRoles } from '../../../src/credentials/permitted.js';
import { InMemorySts } from '../../../src/credentials/sts.js';
import { InMemoryKeyStore, KeyRing } from '../../../src/identity/keyring.js';
import { SvidIssuer } from '../../../src/identity/svid.js';
import { silentLogger } from '../../../src/log.js';
import { TaskClientTwin } from '../../builders/task-client-twin.js';

const now = Date.parse('2026-11-21T10:00:00Z');
const clock = { now: () => now };
const task: AgentTask = {
  apiVersion: 'chainwarden.io/v1alpha1',
  kind: 'AgentTask',
  metadata: { name: 't', namespace: 'ns', uid: '6f1c0d8e-0000-0000-0000-000000000001', creationTimestamp: new Date(now - 60_000).toISOString(), generation: 1 },
  spec: { serviceAccountName: 'sa', policyRef: { name: 'p' }, ttl: '30m', credentials: [{ name: 'default', aws: { roleArn: 'arn:aws:iam::123456789012:role/agent' } }] },
  status: { state: 'Bound', spiffeID: 'spiffe://cluster.local/ns/ns/sa/sa/task/t' },
};
const policy: AgentPolicy = { apiVersion: 'chainwarden.io/v1alpha1', kind: 'AgentPolicy', metadata: { name: 'p' }, spec: { aws: { allowedRoleArns: ['arn:aws:iam::123456789012:role/*'], maxDuration: '1h' } } };
const who: AgentPrincipal = { namespace: 'ns', podName: 'pod', podUid: 'u', serviceAccount: 'sa', task, spiffeId: task.status?.spiffeID ?? '' };

const stored = (writer: TaskClientTwin) => writer.task as AgentTask;

/** The task's journal over the twin, as the operator builds it; `emitted` is the audit stream. */
function journalOf(writer: TaskClientTwin, cached?: () => AgentTask | undefined, at: { now: () => number } = clock) {
  const emitted: AuditRecord[] = [];
  const journal = new TaskJournal({ writer: writer.statusWriter('journal'), emit: (r) => emitted.push(r), log: silentLogger(), cached: cached && (() => cached()), clock: at });
  return { journal, emitted };
}

async function setup(extra: Partial<CredentialBrokerDeps> = {}) {
  const sts = new InMemorySts(clock.now);
  const writer = new TaskClientTwin(task);
  const ring = new KeyRing(new InMemoryKeyStore(), clock);
  await ring.refresh();
  const { journal, emitted } = journalOf(writer);
  const broker = new CredentialBroker({ sts, status: writer.statusWriter('broker'), events: writer, issuer: new SvidIssuer(ring, 'https://issuer', clock), policy: () => policy, clock, log: silentLogger(), trustDomain: 'cluster.local', replica: 'r1', journal, ...extra });
  return { sts, writer, broker, journal, emitted, stored: () => writer.task as AgentTask };
}

/** As `setup`, on a clock the test moves, with the jitter fixed at `random`. */
async function setupWithClock(random: number) {
  let at = now;
  const moving = { now: () => at };
  const sts = new InMemorySts(moving.now);
  const writer = new TaskClientTwin(task);
  const ring = new KeyRing(new InMemoryKeyStore(), moving);
  await ring.refresh();
  const { journal } = journalOf(writer, undefined, moving);
  const broker = new CredentialBroker({ sts, status: writer.statusWriter('broker'), events: writer, issuer: new SvidIssuer(ring, 'https://issuer', moving), policy: () => policy, clock: moving, log: silentLogger(), trustDomain: 'cluster.local', replica: 'r1', random: () => random, journal });
  return { sts, writer, broker, stored: () => writer.task as AgentTask, advance: (ms: number) => (at += ms) };
}

describe('CredentialBroker', () => {
  it('records the session in status before handing it out, and serves the cache after', async () => {
    const { sts, broker, stored } = await setup();
    const session = await broker.credentials(who, 'default');
    expect(stored().status?.credentials?.sessions).toEqual([
      expect.objectContaining({ accessKeyId: session.accessKeyId, issuedBy: 'r1', expiration: session.expiration.toISOString() }),
    ]);
    expect(JSON.stringify(stored().status)).not.toContain(session.secretAccessKey);
    expect(await broker.credentials(who, 'default')).toBe(session);
    expect(sts.requests).toHaveLength(1);
    // Planned from the deadline (29 minutes left), within the policy's hour.
    expect(sts.requests[0]?.durationSeconds).toBe(29 * 60);
  });

  it('records the session on the cached task without reading it first; a stale copy costs a retry, not the record', async () => {
    const sts = new InMemorySts(clock.now);
    const writer = new TaskClientTwin(task);
    let reads = 0;
    const read = writer.read.bind(writer);
    writer.read = () => (reads++, read());
    const ring = new KeyRing(new InMemoryKeyStore(), clock);
    await ring.refresh();
    const cache = structuredClone(writer.task as AgentTask);
    const { journal } = journalOf(writer, () => cache);
    const broker = new CredentialBroker({ sts, status: writer.statusWriter('broker'), events: writer, issuer: new SvidIssuer(ring, 'https://issuer', clock), policy: () => policy, clock, log: silentLogger(), trustDomain: 'cluster.local', replica: 'r1', journal });
    const first = await broker.credentials(who, 'default');
    expect(reads).toBe(0);
    // Another writer moved the task on; this replica's cache has not seen it yet.
    await writer.statusWriter('controller').update('ns', 't', (t) => ({ ...t.status, deadline: '2026-11-21T10:29:00Z' }));
    broker.drop(task.metadata.uid ?? '');
    reads = 0;
    const second = await broker.credentials(who, 'default');
    expect(reads).toBe(1);
    expect((writer.task as AgentTask).status?.credentials?.sessions?.map((s) => s.accessKeyId)).toEqual([first.accessKeyId, second.accessKeyId]);
    expect((writer.task as AgentTask).status?.deadline).toBe('2026-11-21T10:29:00Z');
  });

  it("refuses a role the cluster does not permit the task's namespace, whatever its policy allows: no STS call, and the condition says what is permitted and who sets it", async () => {
    // The policy allows every role of the account; the cluster permits the namespace only its own.
    const { sts, broker, stored } = await setup({ permittedRoles: new PermittedRoles(['arn:aws:iam::123456789012:role/{namespace}-*']) });
    await expect(broker.credentials(who, 'default')).rejects.toMatchObject({ status: 403, code: 'role_not_allowed' });
    expect(sts.requests).toHaveLength(0);
    const issued = stored().status?.conditions?.find((c) => c.type === 'CredentialsIssued');
    expect(issued).toMatchObject({ status: 'False', reason: 'RoleNotAllowed' });
    expect(issued?.message).toMatch(/arn:aws:iam::123456789012:role\/agent is not among the roles this cluster permits tasks of namespace ns \(arn:aws:iam::123456789012:role\/ns-\*\).*--permitted-role-arn/);
    // The same task in a namespace whose roles match: issued.
    const own = await setup({ permittedRoles: new PermittedRoles(['arn:aws:iam::123456789012:role/{namespace}-*', 'arn:aws:iam::123456789012:role/agent']) });
    await expect(own.broker.credentials(who, 'default')).resolves.toMatchObject({ accessKeyId: expect.any(String) as string });
  });

  it('mints one session for concurrent first fetches', async () => {
    const { sts, broker } = await setup();
    await Promise.all([broker.credentials(who, 'default'), broker.credentials(who, 'default'), broker.credentials(who, 'default')]);
    expect(sts.requests).toHaveLength(1);
  });

  it('turns an STS refusal into a 403, a task condition and a Warning Event; never a fallback', async () => {
    const { sts, writer, broker, stored } = await setup();
    sts.failNext(Object.assign(new Error('not authorized to perform sts:AssumeRole'), { name: 'AccessDenied' }));
    await expect(broker.credentials(who, 'default')).rejects.toMatchObject({ status: 403, code: 'role_not_assumable' });
    const issued = stored().status?.conditions?.find((c) => c.type === 'CredentialsIssued');
    expect(issued).toMatchObject({ status: 'False', reason: 'AssumeRoleFailed' });
    expect(issued?.message).toMatch(/trust policy/);
    expect(writer.events[0]).toMatchObject({ type: 'Warning', reason: 'AssumeRoleFailed' });
    expect(sts.requests).toHaveLength(1);
  });

  it('never shows the agent or the task the operator\'s own role or account from an STS refusal', async () => {
    const { sts, broker, stored } = await setup();
    sts.failNext(Object.assign(new Error('User: arn:aws:sts::999988887777:assumed-role/chainwarden-operator/i-0abc is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::123456789012:role/agent (account 999988887777)'), { name: 'AccessDenied' }));
    const refused = (await broker.credentials(who, 'default').catch((e: unknown) => e)) as Error;
    const shown = [refused.message, JSON.stringify(stored().status)].join('\n');
    expect(shown).not.toContain('999988887777');
    expect(shown).not.toContain('chainwarden-operator');
    expect(refused.message).toContain('arn:aws:iam::123456789012:role/agent');
    expect(refused.message).toContain('User: <operator identity> is not authorized');
  });

  it('answers throttling that outlasted the retries with a 503 and a condition', async () => {
    const { sts, broker, stored } = await setup();
    sts.failNext(Object.assign(new Error('Rate exceeded'), { name: 'Throttling' }));
    await expect(broker.credentials(who, 'default')).rejects.toMatchObject({ status: 503, code: 'sts_unavailable' });
    expect(stored().status?.conditions?.find((c) => c.type === 'CredentialsIssued')?.reason).toBe('StsUnavailable');
  });

  it('does not hand out a session when the task ended while STS answered', async () => {
    const { writer, broker } = await setup();
    await writer.statusWriter('broker').update('ns', 't', (t) => ({ ...t.status, completion: { pod: 'pod', at: new Date(now).toISOString() } }));
    await expect(broker.credentials(who, 'default')).rejects.toMatchObject({ status: 403, code: 'task_not_active' });
  });

  it('records the session and its audit record in one write, with what the journal had queued for the task', async () => {
    const { writer, broker, journal, emitted } = await setup();
    // The controller's record of the binding, queued a moment before the agent asked.
    journal.record(task, { events: [{ type: 'identity_bound', at: new Date(now).toISOString(), data: { pods: [{ name: 'pod', uid: 'u' }] } }] });
    const session = await broker.credentials(who, 'default');
    expect(writer.writes.map((w) => w.owner)).toEqual(['journal']);
    expect(emitted.map((r) => r.type)).toEqual(['identity_bound', 'credential_issued']);
    expect(emitted[1]?.data).toMatchObject({ accessKeyId: session.accessKeyId, credential: 'default', replica: 'r1' });
    expect(stored(writer).status?.audit).toMatchObject({ count: 2, head: emitted[1]?.hash });
    expect(stored(writer).status?.credentials?.sessions?.map((s) => s.accessKeyId)).toEqual([session.accessKeyId]);
    expect(stored(writer).status?.conditions?.find((c) => c.type === 'CredentialsIssued')).toMatchObject({ status: 'True', reason: 'Issued' });
    expect(writer.task?.status?.state).toBe('Bound');
  });

  it('names the credentials a task has when asked for another', async () => {
    const { broker } = await setup();
    await expect(broker.credentials(who, 's3')).rejects.toThrow(/no credential named "s3" \(it has: default\)/);
  });

  it('forgets a task\'s sessions when it is dropped', async () => {
    const { sts, broker } = await setup();
    await broker.credentials(who, 'default');
    broker.drop(task.metadata.uid ?? '');
    expect(broker.cachedSessions).toBe(0);
    await broker.credentials(who, 'default');
    expect(sts.requests).toHaveLength(2);
  });

  it('after STS failed, leaves it alone for a jittered wait that grows with each failure, answering fetches meanwhile with the same 503; a success starts afresh', async () => {
    const { sts, writer, broker, advance } = await setupWithClock(0);
    const unavailable = () => sts.failNext(Object.assign(new Error('Service unavailable'), { name: 'ServiceUnavailable' }));

    unavailable();
    await expect(broker.credentials(who, 'default')).rejects.toMatchObject({ status: 503, code: 'sts_unavailable' });
    advance(999);
    await expect(broker.credentials(who, 'default')).rejects.toMatchObject({ status: 503, code: 'sts_unavailable' });
    expect(sts.requests).toHaveLength(1);

    advance(1);
    unavailable();
    await expect(broker.credentials(who, 'default')).rejects.toMatchObject({ code: 'sts_unavailable' });
    expect(sts.requests).toHaveLength(2);
    // The second failure in a row: twice as long.
    advance(1_999);
    await expect(broker.credentials(who, 'default')).rejects.toMatchObject({ code: 'sts_unavailable' });
    expect(sts.requests).toHaveLength(2);

    advance(1);
    const session = await broker.credentials(who, 'default');
    expect(sts.requests).toHaveLength(3);
    expect(stored(writer).status?.conditions?.find((c) => c.type === 'CredentialsIssued')?.reason).toBe('Issued');
    expect(session.accessKeyId).toMatch(/^ASIATWIN/);
  });

  it('answers an agent asking in a loop for a refused credential from memory: two STS calls and one Event, not one of each a request; asked again after the wait, STS is', async () => {
    const { sts, writer, broker, advance } = await setupWithClock(0.5);
    const denied = () => Object.assign(new Error('not authorized to perform sts:AssumeRole'), { name: 'AccessDenied' });
    for (let i = 0; i < 10; i++) sts.failNext(denied());
    for (let i = 0; i < 50; i++) await expect(broker.credentials(who, 'default')).rejects.toMatchObject({ status: 403, code: 'role_not_assumable' });
    // Before, each of the 50 was an STS call, a read of the task and a new Event.
    expect(sts.requests).toHaveLength(2);
    expect(writer.events).toHaveLength(1);
    advance(5_000);
    await expect(broker.credentials(who, 'default')).rejects.toMatchObject({ code: 'role_not_assumable' });
    expect(sts.requests).toHaveLength(3);
    expect(writer.events).toHaveLength(1);
  });

  it('does not hold back after a refusal STS meant: a fixed trust policy is tried at once', async () => {
    const { sts, broker } = await setup();
    sts.failNext(Object.assign(new Error('not authorized to perform sts:AssumeRole'), { name: 'AccessDenied' }));
    await expect(broker.credentials(who, 'default')).rejects.toMatchObject({ code: 'role_not_assumable' });
    await broker.credentials(who, 'default');
    expect(sts.requests).toHaveLength(2);
  });
});
