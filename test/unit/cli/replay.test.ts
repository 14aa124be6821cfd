import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { stringify } from 'yaml';
import type { AgentPolicy } from '../../../src/api/schema.js';
import { linkRecords, type AuditRecord } from '../../../src/audit/record.js';
import { main } from '../../../src/cli/main.js';
import { runPolicy } from '../../../src/cli/replay.js';
import { examplePolicy } from '../../builders/examples.js';

afterEach(() => vi.restoreAllMocks());

type Hop = { hopId: string; tool: string; action: string; resource: string; decision: string; rules: string[]; effect?: string };

const at = (i: number) => new Date(Date.parse('2026-11-21T10:00:00Z') + i * 1000).toISOString();
const hopEvent = (h: Hop, i: number) => ({
  type: 'hop_decided' as const,
  at: at(i + 1),
  data: { hopId: h.hopId, depth: 1, tool: h.tool, action: h.action, resource: h.resource, attributes: {}, intent: '', decision: h.decision, reasons: h.rules.map((rule) => ({ rule, effect: h.effect ?? 'Allow' })), pod: 'agent-0' },
});

/** A task's chain as the journal links it: admitted under `policy` (unless `admitted` is false), then its hops. */
function chain(hops: Hop[], opts: { task?: string; uid?: string; policy?: string; admitted?: boolean; admission?: Record<string, unknown> } = {}): AuditRecord[] {
  const admitted = opts.admitted === false ? [] : [{ type: 'task_admitted' as const, at: at(0), data: { policy: opts.policy ?? 'support-agent', serviceAccount: 'support-agent', ttl: '1h', ...opts.admission } }];
  return linkRecords({ key: opts.task ?? 'support/ticket-4711', uid: opts.uid ?? 'u1' }, '0'.repeat(64), 0, [...admitted, ...hops.map(hopEvent)]);
}

const line = (r: unknown) => JSON.stringify({ level: 30, time: 1, audit: r });
const lines = (records: unknown[]) => `${records.map(line).join('\n')}\n`;

const READ: Hop = { hopId: 'h1_a', tool: 'tickets', action: 'read', resource: 'ticket/1', decision: 'allow', rules: ['read-and-comment'] };
const EMAIL: Hop = { hopId: 'h1_b', tool: 'email', action: 'send', resource: 'c@example.com', decision: 'allow', rules: ['reply-by-email'] };

function policyYaml(edit: (p: AgentPolicy) => void = () => undefined): string {
  const p = examplePolicy('support');
  edit(p);
  return stringify(p);
}

async function files(policy: string, stream: string): Promise<{ policy: string; stream: string }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'cw-replay-'));
  await writeFile(path.join(dir, 'policy.yaml'), policy);
  await writeFile(path.join(dir, 'audit.jsonl'), stream);
  return { policy: path.join(dir, 'policy.yaml'), stream: path.join(dir, 'audit.jsonl') };
}

function capture() {
  const out: string[] = [];
  const err: string[] = [];
  vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    out.push(String(chunk));
    return true;
  });
  vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
    err.push(String(chunk));
    return true;
  });
  return { stdout: () => out.join(''), stderr: () => err.join('') };
}

/** `chainwarden policy replay --policy POLICY STREAM [flags]` as a user runs it: its exit code and what it printed. */
async function replay(policy: string, stream: string, flags: string[] = []) {
  const f = await files(policy, stream);
  const io = capture();
  const code = await runPolicy(['replay', '--policy', f.policy, f.stream, ...flags]);
  vi.restoreAllMocks();
  return { code, stdout: io.stdout(), stderr: io.stderr() };
}

