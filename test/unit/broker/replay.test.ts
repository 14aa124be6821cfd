import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { parseAgentPolicy } from '../../../src/api/parse.js';
import type { AgentPolicy } from '../../../src/api/schema.js';
import { linkRecords, type AuditRecord } from '../../../src/audit/record.js';
import { replayRecords, StreamReplay } from '../../../src/broker/replay.js';
import { loadPolicyText, renderChange } from '../../../src/cli/replay.js';
import { PolicyEngine } from '../../../src/policy/engine.js';
import { examplePolicy } from '../../builders/examples.js';

const engine = new PolicyEngine();
const evaluate: Parameters<typeof replayRecords>[2] = (...a) => engine.evaluate(...a);
let generation = 0;

function policy(edit: (p: AgentPolicy) => void = () => undefined): AgentPolicy {
  const p = examplePolicy('support');
  p.metadata = { ...p.metadata, uid: 'replay-test', generation: ++generation };
  edit(p);
  return parseAgentPolicy(p);
}

type Hop = { hopId: string; tool: string; action: string; resource: string; decision: string; rules: string[]; depth?: number; wouldDeny?: boolean; attributes?: Record<string, string> };

/** A task's recorded stream: admitted under `policyName`, then its hops, linked as the journal links them. */
function stream(hops: Hop[], opts: { task?: string; uid?: string; policyName?: string } = {}): AuditRecord[] {
  const at = (i: number) => new Date(Date.parse('2026-11-21T10:00:00Z') + i * 1000).toISOString();
  return linkRecords({ key: opts.task ?? 'support/ticket-4711', uid: opts.uid ?? 'u1' }, '0'.repeat(64), 0, [
    { type: 'task_admitted', at: at(0), data: { policy: opts.policyName ?? 'support-agent', serviceAccount: 'support-agent', ttl: '1h' } },
    ...hops.map((h, i) => ({
      type: 'hop_decided' as const,
      at: at(i + 1),
      data: { hopId: h.hopId, depth: h.depth ?? 1, tool: h.tool, action: h.action, resource: h.resource, attributes: h.attributes ?? {}, intent: '', decision: h.decision, reasons: h.rules.map((rule) => ({ rule, effect: 'Allow' })), ...(h.wouldDeny ? { wouldDeny: true } : {}), pod: 'agent-0' },
    })),
  ]);
}

const READ: Hop = { hopId: 'h1_a', tool: 'tickets', action: 'read', resource: 'ticket/1', decision: 'allow', rules: ['read-and-comment'] };
const EMAIL: Hop = { hopId: 'h1_b', tool: 'email', action: 'send', resource: 'c@example.com', decision: 'allow', rules: ['reply-by-email'] };
const lenient = (p: AgentPolicy) => void (p.spec.rules = (p.spec.rules ?? []).filter((r) => r.name !== 'no-exfiltration'));

