import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CoreV1Api, CustomObjectsApi } from '@kubernetes/client-node';
import type { AgentPolicy } from '../../../src/api/schema.js';
import { readAuditRecords } from '../../../src/audit/verify.js';
import { examplePolicy, exampleTask } from '../../builders/examples.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { brokerRequest, createAgentPod, podToken } from '../../env/agents.js';
import { boundExampleAgent } from '../../env/hops.js';
import { create, rejection } from '../../env/kube.js';
import { rawRequest } from '../../../src/kube/raw.js';
import { readTask, waitForTask } from '../operator/helpers.js';

const bin = path.resolve(import.meta.dirname, '../../../bin/chainwarden.js');
/** At the schema's limit of 8 `*`; exponential for a backtracking RegExp against a long run of `a`s. */
const PATHOLOGICAL = `${'*a'.repeat(7)}*b`;
const ROLE_PREFIX = 'arn:aws:iam::111122223333:role/';
// eslint-disable-next-line no-control-regex -- finding control characters is the point
const FORBIDDEN = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]/;

const otherPolicy = (namespace: string, edit: (p: AgentPolicy) => void) => {
  const p = examplePolicy(namespace);
  p.metadata.name = 'hostile-policy';
  edit(p);
  return p;
};

describe('globs cannot stall the operator', () => {
  test('the API server refuses a glob with more than 8 wildcards, naming the field and the fix', async ({ admin, namespace }) => {
    const tooMany = `${ROLE_PREFIX}${'*a'.repeat(11)}*b`;
    const role = await rejection(admin, otherPolicy(namespace, (p) => (p.spec.aws = { allowedRoleArns: [tooMany] })));
    expect(role).toContain('spec.aws.allowedRoleArns[0]');
    expect(role).toMatch(/may hold at most 8 wildcards \(\*\); name the values, or split the pattern/);
    const resource = await rejection(admin, otherPolicy(namespace, (p) => (p.spec.rules![0]!.resources = [`${'*a'.repeat(9)}`])));
    expect(resource).toContain('spec.rules[0].resources[0]');
    expect(resource).toMatch(/may hold at most 8 wildcards/);
  });

  test('an admitted pathological glob decides a long role ARN and a long resource in milliseconds', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace, {
      policy: (p) => {
        p.spec.onViolation = 'Deny';
        p.spec.aws!.allowedRoleArns!.push(`${ROLE_PREFIX}${PATHOLOGICAL}`);
        p.spec.rules!.push({ name: 'pathological', effect: 'Allow', tools: ['tickets'], actions: ['read'], resources: [PATHOLOGICAL] });
      },
    });
    // The admission webhook matches the task's role against both globs.
    const task = exampleTask(namespace);
    task.metadata.name = 'long-role';
    task.spec.credentials![0]!.aws.roleArn = `${ROLE_PREFIX}${'a'.repeat(500)}`;
    let started = performance.now();
    expect(await rejection(admin, task)).toMatch(/spec.credentials\[0\].aws.roleArn: .* is not allowed by AgentPolicy support-agent/);
    expect(performance.now() - started).toBeLessThan(2_000);

    // The broker evaluates the rule's glob against a resource the agent chose.
    started = performance.now();
    const miss = await agent.hop({ tool: 'tickets', action: 'read', resource: 'a'.repeat(1024) });
    expect(performance.now() - started).toBeLessThan(1_000);
    expect(miss.body).toMatchObject({ decision: 'deny' });
    const hit = await agent.hop({ tool: 'tickets', action: 'read', resource: `${'a'.repeat(1023)}b` });
    expect(hit.body).toMatchObject({ decision: 'allow', reasons: [{ rule: 'pathological' }] });
  });
});