describe('policy replay verifies the chains it replays, as audit verify does', () => {
  const intact = chain([READ, EMAIL]);

  it('a record missing from the middle of a chain (a line cut short) is a break: exit 2, each break named, no verdict', async () => {
    const text = lines(intact).split('\n');
    text[1] = (text[1] ?? '').slice(0, 120);
    const { code, stdout, stderr } = await replay(policyYaml(), text.join('\n'));
    expect(code).toBe(2);
    expect(stdout).toBe('');
    expect(stderr).toContain('BROKEN support/ticket-4711 seq 2 (line 3): record 2 is missing (record 3 is the next in the stream, at line 3)\n');
    expect(stderr).toMatch(/\nchainwarden policy: 1 break found in the audit stream: .*; replay only the chains that verify with --allow-breaks\n$/);
  });

  it('a forged record claiming a seq before the real one is a break, not the record replayed', async () => {
    const forged = { ...intact[1], data: { ...intact[1]?.data, tool: 'payments', action: 'refund', resource: 'order/1', decision: 'pending_approval' } };
    const { code, stdout, stderr } = await replay(policyYaml(), lines([intact[0], forged, ...intact.slice(1)]));
    expect(code).toBe(2);
    expect(stdout).toBe('');
    expect(stderr).toContain('BROKEN support/ticket-4711 seq 2 (line 2): its content does not match its hash (edited)\n');
    expect(stderr).toContain('BROKEN support/ticket-4711 seq 2 (line 2): 2 different records claim seq 2 (at line 2, line 3): a record was inserted or altered\n');
  });

  it('an edited record is a break: its edit is not replayed', async () => {
    const edited = intact.map((r) => (r.seq === 2 ? { ...r, data: { ...r.data, tool: 'payments', resource: 'order/9' } } : r));
    const { code, stdout, stderr } = await replay(policyYaml(), lines(edited));
    expect(code).toBe(2);
    expect(stdout).toBe('');
    expect(stderr).toContain('BROKEN support/ticket-4711 seq 2 (line 2): its content does not match its hash (edited)\n');
  });

  it('with --allow-breaks, replays the chains that verify and says which tasks were left out and why', async () => {
    const broken = chain([READ, EMAIL], { task: 'support/ticket-9', uid: 'u9' }).filter((r) => r.seq !== 2);
    const { code, stdout, stderr } = await replay(policyYaml(), lines([...broken, ...intact]), ['--allow-breaks']);
    expect(code).toBe(1);
    expect(stdout.split('\n')).toEqual([
      'support/ticket-4711 hop h1_b email send c@example.com: allow (reply-by-email) → deny (no-exfiltration)',
      '1 of 2 recorded decisions would change under AgentPolicy support/support-agent (mode Enforce); 1 task with a broken chain left out',
      '',
    ]);
    expect(stderr).toContain('BROKEN support/ticket-9 seq 2 (line 2): record 2 is missing (record 3 is the next in the stream, at line 2)\n');
    expect(stderr).toContain('left out: support/ticket-9: its chain does not verify (the breaks above)\n');
  });
});

describe('policy replay minds only the breaks that could change its verdict', () => {
  it('a chain broken in another namespace, or under another policy, is left out and counted, and the rest replayed: one replica\'s stream lacks what the others wrote', async () => {
    const elsewhere = chain([READ, EMAIL], { task: 'billing/ticket-7', uid: 'u7' }).filter((r) => r.seq !== 2);
    const otherPolicy = chain([READ, EMAIL], { task: 'support/ticket-8', uid: 'u8', policy: 'billing-agent' }).filter((r) => r.seq !== 3);
    const { code, stdout, stderr } = await replay(policyYaml(), lines([...elsewhere, ...otherPolicy, ...chain([READ, EMAIL])]));
    expect(stderr).toBe('');
    expect(code).toBe(1);
    expect(stdout).toMatch(/\n1 of 2 recorded decisions would change under AgentPolicy support\/support-agent \(mode Enforce\); 2 tasks under other policies or namespaces left out\n$/);
  });

  it('a chain of the same namespace whose admission is missing could be the policy\'s, and its break still stops replay', async () => {
    const unknown = chain([READ, EMAIL], { task: 'support/ticket-9', uid: 'u9' }).filter((r) => r.seq !== 1);
    const { code, stderr } = await replay(policyYaml(), lines([...unknown, ...chain([READ])]));
    expect(code).toBe(2);
    expect(stderr).toContain('BROKEN support/ticket-9 seq 1');
  });

  it('a forged admission claiming another policy does not hide a broken chain of this one', async () => {
    const real = chain([READ, EMAIL], { task: 'support/ticket-9', uid: 'u9' });
    const forged = { ...real[0], data: { ...real[0]?.data, policy: 'billing-agent' } };
    const { code, stderr } = await replay(policyYaml(), lines([forged, ...real, ...chain([READ])]));
    expect(code).toBe(2);
    expect(stderr).toContain('BROKEN support/ticket-9 seq 1');
  });
});

