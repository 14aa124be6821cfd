import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { AdmissionregistrationV1Api, type KubeConfig } from '@kubernetes/client-node';
import { STATUS_CAPS } from '../../../src/api/task.js';
import { readAuditRecords } from '../../../src/audit/verify.js';
import { rawRequest } from '../../../src/kube/raw.js';
import type { examplePolicy} from '../../builders/examples.js';
import { exampleTask } from '../../builders/examples.js';
import { brokerRequest } from '../../env/agents.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { boundExampleAgent, pendingRefund } from '../../env/hops.js';
import { create } from '../../env/kube.js';
import { readTask, waitForTask } from '../operator/helpers.js';

const TASK = 'ticket-4711';

/** Room for many hops: the journal's caps, not the hop limits, are what these tests reach. */
const roomy = {
  policy: (p: ReturnType<typeof examplePolicy>) => {
    p.spec.onViolation = 'Deny';
    p.spec.limits = { maxHops: 1_000, maxDepth: 6 };
    p.spec.rules!.push({ name: 'any-probe', effect: 'Allow', tools: ['*'], actions: ['probe'] });
  },
  task: (t: ReturnType<typeof exampleTask>) => void (t.spec.limits = { maxHops: 1_000, maxDepth: 4 }),
};

async function auditOf(file: string | undefined, uid: string | undefined) {
  return readAuditRecords(await readFile(file ?? '', 'utf8')).filter((e) => e.record.taskUid === uid);
}