describe('policy evaluation fails closed', () => {
  test('a forbid that errors at evaluation denies the hop with evaluation-error instead of being skipped', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace, {
      policy: (p) => {
        p.spec.onViolation = 'Deny';
        // "Nothing below depth 1", written so that depth 2 overflows a Cedar Long.
        p.spec.cedar = `${p.spec.cedar ?? ''}@id("only-top-level")\nforbid (principal, action, resource) when { context.depth * 4611686018427387904 > 4611686018427387904 };\n`;
      },
    });
    const top = await agent.hop({ tool: 'tickets', action: 'read', resource: 'ticket/1' });
    expect(top.body.decision).toBe('allow');
    const child = await agent.hop({ tool: 'tickets', action: 'read', resource: 'ticket/2', parentHop: top.body.hopId });
    expect(child.body).toMatchObject({ decision: 'deny', depth: 2, reasons: [{ rule: 'evaluation-error', effect: 'Deny' }] });
    expect(JSON.stringify(child.body.reasons)).toMatch(/only-top-level: .*overflow/);
  });

  test.for([
    ['two raw policies with one @id', '@id("x")\nforbid (principal, action, resource) when { context.depth > 3 };\n@id("x")\npermit (principal, action, resource);', /policy 2 has @id\("x"\), which policy 1 already has; give each raw Cedar policy its own @id/],
    ['a raw @id that is a rule name', '@id("read-and-comment")\nforbid (principal, action, resource);', /policy 1 has @id\("read-and-comment"\), which is the name of a rule in spec.rules; rename the @id or the rule/],
  ] as const)('admission refuses %s, naming the field and the fix', async ([, cedar, message], { admin, namespace }) => {
    const refused = await rejection(admin, otherPolicy(namespace, (p) => (p.spec.cedar = cedar)));
    expect(refused).toContain('spec.cedar');
    expect(refused).toMatch(message);
  });
});

/**
 * A hop request whose headers and first bytes go now and whose body ends when `finish` is called:
 * the broker authenticates it at once and decides it once the body is whole.
 */
async function heldHop(env: { brokerUrl?: string; brokerCA?: string }, token: string, hop: Record<string, unknown>) {
  const body = JSON.stringify(hop);
  const https = await import('node:https');
  const ca = await readFile(env.brokerCA ?? '', 'utf8');
  let answer: { status: number; body: Record<string, unknown> } | undefined;
  const req = https.request(new URL('/v1/hops', env.brokerUrl), { method: 'POST', ca, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
    let text = '';
    res.on('data', (c: Buffer) => (text += c.toString()));
    res.on('end', () => (answer = { status: res.statusCode ?? 0, body: JSON.parse(text) as Record<string, unknown> }));
  });
  req.on('error', () => undefined);
  req.write(body.slice(0, 10));
  await new Promise((r) => setTimeout(r, 300));
  return {
    answered: () => answer !== undefined,
    finish: async () => {
      req.end(body.slice(10));
      await expect.poll(() => answer, { timeout: 10_000 }).toBeDefined();
      return answer as { status: number; body: Record<string, unknown> };
    },
  };
}

describe('a hop is decided on the task as it stands when it is decided, not when it was authenticated', () => {
  test('an email whose body is held back while the agent reads PII is decided with that read in view, and denied', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace, { policy: (p) => void (p.spec.onViolation = 'Deny') });
    const email = { tool: 'email', action: 'send', resource: 'customer' };
    expect((await agent.hop(email)).body).toMatchObject({ decision: 'allow', reasons: [{ rule: 'reply-by-email' }] });
    // The attacker opens a second email and sends its headers and part of its body: the broker
    // authenticates it now, while the chain holds the email and no customer data.
    const held = await heldHop(env, agent.token, email);
    // Then it reads customer data, and is answered once the read is in the chain.
    expect((await agent.hop({ tool: 'tickets', action: 'read', resource: 'ticket/1' })).body.decision).toBe('allow');
    // And one more read, which adds nothing new to the chain: once it is written and the watch has
    // shown it, the replica holds no record of its own writes that is newer than the watch's copy.
    const again = (await agent.hop({ tool: 'tickets', action: 'read', resource: 'ticket/2' })).body;
    expect(again.decision).toBe('allow');
    await expect.poll(async () => (await readTask(admin, namespace, 'ticket-4711'))?.status?.recentHops?.some((h) => h.hopId === again.hopId), { timeout: 10_000 }).toBe(true);
    // (A change of the task that writes no chain makes sure the watch has shown it since.)
    const poked = await rawRequest(admin, 'PATCH', `/apis/chainwarden.io/v1alpha1/namespaces/${namespace}/agenttasks/ticket-4711`, { metadata: { annotations: { 'example.com/poked': 'yes' } } }, 'application/merge-patch+json');
    expect(poked.status).toBe(200);
    await new Promise((r) => setTimeout(r, 500));
    expect(held.answered()).toBe(false);
    const denied = await held.finish();
    expect(denied.body).toMatchObject({ decision: 'deny', reasons: [{ rule: 'no-exfiltration', effect: 'Deny' }] });
    // And the task's status says so, for the on-call person reading it.
    await expect.poll(async () => (await readTask(admin, namespace, 'ticket-4711'))?.status?.recentHops?.find((h) => h.hopId === denied.body.hopId), { timeout: 10_000 }).toMatchObject({ decision: 'deny', rules: ['no-exfiltration'] });
  });

  test('a read whose body is held back until the task has been revoked for a violation is refused, and not in the chain', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace);
    const held = await heldHop(env, agent.token, { tool: 'tickets', action: 'read', resource: 'ticket/held' });
    const broken = await agent.hop({ tool: 'payments', action: 'admin.freeze', resource: 'account/1' });
    expect(broken.body).toMatchObject({ decision: 'deny', reasons: [{ rule: 'never-admin-payments' }] });
    // The task is revoked; the request authenticated before it is not decided after it.
    const refused = await held.finish();
    expect(refused).toMatchObject({ status: 403, body: { error: { code: 'task_not_active' } } });
    expect(JSON.stringify(refused.body)).toContain('never-admin-payments');
    await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.state === 'Violated');
    expect(JSON.stringify((await readTask(admin, namespace, 'ticket-4711'))?.status?.recentHops)).not.toContain('ticket/held');
  });
});