describe('policy replay counts what the live broker counts', () => {
  it('a hop whose approval was rejected is a prior denial: a policy replayed against its own stream changes nothing', async () => {
    const noSecondChances = (p: AgentPolicy) => void (p.spec.cedar = `@id("no-second-chances")\nforbid (principal, action, resource) when { context.priorDenials > 0 };\n${p.spec.cedar ?? ''}`);
    const refund: Hop = { hopId: 'h1_r', tool: 'payments', action: 'refund', resource: 'order/1', decision: 'pending_approval', rules: ['refunds-need-a-human'], effect: 'RequireApproval' };
    const recorded = chain([refund, { ...refund, decision: 'deny', rules: ['approval:lead-1'], effect: 'Deny' }, { ...EMAIL, hopId: 'h1_e', decision: 'deny', rules: ['no-second-chances'], effect: 'Deny' }]);
    const { code, stdout } = await replay(policyYaml(noSecondChances), lines(recorded));
    expect(stdout).toBe('0 of 2 recorded decisions would change under AgentPolicy support/support-agent (mode Enforce)\n');
    expect(code).toBe(0);
  });
});

describe('policy replay says when the stream holds nothing the policy ran', () => {
  const stream = lines([...chain([READ, EMAIL]), ...chain([READ], { task: 'billing/t-1', uid: 'u2', policy: 'billing-agent' })]);

  it.each([
    ['a renamed policy', (p: AgentPolicy) => void (p.metadata.name = 'support-agent-v2'), 'support/support-agent-v2'],
    ['a mistyped namespace', (p: AgentPolicy) => void (p.metadata.namespace = 'suport'), 'suport/support-agent'],
  ])('%s: exit 2, naming the policies the stream holds and the fix', async (_why, edit, scope) => {
    const { code, stdout, stderr } = await replay(policyYaml(edit), stream);
    expect(code).toBe(2);
    expect(stdout).toBe('');
    expect(stderr).toMatch(new RegExp(`^chainwarden policy: no task in the stream was admitted under AgentPolicy ${scope}: its tasks were admitted under billing/billing-agent, support/support-agent; give the policy in .*policy\\.yaml the name and namespace of the live AgentPolicy it is to replace \\(metadata\\.name, metadata\\.namespace\\) \\[no_audit_records\\]\\n$`));
  });

  it('tasks of the policy that made no hops are a legitimate 0 of 0', async () => {
    const { code, stdout } = await replay(policyYaml(), lines(chain([])));
    expect(stdout).toBe('0 of 0 recorded decisions would change under AgentPolicy support/support-agent (mode Enforce)\n');
    expect(code).toBe(0);
  });
});