describe('the journal cannot be wedged', () => {
  test(`an agent calling more than ${STATUS_CAPS.systemsTouched} systems is denied the next new one, and status keeps being written`, async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace, roomy);
    for (let i = 0; i < STATUS_CAPS.systemsTouched; i++) {
      const answer = await agent.hop({ tool: `tool-${i}`, action: 'probe' });
      expect(answer.body.decision, `hop ${i}`).toBe('allow');
    }
    // One more system would make a status the API server refuses every time; the hop is denied instead.
    const over = await agent.hop({ tool: 'tool-one-too-many', action: 'probe' });
    expect(over.body).toMatchObject({ decision: 'deny', reasons: [{ rule: 'limit:systemsTouched' }] });
    const again = await agent.hop({ tool: 'tool-7', action: 'probe' });
    expect(again.body.decision).toBe('allow');
    const task = await waitForTask(admin, namespace, TASK, (t) => t.status?.chain?.hopCount === STATUS_CAPS.systemsTouched + 2);
    expect(task.status?.chain?.systemsTouched).toHaveLength(STATUS_CAPS.systemsTouched);
    expect(task.status?.hops).toMatchObject({ allowed: STATUS_CAPS.systemsTouched + 1, denied: 1 });
    // Every hop reached the audit stream, the last one included.
    await expect.poll(async () => (await auditOf(env.auditFile, task.metadata.uid)).filter((e) => e.record.type === 'hop_decided').length, { timeout: 10_000 }).toBe(STATUS_CAPS.systemsTouched + 2);
  });

  test(`the hop that would be waiting hop ${STATUS_CAPS.pendingHops + 1} is denied, not answered and left unrecorded`, async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace, roomy);
    for (let i = 0; i < STATUS_CAPS.pendingHops; i++) await pendingRefund(agent, String(i));
    const over = await agent.hop({ tool: 'payments', action: 'refund', resource: 'order/one-too-many', attributes: { amount: 42 } });
    expect(over.body).toMatchObject({ decision: 'deny', reasons: [{ rule: 'limit:pendingHops' }] });
    const task = await waitForTask(admin, namespace, TASK, (t) => t.status?.chain?.hopCount === STATUS_CAPS.pendingHops + 1);
    expect(task.status?.pendingHops).toHaveLength(STATUS_CAPS.pendingHops);
    expect(task.status?.hops).toMatchObject({ pending: STATUS_CAPS.pendingHops, denied: 1 });
    // The other hops still flow and are recorded.
    expect((await agent.hop({ tool: 'tickets', action: 'read', resource: 'ticket/1' })).body.decision).toBe('allow');
    await waitForTask(admin, namespace, TASK, (t) => t.status?.chain?.hopCount === STATUS_CAPS.pendingHops + 2);
  });

  test('a hop that would wait with text the API server stores six bytes a character (<, >, &) is denied by limit:pendingHops past 8 KiB as stored; the same length of plain text waits', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace, roomy);
    const refund = (c: string) => agent.hop({ tool: 'payments', action: 'refund', resource: `order/${c.repeat(1000)}`, intent: c.repeat(1000), attributes: { a: c.repeat(1000), b: c.repeat(1000), c: c.repeat(900) } });
    expect((await refund('x')).body.decision).toBe('pending_approval');
    // About 5,900 bytes of UTF-8, about 35 KB as stored: forty such waiting hops would be a status etcd refuses.
    const angled = await refund('<');
    expect(angled.body).toMatchObject({ decision: 'deny', reasons: [{ rule: 'limit:pendingHops' }] });
    expect(JSON.stringify(angled.body)).toMatch(/bytes of UTF-8 as the API server stores them \(<, > and & escaped in six\), over 8192/);
    const task = await waitForTask(admin, namespace, TASK, (t) => t.status?.chain?.hopCount === 2);
    expect(task.status?.pendingHops).toHaveLength(1);
  });

  test(`an agent with ${STATUS_CAPS.pendingHops} hops at their size limits waiting, sending more such hops faster than status writes carry them, is slowed, and every hop it was answered is counted and covered by the head`, async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace, {
      policy: (p) => {
        roomy.policy(p);
        p.spec.limits = { maxHops: 10_000, maxDepth: 6 };
      },
      task: (t) => void (t.spec.limits = { maxHops: 10_000, maxDepth: 4 }),
    });
    // Intent, resource and attributes near their limits, in random text that does not compress: about 6 KB a record.
    const noise = (n: number) => randomBytes(n).toString('base64').slice(0, n);
    const large = () => ({ intent: noise(1000), attributes: { a: noise(1000), b: noise(1000), c: noise(1000), d: noise(900) } });
    // The rest of the status at its largest too: every hop it may hold waiting for approval, each at its limits.
    const waiting = await Promise.all(Array.from({ length: STATUS_CAPS.pendingHops }, () => agent.hop({ tool: 'payments', action: 'refund', resource: `order/${noise(1000)}`, ...large() })));
    expect(waiting.map((w) => w.body.decision)).toEqual(Array.from({ length: STATUS_CAPS.pendingHops }, () => 'pending_approval'));
    // The chain's first probe adds a system, so it is answered once written; the burst's add nothing and are answered at once.
    expect((await agent.hop({ tool: 'tickets', action: 'probe', resource: 'ticket/0' })).body.decision).toBe('allow');
    // The largest status the API server stored while the burst ran, as read every 20 ms.
    let largest = 0;
    let bursting = true;
    const sizes = (async () => {
      while (bursting) {
        const read = await rawRequest(admin, 'GET', `/apis/chainwarden.io/v1alpha1/namespaces/${namespace}/agenttasks/${TASK}`);
        largest = Math.max(largest, JSON.stringify((read.body as { status?: unknown }).status ?? {}).length);
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const answers: Record<string, number> = {};
    let sent = 0;
    await Promise.all(
      Array.from({ length: 48 }, async () => {
        while (sent < 2_000) {
          sent += 1;
          const answer = await agent.hop({ tool: 'tickets', action: 'probe', resource: `ticket/${noise(1000)}`, ...large() });
          const outcome = `${answer.status} ${answer.body.decision ?? answer.body.error?.code ?? ''}`;
          answers[outcome] = (answers[outcome] ?? 0) + 1;
          // As the refusal asks: retry shortly.
          if (answer.status === 503) await new Promise((r) => setTimeout(r, 20));
        }
      }),
    );
    bursting = false;
    await sizes;
    // Statuses of the waiting hops (about 640 KB) and a write's worth of records that do not compress were stored: with this many
    // waiting, a write carries about 210 KiB of records, where 512 KiB would have come to a status over etcd's 1.5 MiB.
    expect(largest).toBeGreaterThan(800_000);
    expect(largest).toBeLessThan(1_572_864 - 256 * 1024);
    // Before, one status write carried a second's worth of records, 413 past the API server's 3 MiB: the task
    // was stopped on this replica (task_not_active), and a thousand answered hops were neither counted nor under the head.
    expect(Object.keys(answers).filter((k) => k !== '200 allow' && k !== '503 journal_behind')).toEqual([]);
    const allowed = (answers['200 allow'] ?? 0) + 1;
    expect(allowed).toBeGreaterThan(200);
    const uid = (await readTask(admin, namespace, TASK))?.metadata.uid;
    // A record reaches the stream once the head that covers it is in status.
    await expect.poll(async () => (await auditOf(env.auditFile, uid)).filter((e) => e.record.type === 'hop_decided').length, { timeout: 30_000 }).toBe(allowed + STATUS_CAPS.pendingHops);
    const task = await readTask(admin, namespace, TASK);
    expect(task?.status?.chain?.hopCount).toBe(allowed + STATUS_CAPS.pendingHops);
    expect(task?.status?.hops).toMatchObject({ allowed, pending: STATUS_CAPS.pendingHops });
    expect((await auditOf(env.auditFile, uid)).at(-1)?.record).toMatchObject({ seq: task?.status?.audit?.count, hash: task?.status?.audit?.head });
    // The task goes on.
    expect((await agent.hop({ tool: 'tickets', action: 'read', resource: 'ticket/1' })).body.decision).toBe('allow');
  });

  test('a violation whose status write the API server refuses is enforced at once, and its records still reach the audit stream', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace);
    const uid = (await readTask(admin, namespace, TASK))?.metadata.uid;
    // A cluster policy (a careless one, or an attacker's) that refuses any task status naming a violation.
    const refuse = await refuseViolations(admin, namespace);
    try {
      const violating = await agent.hop({ tool: 'payments', action: 'admin.freeze', resource: 'account/1' });
      expect(violating.body).toMatchObject({ decision: 'deny', reasons: [{ rule: 'never-admin-payments' }] });
      // Status cannot say Violated, yet this replica gives the task nothing more: no hop, no credential.
      const next = await agent.hop({ tool: 'tickets', action: 'read', resource: 'ticket/1' });
      expect(next).toMatchObject({ status: 403, body: { error: { code: 'task_not_active', message: expect.stringContaining('is Violated: hop') as string } } });
      const credentials = await brokerRequest(env, 'GET', '/v1/credentials/default', { token: agent.token });
      expect(credentials).toMatchObject({ status: 403, body: { error: { code: 'task_not_active' } } });
      // The journal gives the refused write up (after three tries over 5 s) instead of retrying it forever, and emits its records.
      await expect.poll(async () => (await auditOf(env.auditFile, uid)).map((e) => e.record.type), { timeout: 20_000 }).toContain('violation');
      const task = await readTask(admin, namespace, TASK);
      expect(task?.status?.violation).toBeUndefined();
      expect(task?.status?.state).toBe('Bound');
    } finally {
      await refuse.remove();
    }
  });
});