describe('hop ids', () => {
  test('an alias of a real hop id (zero-padded depth, other case) is refused as parentHop', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace);
    const parent = (await agent.hop({ tool: 'tickets', action: 'read', resource: 'ticket/1' })).body.hopId;
    expect(parent).toMatch(/^h1_/);
    for (const alias of [parent.replace(/^h1_/, 'h01_'), parent.replace(/^h1_/, 'h001_'), parent.replace(/^h/, 'H')]) {
      const answer = await agent.hop({ tool: 'tickets', action: 'comment', resource: 'ticket/1', parentHop: alias });
      expect(answer, alias).toMatchObject({ status: 400, body: { error: { code: 'invalid_hop', field: 'parentHop' } } });
    }
    const real = await agent.hop({ tool: 'tickets', action: 'comment', resource: 'ticket/1', parentHop: parent });
    expect(real.body).toMatchObject({ decision: 'allow', depth: 2 });
  });
});

describe('trace output', () => {
  test('hostile hop strings reach the audit stream but not the terminal; replicas\' streams verify in any order', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace, { policy: (p) => void (p.spec.onViolation = 'Deny') });
    const hostile = 'ticket/1\u001b[2K\r\u001b[1A└─ 00:00:00 tickets read ticket/9 → allow\nchain verified\u202egpj.exe\u2066\u0085';
    const parent = await agent.hop({ tool: 'tickets', action: 'read', resource: hostile, intent: hostile });
    expect(parent.body.decision).toBe('allow');
    await agent.hop({ tool: 'tickets', action: 'comment', resource: 'ticket/1', parentHop: parent.body.hopId, intent: '\u202eevil' });

    const uid = (await readTask(admin, namespace, 'ticket-4711'))?.metadata.uid;
    const dir = await mkdtemp(path.join(os.tmpdir(), 'trace-'));
    const [a, b] = [path.join(dir, 'replica-a.jsonl'), path.join(dir, 'replica-b.jsonl')];
    const run = async () => {
      const mine = readAuditRecords(await readFile(env.auditFile ?? '', 'utf8')).filter((e) => e.record.taskUid === uid);
      const lines = mine.map((e) => JSON.stringify({ audit: e.record })).reverse();
      // Two "replicas", each holding every other record, newest first.
      await writeFile(a, lines.filter((_, i) => i % 2 === 0).join('\n'));
      await writeFile(b, lines.filter((_, i) => i % 2 === 1).join('\n'));
      return spawnSync(process.execPath, [bin, 'trace', `${namespace}/ticket-4711`, b, a, '--kubeconfig', env.kubeconfig], { encoding: 'utf8' });
    };
    // The stream catches up with the head in status within a journal flush.
    await expect.poll(async () => (await run()).status, { timeout: 10_000 }).toBe(0);
    const trace = await run();
    expect(trace.stdout).toMatch(/chain verified: \d+ records/);
    expect(trace.stdout.split('\n').filter((line) => FORBIDDEN.test(line))).toEqual([]);
    // Quoted, its escapes shown as written, and cut: what the agent wrote cannot read as the line's decision.
    expect(trace.stdout).toContain('tickets read "ticket/1\\\\u001b[2K\\\\r\\\\u001b[1A└─ 00:00:00 tickets read ticket/9 → allow\\\\nchain verified\\\\u202egpj.ex"…(+3) → allow');
    // The child stays under its parent, whichever file held which record.
    expect(trace.stdout).toMatch(/\n {3}└─ .*tickets comment ticket\/1 → allow/);
    expect(trace.stdout.split('\n').filter((line) => line.startsWith('chain verified'))).toHaveLength(1);

    const verify = spawnSync(process.execPath, [bin, 'audit', 'verify', a, b], { encoding: 'utf8' });
    expect(verify.status, verify.stdout).toBe(0);
  });
});

