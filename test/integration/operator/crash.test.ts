import { mkdtemp, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CoreV1Api, CustomObjectsApi, type KubeConfig } from '@kubernetes/client-node';
import { AUDIT_HEADS, type SealedHead } from '../../../src/audit/heads.js';
import { ORPHANED_OUTBOX_MS } from '../../../src/audit/journal.js';
import type { AgentTask } from '../../../src/api/schema.js';
import { readAuditRecords, verifyChains, checkHead } from '../../../src/audit/verify.js';
import type { EnvironmentDescription } from '../../../src/controlplane/environment.js';
import type { FaultPoint } from '../../../src/runtime/faults.js';
import { examplePolicy, exampleTask } from '../../builders/examples.js';
import { brokerRequest, createAgentPod, createServiceAccount, podToken } from '../../env/agents.js';
import { createRole, iamClient, recordedCalls, revocationPolicy } from '../../env/aws.js';
import { describe, test, type expect as Expect } from '../../env/fixtures.js';
import { create } from '../../env/kube.js';
import { replicasOwnTheLease, startReplica, type Replica } from '../../env/operator-process.js';
import { condition, readTask, waitForTask } from './helpers.js';
import { PutRolePolicyCommand } from '@aws-sdk/client-iam';

// Each test runs the operator as a real process with one crash point armed (src/runtime/faults.ts),
// drives the step, sees the process die by SIGKILL there, starts a replica without the fault,
// ends the task if it has not ended, and checks what a user relies on: no credential the agent
// holds is unrecorded, the ended task is revoked broker-side and by an IAM deny on its marker,
// no finalizer is stuck, and the audit stream's chain has no break and ends at the head the
// task's status (or, once deleted, the sealed head) names.
//
// The emulator does not evaluate IAM conditions: the deny is asserted as written, keyed on the
// task's SourceIdentity marker, which every AssumeRole the emulator saw for the task carried.

const TASK = 'ticket-4711';

const serving = replicasOwnTheLease();

interface World {
  /** The test's own expect: the scenarios run side by side. */
  expect: typeof Expect;
  env: EnvironmentDescription;
  admin: KubeConfig;
  namespace: string;
  role: string;
  auditFile: string;
  token: string;
  /** Access key ids the agent was answered with. */
  received: string[];
  replica(faults?: FaultPoint[]): Promise<Replica>;
  ask(replica: Replica, method: string, path: string, body?: unknown): Promise<{ status: number; body: unknown }>;
  credentials(replica: Replica): Promise<{ status: number; body: unknown }>;
}

async function world(admin: KubeConfig, env: EnvironmentDescription, namespace: string, expect: typeof Expect): Promise<World> {
  const role = `crash-${namespace}`;
  const roleArn = await createRole(env, role);
  const policy = examplePolicy(namespace);
  // Direct delivery: the agent holds the STS session itself, so what it holds can be compared with what is recorded.
  policy.spec.aws = { allowedRoleArns: [roleArn], maxDuration: '1h', allowDirect: true };
  await create(admin, policy);
  await createServiceAccount(admin, namespace, 'support-agent');
  const task = exampleTask(namespace);
  task.spec.credentials![0]!.aws.roleArn = roleArn;
  task.spec.credentials![0]!.aws.delivery = 'Direct';
  await create(admin, task);
  const pod = await createAgentPod(admin, namespace, { name: 'agent-0', task: TASK, serviceAccount: 'support-agent' });
  const auditFile = path.join(await mkdtemp(path.join(os.tmpdir(), 'crash-')), 'audit.jsonl');
  const token = await podToken(admin, pod);
  let n = 0;
  const w: World = {
    expect,
    env,
    admin,
    namespace,
    role,
    auditFile,
    token,
    received: [],
    replica: (faults = []) => startReplica(env, { namespace, identity: `replica-${++n}`, tls: serving(), auditFile, faults }),
    ask: (replica, method, p, body) => brokerRequest({ ...env, brokerUrl: replica.url, brokerCA: serving().ca }, method, p, { token, body }).catch((err: unknown) => ({ status: 0, body: String(err) })),
    credentials: async (replica) => {
      const answer = await w.ask(replica, 'GET', '/v1/credentials');
      const key = (answer.body as { AccessKeyId?: string }).AccessKeyId;
      if (answer.status === 200 && key) w.received.push(key);
      return answer;
    },
  };
  return w;
}

/** Starts a replica that leads, waits for the task to be bound, and stops it (SIGTERM: it releases the lease). */
async function bound(w: World, prepare: (r: Replica) => Promise<void> = async () => {}): Promise<void> {
  const r = await w.replica();
  try {
    await waitForTask(w.admin, w.namespace, TASK, (t) => t.status?.state === 'Bound');
    await prepare(r);
  } finally {
    await r.stop();
  }
}