describe('replayRecords: what a policy would decide otherwise', () => {
  it.each([
    { why: 'the policy the stream was recorded under changes nothing', hops: [READ, EMAIL], edit: lenient, changes: [] },
    { why: 'a chain rule sees the data classes the earlier hops touched', hops: [READ, EMAIL], edit: undefined, changes: [['h1_b', 'allow', 'deny', ['no-exfiltration']]] },
    { why: 'the same email before any customer data is read stays allowed', hops: [EMAIL, READ], edit: undefined, changes: [] },
    { why: 'in Audit mode it would be allowed, marked would deny', hops: [READ, EMAIL], edit: (p: AgentPolicy) => void (p.spec.mode = 'Audit'), changes: [['h1_b', 'allow', 'allow (would deny)', ['no-exfiltration']]] },
    { why: 'a would-be denial recorded in Audit is a denial under Enforce', hops: [READ, { ...EMAIL, wouldDeny: true, rules: ['no-exfiltration'] }], edit: undefined, changes: [['h1_b', 'allow (would deny)', 'deny', ['no-exfiltration']]] },
    { why: 'a lower maxHops counts the hops made before', hops: [READ, { ...READ, hopId: 'h1_c' }, { ...READ, hopId: 'h1_d' }], edit: (p: AgentPolicy) => void (p.spec.limits = { maxHops: 2, maxDepth: 6 }), changes: [['h1_d', 'allow', 'deny', ['limit:maxHops']]] },
    {
      why: 'a hop newly held for approval',
      hops: [READ],
      edit: (p: AgentPolicy) => void (p.spec.rules = [{ name: 'reads-need-a-human', effect: 'RequireApproval', tools: ['tickets'], actions: ['read'] }, ...(p.spec.rules ?? [])]),
      changes: [['h1_a', 'allow', 'pending_approval', ['reads-need-a-human']]],
    },
  ])('$why', ({ hops, edit, changes }) => {
    const result = replayRecords(stream(hops), policy(edit), evaluate);
    expect(result.decided).toBe(hops.length);
    expect(result.changes.map((c) => [c.hopId, c.before, c.after, c.afterRules])).toEqual(changes);
  });

  it("a waiting hop's resolution is a person's decision, not replayed; an approved hop touches what it touched", () => {
    const records = stream([
      { hopId: 'h1_r', tool: 'payments', action: 'refund', resource: 'order/1', decision: 'pending_approval', rules: ['refunds-need-a-human'] },
      { hopId: 'h1_r', tool: 'payments', action: 'refund', resource: 'order/1', decision: 'allow', rules: ['approval:lead-1'] },
      { ...EMAIL, hopId: 'h1_e' },
    ]);
    const result = replayRecords(records, policy(), evaluate);
    expect(result.decided).toBe(2);
    // The refund touched payments (data class payment), not pii: the email stays allowed.
    expect(result.changes).toEqual([]);
  });

  it('a gateway call an approval let through is replayed with the rules that approval was given for: a rule the approver was not shown holds it again', () => {
    const approvedRefund = (extra: Record<string, unknown>): AuditRecord[] =>
      linkRecords({ key: 'support/ticket-4711', uid: 'u1' }, '0'.repeat(64), 0, [
        { type: 'task_admitted', at: '2026-11-21T10:00:00Z', data: { policy: 'support-agent', serviceAccount: 'support-agent', ttl: '1h' } },
        { type: 'hop_decided', at: '2026-11-21T10:00:01Z', data: { hopId: 'h1_g', depth: 1, tool: 'payments', action: 'refund', resource: 'order/1', attributes: {}, intent: '', decision: 'allow', reasons: [{ rule: 'approval:lead-1', effect: 'Allow' }], ...extra, pod: 'agent-0' } },
      ]);
    const stricter = policy((p) => void (p.spec.rules ??= []).push({ name: 'refunds-need-a-lead', effect: 'RequireApproval', tools: ['payments'], actions: ['refund'] }));
    const [change] = replayRecords(approvedRefund({ approvalRules: ['refunds-need-a-human'] }), stricter, evaluate).changes;
    expect(change).toMatchObject({ hopId: 'h1_g', before: 'allow', after: 'pending_approval' });
    expect([...(change?.afterRules ?? [])].sort()).toEqual(['refunds-need-a-human', 'refunds-need-a-lead']);
    // Under the policy it was recorded under, the approval still covers it.
    expect(replayRecords(approvedRefund({ approvalRules: ['refunds-need-a-human'] }), policy(), evaluate).changes).toEqual([]);
    // A record from before the rules were kept: the approval lifts any, as it did then.
    expect(replayRecords(approvedRefund({}), stricter, evaluate).changes).toEqual([]);
  });

  it('leaves out tasks admitted under another policy or in another namespace than the file names', () => {
    const records = [
      ...stream([READ, EMAIL], { task: 'support/other', uid: 'u2', policyName: 'billing' }),
      ...stream([READ, EMAIL], { task: 'sales/ticket-9', uid: 'u3' }),
      ...stream([READ, EMAIL]),
    ];
    const result = replayRecords(records, policy(), evaluate);
    expect(result.otherPolicy).toBe(2);
    expect(result.changes.map((c) => c.task)).toEqual(['support/ticket-4711']);
  });

  it.each([
    ['rejected by a person', 'approval:lead-1'],
    ['timed out', 'approval-timeout'],
    ['denied by the cap on waiting hops', 'limit:pendingHops'],
  ])('a waiting hop %s is a prior denial, as the journal counts it', (_why, rule) => {
    const secondChances = (p: AgentPolicy) => void (p.spec.cedar = '@id("no-second-chances")\nforbid (principal, action, resource) when { context.priorDenials > 0 };');
    const refund: Hop = { hopId: 'h1_r', tool: 'payments', action: 'refund', resource: 'order/1', decision: 'pending_approval', rules: ['refunds-need-a-human'] };
    const records = stream([refund, { ...refund, decision: 'deny', rules: [rule] }, { ...READ, decision: 'deny', rules: ['no-second-chances'] }]);
    const result = replayRecords(records, policy(secondChances), evaluate);
    expect(result.decided).toBe(2);
    expect(result.changes).toEqual([]);
  });

  it('holds, of the records read, only the hops of tasks that may have run under the policy', () => {
    const reading = new StreamReplay(policy());
    const feed = (records: AuditRecord[]) => records.forEach((record, i) => reading.add({ record, line: i + 1 }));
    const hops = Array.from({ length: 50 }, (_, i) => ({ ...READ, hopId: `h1_${i}` }));
    // Another policy's task, its hops read before its admission (replicas' streams interleave): let go once the admission is read.
    const other = stream(hops, { task: 'support/other', uid: 'u2', policyName: 'billing' });
    feed([...other.slice(1), other[0] as AuditRecord]);
    feed(stream(hops, { task: 'sales/ticket-9', uid: 'u3' }));
    expect(reading.held).toBe(0);
    feed(stream([READ, EMAIL]));
    expect(reading.held).toBe(2);
    expect(reading.replay(evaluate)).toMatchObject({ decided: 2, otherPolicy: 2, admitted: 1 });
  });

  it('lists every change of a task with more changed decisions than a spread of arguments takes (150,000)', () => {
    const emails = Array.from({ length: 150_000 }, (_, i) => ({ ...EMAIL, hopId: `h1_${i}` }));
    const result = replayRecords(stream([READ, ...emails]), policy(), evaluate);
    expect(result.decided).toBe(150_001);
    expect(result.changes).toHaveLength(150_000);
    expect(result.changes[0]).toMatchObject({ hopId: 'h1_0', before: 'allow', after: 'deny', afterRules: ['no-exfiltration'] });
    expect(result.changes.at(-1)).toMatchObject({ hopId: 'h1_149999', before: 'allow', after: 'deny' });
  }, 120_000);

  it('counts a record once when several replicas streams hold it', () => {
    const records = stream([READ, EMAIL]);
    expect(replayRecords([...records, ...records], policy(), evaluate).changes).toHaveLength(1);
  });

  it('prints task, hop, call, before → after with the rules', () => {
    const [change] = replayRecords(stream([READ, EMAIL]), policy(), evaluate).changes;
    expect(change && renderChange(change)).toBe('support/ticket-4711 hop h1_b email send c@example.com: allow (reply-by-email) → deny (no-exfiltration)');
  });
});