/** Installs a ValidatingAdmissionPolicy refusing AgentTask status with a violation in `namespace`, and waits until it bites. */
async function refuseViolations(admin: KubeConfig, namespace: string): Promise<{ remove(): Promise<void> }> {
  const api = admin.makeApiClient(AdmissionregistrationV1Api);
  const name = `refuse-violations-${namespace}`;
  await api.createValidatingAdmissionPolicy({
    body: {
      metadata: { name },
      spec: {
        failurePolicy: 'Fail',
        matchConstraints: { resourceRules: [{ apiGroups: ['chainwarden.io'], apiVersions: ['*'], operations: ['UPDATE'], resources: ['agenttasks/status'] }] },
        validations: [{ expression: '!has(object.status) || !has(object.status.violation)', message: 'violations may not be recorded in this namespace', reason: 'Invalid' }],
      },
    },
  });
  await api.createValidatingAdmissionPolicyBinding({
    body: { metadata: { name }, spec: { policyName: name, validationActions: ['Deny'], matchResources: { namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': namespace } } } } },
  });
  // Policies take effect a moment after they are created: probe with a task of our own until a violation is refused.
  const probe = exampleTask(namespace);
  probe.metadata.name = 'probe';
  const created = await create(admin, probe);
  const path = `/apis/chainwarden.io/v1alpha1/namespaces/${namespace}/agenttasks/probe/status?fieldManager=probe&force=true`;
  const body = { apiVersion: 'chainwarden.io/v1alpha1', kind: 'AgentTask', metadata: { name: 'probe', namespace: created.metadata.namespace }, status: { violation: { hopId: 'h1_x', rule: 'probe', message: 'probe' } } };
  await expect.poll(async () => (await rawRequest(admin, 'PATCH', path, body, 'application/apply-patch+yaml')).status, { timeout: 15_000, interval: 200 }).toBe(422);
  return {
    remove: async () => {
      await api.deleteValidatingAdmissionPolicyBinding({ name });
      await api.deleteValidatingAdmissionPolicy({ name });
    },
  };
}