async function diesAt(w: World, replica: Replica, point: FaultPoint): Promise<void> {
  const { expect } = w;
  expect(await replica.exited).toEqual({ code: null, signal: 'SIGKILL' });
  expect(replica.stderr()).toContain(`fault point ${point}: SIGKILL`);
}

const complete = (w: World, r: Replica) => w.ask(r, 'POST', `/v1/tasks/${w.namespace}/${TASK}/complete`);
const deleteTask = (w: World) => w.admin.makeApiClient(CustomObjectsApi).deleteNamespacedCustomObject({ group: 'chainwarden.io', version: 'v1alpha1', namespace: w.namespace, plural: 'agenttasks', name: TASK });

/** What a user relies on once the task has ended, whichever replica finished the work. */
async function assertEndedCleanly(w: World, last: Replica, task: AgentTask, deleted: boolean): Promise<void> {
  const { expect } = w;
  const marker = `chainwarden-${task.metadata.uid ?? ''}`;
  let final: AgentTask | undefined;
  if (deleted) {
    // No finalizer stuck: the task goes.
    await expect.poll(() => readTask(w.admin, w.namespace, TASK), { timeout: 15_000, interval: 200 }).toBeUndefined();
  } else {
    final = await waitForTask(w.admin, w.namespace, TASK, (t) => condition(t, 'Revoked')?.status === 'True', 15_000);
    expect(final.status?.credentials?.awsDenyInPlace).toBe(true);
    // Every key the agent was answered with is recorded.
    const recorded = (final.status?.credentials?.sessions ?? []).map((s) => s.accessKeyId);
    for (const key of w.received) expect(recorded).toContain(key);
  }
  // Broker side: the agent gets nothing more.
  const refused = await w.ask(last, 'GET', '/v1/credentials');
  expect(refused.status).toBeGreaterThanOrEqual(400);
  expect(refused.status).toBeLessThan(500);
  // AWS side: the role denies the task's marker, which every session the emulator issued for the task carries.
  const deny = await revocationPolicy(w.env, w.role);
  const denied = (deny?.Statement ?? []).filter((s) => s.Effect === 'Deny').flatMap((s) => ([] as string[]).concat(s.Condition.StringEquals?.['aws:SourceIdentity'] ?? []));
  expect(denied).toContain(marker);
  const assumed = (await recordedCalls(w.env, 'AssumeRole')).filter((p) => p.get('RoleArn')?.endsWith(`:role/${w.role}`));
  for (const call of assumed) expect(call.get('SourceIdentity')).toBe(marker);
  // The audit chain: no break, it ends where the task's status (or its sealed head) says, and
  // it tells whatever ended the task. Records follow their head by a flush; those a killed
  // replica wrote the head of and never got to the file wait in the task's outbox until the
  // next leader (up to a lease later) takes them for orphaned and emits them.
  await expect.poll(() => auditProblems(w, task, deleted), { timeout: ORPHANED_OUTBOX_MS + 10_000, interval: 250 }).toEqual([]);
}

/** What is wrong with the task's audit stream against its head; empty when nothing is. */
async function auditProblems(w: World, task: AgentTask, deleted: boolean): Promise<string[]> {
  const { chains, breaks } = verifyChains(readAuditRecords(await readFile(w.auditFile, 'utf8').catch(() => '')));
  const problems = breaks.map((b) => `seq ${b.seq}: ${b.problem}`);
  const chain = chains.find((c) => c.taskUid === task.metadata.uid);
  const head = deleted ? await sealedHead(w, task) : (await readTask(w.admin, w.namespace, TASK))?.status?.audit;
  if (!head) problems.push('no audit head, in status or sealed');
  else {
    const off = checkHead(chain ?? { count: 0, head: '' }, head);
    if (off) problems.push(off);
  }
  const types = chain?.records.map((r) => r.type) ?? [];
  if (!deleted && !types.includes('revocation')) problems.push(`no revocation record (the stream has: ${types.join(', ')})`);
  return problems;
}

async function sealedHead(w: World, task: AgentTask): Promise<{ head: string; count: number } | undefined> {
  const cm = await w.admin.makeApiClient(CoreV1Api).readNamespacedConfigMap({ name: AUDIT_HEADS, namespace: w.namespace });
  const sealed = cm.data?.[task.metadata.uid ?? ''];
  return sealed === undefined ? undefined : (JSON.parse(sealed) as SealedHead);
}

