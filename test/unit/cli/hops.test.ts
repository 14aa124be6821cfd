import { afterEach, describe, expect, it, vi } from 'vitest';
import { parseAgentTask } from '../../../src/api/parse.js';
import type { AgentTask } from '../../../src/api/schema.js';
import { agentCell } from '../../../src/api/text.js';
import { age, approvalFor, hopRows, notPendingReason, renderHops } from '../../../src/cli/hops.js';
import { main, programName } from '../../../src/cli/main.js';
import { exampleTask } from '../../builders/examples.js';

const now = Date.parse('2026-11-21T10:30:00Z');

function task(): AgentTask {
  const t = exampleTask('support');
  t.status = {
    pendingHops: [
      { hopId: 'h2_wait', digest: 'd', tool: 'payments', action: 'refund', resource: 'order/1', depth: 2, attributes: { amount: '42' }, intent: 'refund\u001b[2Jthe double charge', rules: ['refunds-need-a-human'], requestedAt: '2026-11-21T10:29:15Z', timeoutAt: '2026-11-21T10:44:15Z' },
    ],
    recentHops: [
      { hopId: 'h1_read', decision: 'allow', tool: 'tickets', action: 'read', resource: 'ticket/1', rules: ['read-and-comment'], at: '2026-11-21T10:20:00Z' },
      { hopId: 'h2_mail', decision: 'allow', wouldDeny: true, tool: 'email', action: 'send', resource: 'a@example.com', rules: ['no-exfiltration'], at: '2026-11-21T10:25:00Z' },
      { hopId: 'h2_old', decision: 'deny', rules: ['approval:lead-1'], at: '2026-11-21T08:00:00Z' },
    ],
  };
  return parseAgentTask(t);
}

describe('hopRows and renderHops', () => {
  it('lists waiting hops whole, then the recent ones, and marks what Audit mode let through', () => {
    const rows = hopRows(task());
    expect(rows.map((r) => [r.hopId, r.decision])).toEqual([
      ['h2_wait', 'pending'],
      ['h1_read', 'allow'],
      ['h2_mail', 'allow (would deny)'],
      ['h2_old', 'deny'],
    ]);
    expect(hopRows(task(), true).map((r) => r.hopId)).toEqual(['h2_wait']);
  });

  it("prints a table whose agent-written text cannot drive the terminal", () => {
    const out = renderHops(hopRows(task()), now, false).split('\n');
    expect(out[0]).toMatch(/^HOP\s+DECISION\s+TOOL\s+ACTION\s+RESOURCE\s+ATTRIBUTES\s+INTENT\s+RULES\s+AGE$/);
    expect(out[1]).toMatch(/^h2_wait\s+pending\s+payments\s+refund\s+order\/1\s+amount=42\s+"refund\\u001b\[2Jthe double charge"\s+refunds-need-a-human\s+45s$/);
    expect(out[4]).toMatch(/^h2_old\s+deny\s+-\s+-\s+-\s+-\s+-\s+approval:lead-1\s+2h$/);
    expect(renderHops(hopRows(task()), now, true).split('\n')[1]).toMatch(/^ticket-4711\s+h2_wait/);
  });

  it('an agent cannot fake columns or attributes with spaces, separators or invisible fillers, nor push the real ones off the screen', () => {
    const t = task();
    const hop = t.status!.pendingHops![0]!;
    // What the agent would have the approver read, then about 900 blanks, then the truth.
    hop.resource = `order/1   amount=10,currency=EUR   goodwill refund   refunds-need-a-human   2m${' '.repeat(900)}`;
    hop.attributes = { amount: '99999', to: 'acct-attacker', note: '10,to=alice', memo: 'two words', 'x\u3164y': 'a\u3164\u200bb' };
    hop.intent = 'refund the double charge';
    const line = renderHops(hopRows(t, true), now, false).split('\n')[1] ?? '';
    // The resource is one quoted cell, cut, with what was left out counted.
    expect(line).toContain(`${JSON.stringify(hop.resource.slice(0, 80))}…(+${hop.resource.length - 80})`);
    // The real attributes follow at once; a value with separators in it is quoted, invisible characters escaped.
    expect(line).toMatch(/…\(\+\d+\)\s+amount=99999,to=acct-attacker,note="10,to=alice",memo="two words","x\\u3164y"="a\\u3164\\u200bb"\s+refund the double charge\s+refunds-need-a-human\s+45s$/);
    // Words with single spaces read as they are; a run of spaces, which could fake a column, is quoted.
    hop.intent = 'refund   refunds-need-a-human   1s';
    expect(renderHops(hopRows(t, true), now, false).split('\n')[1]).toContain('"refund   refunds-need-a-human   1s"   refunds-need-a-human   45s');
    expect(line.length).toBeLessThan(400);
  });

  it('hidden characters outside the basic plane are escaped whole, so two different hidden payloads never look alike', () => {
    expect(agentCell('pay\u{E0041}\u{E0042}')).toBe('"pay\\udb40\\udc41\\udb40\\udc42"');
    expect(agentCell('pay\u{E0041}\u{E0042}')).not.toBe(agentCell('pay\u{E0043}\u{E0044}'));
  });

  it('tells the approver of a hop waiting in Audit mode that Enforce would deny it, and by what', () => {
    const t = task();
    t.status!.pendingHops![0]!.wouldDenyBy = ['no-refunds-after-customer-data'];
    const [row] = hopRows(t, true);
    // -o json: the decision stays pending; the rules that would deny it are their own field.
    expect(row).toMatchObject({ decision: 'pending', rules: ['refunds-need-a-human'], wouldDenyBy: ['no-refunds-after-customer-data'] });
    expect(renderHops([row!], now, false).split('\n')[1]).toMatch(/^h2_wait\s+pending \(would deny\)\s+payments\s.*\srefunds-need-a-human; Enforce would deny: no-refunds-after-customer-data\s+45s$/);
    expect(hopRows(task(), true)[0]).not.toHaveProperty('wouldDenyBy');
  });

  it.each([
    ['2026-11-21T10:29:59Z', '1s'],
    ['2026-11-21T10:10:00Z', '20m'],
    ['2026-11-21T06:30:00Z', '4h'],
    ['2026-11-17T10:30:00Z', '4d'],
  ])('age of %s is %s', (at, expected) => expect(age(at, now)).toBe(expected));
});