describe('policy replay replays only tasks the stream says were admitted under the policy', () => {
  it('a task whose task_admitted record is not in the stream is left out, and counted', async () => {
    const unadmitted = chain([READ, EMAIL], { task: 'support/other-task', uid: 'u9', admitted: false });
    const { code, stdout } = await replay(policyYaml(), lines([...unadmitted, ...chain([READ])]));
    expect(stdout).toBe('0 of 1 recorded decisions would change under AgentPolicy support/support-agent (mode Enforce); 1 task whose admission is not in the stream left out\n');
    expect(code).toBe(0);
  });

  it('tasks in another namespace, or under another policy, are left out and counted', async () => {
    const elsewhere = chain([READ, EMAIL], { task: 'billing/ticket-9', uid: 'u7' });
    const otherPolicy = chain([READ], { task: 'support/ticket-8', uid: 'u8', policy: 'billing-agent' });
    const { code, stdout } = await replay(policyYaml(), lines([...elsewhere, ...otherPolicy, ...chain([READ])]));
    expect(stdout).toBe('0 of 1 recorded decisions would change under AgentPolicy support/support-agent (mode Enforce); 2 tasks under other policies or namespaces left out\n');
    expect(code).toBe(0);
  });

  it('a stream of tasks none of whose admission is in it: exit 2, saying so', async () => {
    const { code, stderr } = await replay(policyYaml(), lines(chain([READ, EMAIL], { task: 'support/other-task', uid: 'u9', admitted: false })));
    expect(code).toBe(2);
    expect(stderr).toMatch(/no task in the stream was admitted under AgentPolicy support\/support-agent: it holds no task's admission \(1 task's admission is not in the stream\) \[no_audit_records\]\n$/);
  });
});

describe('policy replay prints what an agent wrote so it cannot pass for the verdict', () => {
  it('a resource with spaces, an arrow and invisible characters is quoted and cut', async () => {
    const resource = `c@example.com: deny (no-exfiltration) → deny (no-exfiltration)${' '.repeat(300)}x\u3164\u200b`;
    const { code, stdout } = await replay(policyYaml(), lines(chain([READ, { ...EMAIL, resource }])));
    expect(code).toBe(1);
    expect(stdout.split('\n')[0]).toBe(`support/ticket-4711 hop h1_b email send ${JSON.stringify(resource.slice(0, 80))}…(+${resource.length - 80}): allow (reply-by-email) → deny (no-exfiltration)`);
  });

  it('a tool or action with a space is quoted', async () => {
    const { stdout } = await replay(policyYaml(), lines(chain([READ, { ...EMAIL, tool: 'email x', action: 'send now', rules: ['reply-by-email'] }])));
    expect(stdout.split('\n')[0]).toBe('support/ticket-4711 hop h1_b "email x" "send now" c@example.com: allow (reply-by-email) → deny (default-deny)');
  });
});