describe('loadPolicyText: the policy file is checked as admission checks it', () => {
  const text = (edit: (p: Record<string, unknown> & { spec: Record<string, unknown> }) => void) => {
    const p = examplePolicy('support') as unknown as Record<string, unknown> & { spec: Record<string, unknown> };
    edit(p);
    return stringify(p);
  };
  it.each([
    ['not YAML', 'spec: [unclosed', /p\.yaml is not YAML/, undefined],
    ['no AgentPolicy in it', 'kind: AgentTask\n', /must hold one AgentPolicy \(kind: AgentPolicy\); it holds 0/, undefined],
    ['a field the schema refuses', text((p) => void (p.spec.mode = 'Sometimes')), /p\.yaml: AgentPolicy is invalid: spec\.mode: /, 'spec.mode'],
    ['a rule naming an undeclared data class', text((p) => void ((p.spec.rules as { when?: unknown }[])[0]!.when = { afterDataClasses: ['secrets'] })), /spec\.rules\[0\]\.when\.afterDataClasses\[0\]: data class "secrets" is not declared/, 'spec.rules[0].when.afterDataClasses[0]'],
    ['raw Cedar that does not parse', text((p) => void (p.spec.cedar = 'forbid (principal, action, resource) when {')), /spec\.cedar: line 1/, 'spec.cedar'],
  ])('%s', (_why, body, message, field) => {
    let error: unknown;
    try {
      loadPolicyText(body, 'p.yaml');
    } catch (err) {
      error = err;
    }
    expect(String((error as Error | undefined)?.message)).toMatch(message);
    if (field) expect((error as { field?: string }).field).toBe(field);
  });

  it('reads a valid policy with its defaults', () => {
    expect(loadPolicyText(text(() => undefined), 'p.yaml').spec.mode).toBe('Enforce');
  });
});