describe('notPendingReason', () => {
  it.each([
    ['h2_wait', undefined],
    ['h1_read', /is not pending any more: it was decided allow by read-and-comment at 2026-11-21T10:20:00Z/],
    ['h2_mail', /decided allow \(would deny\) by no-exfiltration/],
    ['h2_old', /decided deny by approval:lead-1/],
    ['h9_typo', /hop h9_typo is not pending in AgentTask support\/ticket-4711, nor among its recent hops.*chainwarden hops -n support ticket-4711 --pending/],
  ])('%s', (hopId, expected) => {
    const reason = notPendingReason(task(), hopId);
    if (expected === undefined) expect(reason).toBeUndefined();
    else expect(reason).toMatch(expected);
  });
});

describe('approvalFor', () => {
  it('leaves the approver and the hop digest to admission', () => {
    const a = approvalFor('support', 'ticket-4711', 'h2_wait', 'Reject', 'no such order');
    expect(a.spec).toEqual({ taskRef: { name: 'ticket-4711' }, hopId: 'h2_wait', decision: 'Reject', reason: 'no such order' });
    expect(a.metadata).toEqual({ namespace: 'support', generateName: 'ticket-4711-reject-' });
  });
});

describe('the CLI under the kubectl plugin name', () => {
  afterEach(() => vi.restoreAllMocks());

  it.each([
    ['/usr/local/bin/chainwarden', 'chainwarden'],
    ['/opt/chainwarden/bin/chainwarden.js', 'chainwarden'],
    ['/home/u/.local/bin/kubectl-chainwarden', 'kubectl chainwarden'],
    ['C:\\tools\\kubectl-chainwarden.cmd', 'kubectl chainwarden'],
    [undefined, 'chainwarden'],
  ])('%s is %s', (argv1, name) => expect(programName(argv1)).toBe(name));

  it('names itself as kubectl chainwarden in errors and usage', async () => {
    const chunks: string[] = [];
    vi.spyOn(process.stderr, 'write').mockImplementation((c: string | Uint8Array) => (chunks.push(String(c)), true));
    expect(await main(['approve', 'support/ticket-4711'], '/usr/bin/kubectl-chainwarden')).toBe(1);
    expect(chunks.join('')).toMatch(/^kubectl chainwarden approve: the hop id is missing: .*; kubectl chainwarden hops -n NAMESPACE TASK --pending lists them\nuse: kubectl chainwarden approve NAMESPACE\/TASK HOP --reason "why"/);
  });

  it('asks for a reason before it reads anything', async () => {
    const chunks: string[] = [];
    vi.spyOn(process.stderr, 'write').mockImplementation((c: string | Uint8Array) => (chunks.push(String(c)), true));
    expect(await main(['reject', 'support/ticket-4711', 'h1_x', '--reason', '  '])).toBe(1);
    expect(chunks.join('')).toMatch(/--reason is required: it is recorded in the audit trail/);
  });
});