describe('audit heads outlive their tasks', () => {
  test('a deleted task\'s stream is still checked against its final head, so truncating it shows', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace);
    for (const ticket of ['1', '2', '3']) expect((await agent.hop({ tool: 'tickets', action: 'read', resource: `ticket/${ticket}` })).body.decision).toBe('allow');
    const uid = (await readTask(admin, namespace, 'ticket-4711'))?.metadata.uid;
    await admin.makeApiClient(CustomObjectsApi).deleteNamespacedCustomObject({ group: 'chainwarden.io', version: 'v1alpha1', namespace, plural: 'agenttasks', name: 'ticket-4711' });
    await expect.poll(async () => readTask(admin, namespace, 'ticket-4711'), { timeout: 15_000 }).toBeUndefined();

    // The head is kept where tenants cannot reach it, keyed by the task's uid.
    const heads = await admin.makeApiClient(CoreV1Api).readNamespacedConfigMap({ name: 'chainwarden-audit-heads', namespace: 'chainwarden-system' });
    const sealed = JSON.parse(heads.data?.[uid ?? ''] ?? '{}') as { task?: string; head?: string; count?: number };
    expect(sealed).toMatchObject({ task: `${namespace}/ticket-4711`, count: expect.any(Number) as number });

    const dir = await mkdtemp(path.join(os.tmpdir(), 'sealed-'));
    const stream = path.join(dir, 'audit.jsonl');
    const mine = async () => readAuditRecords(await readFile(env.auditFile ?? '', 'utf8')).filter((e) => e.record.taskUid === uid);
    await expect.poll(async () => (await mine()).length, { timeout: 10_000 }).toBe(sealed.count);
    const lines = (await mine()).map((e) => JSON.stringify({ audit: e.record }));
    const trace = (file: string) => spawnSync(process.execPath, [bin, 'trace', `${namespace}/ticket-4711`, file, '--kubeconfig', env.kubeconfig], { encoding: 'utf8' });
    await writeFile(stream, lines.join('\n'));
    const intact = trace(stream);
    expect(intact.stdout).toMatch(/chain verified: \d+ records, head .* matches the head sealed when the task was deleted \(chainwarden-system\/chainwarden-audit-heads\)/);
    expect(intact.status).toBe(0);
    // The last records dropped: without the sealed head this stream would verify.
    await writeFile(stream, lines.slice(0, -2).join('\n'));
    const truncated = trace(stream);
    expect(truncated.status).toBe(1);
    expect(truncated.stdout).toMatch(/CHAIN NOT VERIFIED:\n {2}- the stream ends at record \d+ but the head sealed when the task was deleted .* counts \d+: records are missing \(truncated\)/);
  });

  test('a task deleted and created again under its name: trace checks the earlier chain against its sealed head too, so cutting it shows', async ({ admin, env, namespace }) => {
    const objects = admin.makeApiClient(CustomObjectsApi);
    const first = await boundExampleAgent(admin, env, namespace);
    for (const ticket of ['1', '2', '3']) expect((await first.hop({ tool: 'tickets', action: 'read', resource: `ticket/${ticket}` })).body.decision).toBe('allow');
    const earlier = (await readTask(admin, namespace, 'ticket-4711'))?.metadata.uid ?? '';
    await objects.deleteNamespacedCustomObject({ group: 'chainwarden.io', version: 'v1alpha1', namespace, plural: 'agenttasks', name: 'ticket-4711' });
    await expect.poll(async () => readTask(admin, namespace, 'ticket-4711'), { timeout: 15_000 }).toBeUndefined();
    const sealedCount = async () => (JSON.parse((await admin.makeApiClient(CoreV1Api).readNamespacedConfigMap({ name: 'chainwarden-audit-heads', namespace: 'chainwarden-system' })).data?.[earlier] ?? '{}') as { count?: number }).count;
    await expect.poll(sealedCount, { timeout: 10_000 }).toEqual(expect.any(Number));

    // The same name again: a re-run, with a pod of its own.
    await create(admin, exampleTask(namespace));
    const pod = await createAgentPod(admin, namespace, { name: 'agent-1', task: 'ticket-4711', serviceAccount: 'support-agent' });
    const again = await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.state === 'Bound');
    const token = await podToken(admin, pod);
    expect((await brokerRequest(env, 'POST', '/v1/hops', { token, body: { tool: 'tickets', action: 'read', resource: 'ticket/4' } })).body).toMatchObject({ decision: 'allow' });
    const current = again.metadata.uid ?? '';

    const records = async () => readAuditRecords(await readFile(env.auditFile ?? '', 'utf8')).filter((e) => e.record.task === `${namespace}/ticket-4711`);
    const headCount = async () => (await readTask(admin, namespace, 'ticket-4711'))?.status?.audit?.count;
    await expect.poll(async () => (await records()).filter((e) => e.record.taskUid === current).length, { timeout: 10_000 }).toBe(await headCount());
    const count = await sealedCount();
    expect((await records()).filter((e) => e.record.taskUid === earlier)).toHaveLength(count ?? -1);
    const lines = (await records()).map((e) => JSON.stringify({ audit: e.record }));
    const dir = await mkdtemp(path.join(os.tmpdir(), 'incarnations-'));
    const stream = path.join(dir, 'audit.jsonl');
    const trace = (...flags: string[]) => spawnSync(process.execPath, [bin, 'trace', `${namespace}/ticket-4711`, stream, '--kubeconfig', env.kubeconfig, ...flags], { encoding: 'utf8' });

    await writeFile(stream, lines.join('\n'));
    const intact = trace();
    expect(intact.status, intact.stdout).toBe(0);
    expect(intact.stdout).toContain(`${namespace}/ticket-4711 (${current}) Bound`);
    expect(intact.stdout).toMatch(new RegExp(`other tasks of this name in the stream:\n {2}${earlier} deleted \\S+: chain verified: ${count} records, head matches the head sealed when the task was deleted`));
    // An earlier task whose head cannot be found (here: looked for in the wrong namespace) is said so, and does not fail the task followed.
    const elsewhere = trace('--operator-namespace', 'kube-public');
    expect(elsewhere.status, elsewhere.stdout).toBe(0);
    expect(elsewhere.stdout).toContain(`  ${earlier} unknown: ${count} records intact, not checked against a head: the task no longer exists and no head was sealed for it`);
    // Each task once: the one followed is not listed among the others.
    expect(intact.stdout.split('\n').filter((line) => line.includes(current))).toHaveLength(1);
    // The earlier task's hops are its own: shown when asked for by uid, not in the current tree.
    expect(intact.stdout).not.toContain('ticket/1');
    const byUid = trace('--uid', earlier);
    expect(byUid.status).toBe(0);
    expect(byUid.stdout).toContain('ticket/1');

    // The earlier task's last records cut: the current one still verifies, the command does not.
    const last = (await records()).filter((e) => e.record.taskUid === earlier).sort((a, b) => b.record.seq - a.record.seq)[0];
    await writeFile(stream, lines.filter((line) => line !== JSON.stringify({ audit: last?.record })).join('\n'));
    const cut = trace();
    expect(cut.status).toBe(1);
    expect(cut.stdout).toMatch(/chain verified: \d+ records/);
    expect(cut.stdout).toMatch(new RegExp(`other tasks of this name in the stream: NOT ALL VERIFIED\n {2}${earlier} deleted \\S+: CHAIN NOT VERIFIED:\n {4}- the stream ends at record ${(count ?? 0) - 1} but the head sealed when the task was deleted .* counts ${count}: records are missing \\(truncated\\)`));

    // A stream handed to on-call with forged uids: one that is no text, one that holds terminal
    // escapes. Neither crashes trace, and no escape reaches the terminal, not even in an error.
    const forged = (taskUid: unknown) => JSON.stringify({ audit: { v: 1, seq: 1, task: `${namespace}/ticket-4711`, taskUid, type: 'hop_decided', at: '2026-01-01T00:00:00Z', data: {}, prev: 'x', hash: 'y' } });
    await writeFile(stream, [...lines, forged({ toString: 1 }), forged('\u001b]52;c;aGk=\u0007\u001b[2J')].join('\n'));
    const hostile = trace();
    expect(hostile.status).toBe(1);
    expect(hostile.stderr).not.toMatch(/Cannot convert object/);
    expect(hostile.stdout).toMatch(/chain verified: \d+ records/);
    const missing = trace('--uid', 'no-such-uid');
    expect(missing.status).toBe(1);
    expect(missing.stderr).toContain('\\x1b]52;c;aGk=\\x07\\x1b[2J');
    for (const run of [hostile, missing]) expect(`${run.stdout}${run.stderr}`).not.toMatch(/[\u0007\u001b]/); // eslint-disable-line no-control-regex -- finding them is the point
  });
});