interface Scenario {
  point: FaultPoint;
  /** Before the armed replica starts: what an unarmed one does. */
  before?: (w: World, r: Replica) => Promise<void>;
  /** Drives the armed replica into the step. */
  drive: (w: World, r: Replica) => Promise<void>;
  /** The task ends by deletion (the finalizer path) rather than completion. */
  deleted?: boolean;
  /** Driving the step ended the task (completed or deleted); otherwise the agent carries on after the restart, then completes. */
  ends?: boolean;
  /** The armed point would fire while binding the task: an unarmed replica binds it first. */
  bindFirst?: boolean;
}

const issue = async (w: World, r: Replica) => void (await w.credentials(r));
const issueFirst = async (w: World, r: Replica) => {
  w.expect((await w.credentials(r)).status).toBe(200);
};

const scenarios: Scenario[] = [
  { point: 'issue.after-sts', drive: issue },
  { point: 'issue.after-record', drive: issue },
  { point: 'journal.after-status', bindFirst: true, before: issueFirst, drive: async (w, r) => void (await w.ask(r, 'POST', '/v1/hops', { tool: 'tickets', action: 'read', resource: 'ticket/4711' })) },
  { point: 'revoke.after-deny', before: issueFirst, drive: async (w, r) => void (await complete(w, r)), ends: true },
  { point: 'revoke.after-status', before: issueFirst, drive: async (w, r) => void (await complete(w, r)), ends: true },
  { point: 'deny-policy.before-write', before: issueFirst, drive: async (w, r) => void (await complete(w, r)), ends: true },
  { point: 'finalize.after-deny', before: issueFirst, drive: async (w) => void (await deleteTask(w)), deleted: true, ends: true },
  { point: 'finalize.after-seal', before: issueFirst, drive: async (w) => void (await deleteTask(w)), deleted: true, ends: true },
];

describe.concurrent('a replica killed at every step of issuance, revocation and cleanup leaves nothing half done', () => {
  test.for(scenarios.map((s) => [s.point, s] as const))('killed at %s', async ([point, scenario], { admin, env, namespace, expect }) => {
    const w = await world(admin, env, namespace, expect);
    const replicas: Replica[] = [];
    try {
      if (scenario.bindFirst) await bound(w, scenario.before && ((r) => scenario.before!(w, r)));
      const armed = await w.replica([point]);
      replicas.push(armed);
      if (!scenario.bindFirst) {
        await waitForTask(admin, namespace, TASK, (t) => t.status?.state === 'Bound');
        await scenario.before?.(w, armed);
      }
      const task = (await readTask(admin, namespace, TASK))!;
      await scenario.drive(w, armed);
      await diesAt(w, armed, point);

      const next = await w.replica();
      replicas.push(next);
      if (!scenario.ends) {
        // The agent carries on: it fetches credentials (again), then the chain completes.
        expect((await w.credentials(next)).status).toBe(200);
        expect((await complete(w, next)).status).toBe(200);
      }
      await assertEndedCleanly(w, next, task, Boolean(scenario.deleted));
    } finally {
      await Promise.all(replicas.map((r) => r.stop()));
    }
  });

  test('killed at deny-policy.before-write while pruning: the restarted leader prunes, and keeps every deny still owed', async ({ admin, env, namespace, expect }) => {
    const w = await world(admin, env, namespace, expect);
    const replicas: Replica[] = [];
    try {
      await bound(w, async (r) => {
        await issueFirst(w, r);
        expect((await complete(w, r)).status).toBe(200);
        await waitForTask(admin, namespace, TASK, (t) => condition(t, 'Revoked')?.status === 'True');
      });
      const task = (await readTask(admin, namespace, TASK))!;
      // An entry long expired beside the task's deny: the next prune has something to write.
      const current = (await revocationPolicy(env, w.role))!;
      current.Statement.push({ Sid: 'ChainwardenRevoked600', Effect: 'Deny', Condition: { StringEquals: { 'aws:SourceIdentity': ['chainwarden-long-gone'] } } });
      await iamClient(env).send(new PutRolePolicyCommand({ RoleName: w.role, PolicyName: 'chainwarden-revocations', PolicyDocument: JSON.stringify({ Version: '2012-10-17', Statement: current.Statement.map((s) => ({ Action: '*', Resource: '*', ...s })) }) }));
      // A new leader prunes at once.
      const armed = await w.replica(['deny-policy.before-write']);
      replicas.push(armed);
      await diesAt(w, armed, 'deny-policy.before-write');
      const next = await w.replica();
      replicas.push(next);
      await expect.poll(async () => JSON.stringify(await revocationPolicy(env, w.role)), { timeout: 10_000, interval: 200 }).not.toContain('chainwarden-long-gone');
      await assertEndedCleanly(w, next, task, false);
    } finally {
      await Promise.all(replicas.map((r) => r.stop()));
    }
  });
});