describe('policy replay on malformed records: a named break or a named task, never a crash', () => {
  it.each([
    ['a record without data', { v: 1, type: 'hop_decided', task: 'support/x', taskUid: 'u', seq: 1 }, 'BROKEN support/x seq 1 (line 1): it is not a well-formed audit record'],
    ['a record whose task is a number', { v: 1, type: 'hop_decided', task: 5, taskUid: 'u', seq: 1, data: {} }, 'BROKEN ? seq 1 (line 1): it is not a well-formed audit record'],
  ])('%s is a break', async (_why, record, message) => {
    const { code, stderr } = await replay(policyYaml(), `${line(record)}\n`);
    expect(code).toBe(2);
    expect(stderr).toContain(`${message}\n`);
    expect(stderr).not.toMatch(/Cannot read properties|is not a function/);
  });

  it('with --allow-breaks, a malformed record leaves the other tasks replayed', async () => {
    const { code, stdout } = await replay(policyYaml(), `${line({ v: 1, type: 'hop_decided', task: 5, taskUid: 'u', seq: 1, data: {} })}\n${lines(chain([READ, EMAIL]))}`, ['--allow-breaks']);
    expect(code).toBe(1);
    expect(stdout).toMatch(/^support\/ticket-4711 hop h1_b email send c@example.com: allow \(reply-by-email\) → deny \(no-exfiltration\)\n1 of 2 recorded decisions would change/);
  });

  it('a task whose admission records what admission would refuse is named with its line and gives no verdict; with --allow-breaks the others are replayed', async () => {
    const refused = chain([READ, EMAIL], { task: 'support/ticket-9', uid: 'u9', admission: { serviceAccount: 'x'.repeat(300) } });
    const without = await replay(policyYaml(), lines([...refused, ...chain([READ, EMAIL])]));
    expect(without.code).toBe(2);
    expect(without.stdout).toBe('');
    expect(without.stderr).toMatch(/cannot be replayed \(named above\), so no verdict is given; replay the rest with --allow-breaks\n$/);
    const { code, stdout, stderr } = await replay(policyYaml(), lines([...refused, ...chain([READ, EMAIL])]), ['--allow-breaks']);
    expect(code).toBe(1);
    expect(stdout.split('\n')).toEqual([
      'support/ticket-4711 hop h1_b email send c@example.com: allow (reply-by-email) → deny (no-exfiltration)',
      '1 of 2 recorded decisions would change under AgentPolicy support/support-agent (mode Enforce); 1 task whose records cannot be replayed left out',
      '',
    ]);
    expect(stderr).toMatch(/^left out: support\/ticket-9 \(line 1\): its records cannot be replayed: AgentTask is invalid: spec\.serviceAccountName: /);
  });

  it('when no task of the policy can be replayed, exit 2 rather than 0 of 0', async () => {
    const refused = chain([READ, EMAIL], { admission: { serviceAccount: 'x'.repeat(300) } });
    const { code, stdout, stderr } = await replay(policyYaml(), lines(refused));
    expect(code).toBe(2);
    expect(stdout).toBe('');
    expect(stderr.split('\n')).toEqual([
      expect.stringMatching(/^left out: support\/ticket-4711 \(line 1\): its records cannot be replayed: AgentTask is invalid: spec\.serviceAccountName: /),
      'chainwarden policy: no task admitted under AgentPolicy support/support-agent can be replayed: the records of 1 task cannot (named above) [no_audit_records]',
      '',
    ]);
  });

  it('a hop record whose reasons are not a list is replayed, not a crash', async () => {
    const odd = linkRecords({ key: 'support/ticket-4711', uid: 'u1' }, '0'.repeat(64), 0, [
      { type: 'task_admitted', at: at(0), data: { policy: 'support-agent', serviceAccount: 'support-agent', ttl: '1h' } },
      { ...hopEvent(READ, 0), data: { ...hopEvent(READ, 0).data, reasons: 'read-and-comment' } },
    ]);
    const { code, stdout, stderr } = await replay(policyYaml(), lines(odd));
    expect(stderr).toBe('');
    expect(stdout).toBe('0 of 1 recorded decisions would change under AgentPolicy support/support-agent (mode Enforce)\n');
    expect(code).toBe(0);
  });
});

describe('a reader that closes the pipe early (| head -1)', () => {
  /** stdout as a pipe whose reader has gone: the first write fails with EPIPE, as a socket reports it. */
  function closedPipe() {
    const err: string[] = [];
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
      err.push(String(chunk));
      return true;
    });
    vi.spyOn(process.stdout, 'write').mockImplementation(() => {
      process.stdout.emit('error', Object.assign(new Error('write EPIPE'), { code: 'EPIPE', errno: -32, syscall: 'write' }));
      return false;
    });
    return () => err.join('');
  }

  it('policy replay exits with its verdict, quietly', async () => {
    const f = await files(policyYaml(), lines(chain([READ, EMAIL])));
    const stderr = closedPipe();
    expect(await main(['policy', 'replay', '--policy', f.policy, f.stream])).toBe(1);
    expect(stderr()).toBe('');
  });

  it('audit verify exits with its verdict, quietly', async () => {
    const f = await files(policyYaml(), lines(chain([READ, EMAIL])));
    const stderr = closedPipe();
    expect(await main(['audit', 'verify', f.stream])).toBe(0);
    expect(stderr()).not.toMatch(/EPIPE/);
  });
});
