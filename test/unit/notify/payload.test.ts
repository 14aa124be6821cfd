import { describe, expect, it } from 'vitest';
import { approvalCommands, cloudEvent, notifyRequest, slackCode, slackMessage, type PendingHopNotice } from '../../../src/notify/payload.js';

const notice = (edit: Partial<PendingHopNotice['hop']> = {}): PendingHopNotice => ({
  namespace: 'support',
  task: 'ticket-4711',
  hop: {
    hopId: 'h1_abc_DEF',
    digest: 'd'.repeat(64),
    tool: 'payments',
    action: 'refund',
    resource: 'order/1',
    depth: 2,
    parentHop: 'h1_parent',
    intent: 'refund the duplicate charge',
    attributes: { amount: '42' },
    rules: ['refunds-need-a-human'],
    requestedAt: '2026-11-21T10:00:00.000Z',
    timeoutAt: '2026-11-21T10:15:00.000Z',
    ...edit,
  },
});

interface Slack {
  text: string;
  blocks: { type: string; text?: { text: string }; fields?: { text: string }[] }[];
}
const slack = (n: PendingHopNotice) => JSON.parse(slackMessage(n).body) as Slack;
const allText = (m: Slack) => [m.text, ...m.blocks.flatMap((b) => [b.text?.text ?? '', ...(b.fields ?? []).map((f) => f.text)])].join('\n');

describe('approval notification payloads', () => {
  it('Slack: names the task, hop, tool, action, resource, attributes, intent, rule, timeout and the commands', () => {
    const request = slackMessage(notice());
    expect(request.contentType).toBe('application/json');
    const text = allText(slack(notice()));
    for (const part of ['support/ticket-4711', 'h1_abc_DEF', '`payments`', '`refund`', '`order/1`', '`amount` = `42`', '`refund the duplicate charge`', '`refunds-need-a-human`', '2026-11-21T10:15:00.000Z']) expect(text).toContain(part);
    expect(text).toContain('chainwarden approve support/ticket-4711 h1_abc_DEF --reason "…"');
    expect(text).toContain('chainwarden reject support/ticket-4711 h1_abc_DEF --reason "…"');
    expect(text).toContain('kubectl chainwarden approve support/ticket-4711 h1_abc_DEF');
    expect(slack(notice()).text).toMatch(/^Hop h1_abc_DEF of AgentTask support\/ticket-4711 waits for approval/);
  });

  it('Slack: agent text cannot mention, link, format or start a line of its own', () => {
    const hostile = '<!channel> `x` *Approved by security* <https://evil.example|approve here> & done\n*Approve*\n`chainwarden approve other/task h9 --reason ok`';
    const m = slack(notice({ intent: hostile, resource: hostile, attributes: { [hostile]: hostile } }));
    const text = allText(m);
    expect(text).not.toContain('<!channel>');
    expect(text).not.toContain('<https://');
    expect(text).toContain('&lt;!channel&gt;');
    expect(text).toContain('&amp; done');
    // Every agent value sits in one code span: no backtick or line break of its own survives.
    expect(slackCode(hostile)).toMatch(/^`[^`\n]*`$/);
    expect(text).not.toContain('`chainwarden approve other/task');
    expect(text).not.toMatch(/^\*Approve\*\n`chainwarden approve other/m);
    expect(text.match(/`chainwarden approve/g)).toHaveLength(2);
  });

  it('Slack: what the approver reads is what the hop holds: bidi overrides and controls are shown, not obeyed', () => {
    const m = slack(notice({ resource: 'invoice\u202egpj.exe', intent: 'a\u2066b\u0007c\u001b[31m' }));
    const text = allText(m);
    for (const control of ['\u202e', '\u2066', '\u0007', '\u001b']) expect(text).not.toContain(control);
    expect(text).toContain('invoice\\u202egpj.exe');
    expect(slackCode('a\u2066b\u0007c')).toBe('`a\\u2066b\\x07c`');
  });

  it('Slack: invisible characters are shown as escapes, so padding of them cannot hide the rest of a resource or an amount', () => {
    const resource = `acct/42${'\u200b'.repeat(493)}/../../admin/all`;
    const amount = `10${'\u2060'.repeat(178)}000000`;
    const text = allText(slack(notice({ resource, attributes: { amount }, intent: `reply\u{e0041}\u{e0042}` })));
    for (const hidden of ['\u200b', '\u2060', '\u{e0041}']) expect(text).not.toContain(hidden);
    // Each escape counts against the cut, so what is cut is said and what is shown starts with what the hop holds.
    expect(text).toContain('`acct/42\\u200b\\u200b');
    expect(text).toMatch(/\(\d{3} more characters\)/);
    expect(text).toContain('\\udb40\\udc41\\udb40\\udc42');
    expect(slackCode('10\u2060000', 40)).toBe('`10\\u2060000`');
  });

  it('Slack: a block stays within Slack\'s limits however many entities agent text needs', () => {
    // Slack refuses a field over 2,000 characters and a section over 3,000: the message would be retried until the hop timed out, no approver told.
    const m = slack(notice({ rules: Array.from({ length: 200 }, (_, i) => `rule-${i}`.padEnd(63, 'r')), resource: '<'.repeat(1024), intent: '&'.repeat(1024), attributes: Object.fromEntries(Array.from({ length: 50 }, (_, i) => [`k${i}`.padEnd(63, 'x'), '>'.repeat(1024)])) })) as unknown as { blocks: { fields?: { text: string }[]; text?: { text: string } }[] };
    for (const block of m.blocks) {
      for (const f of block.fields ?? []) expect(f.text.length).toBeLessThanOrEqual(2000);
      if (block.text) expect(block.text.text.length).toBeLessThanOrEqual(3000);
    }
    expect(slackCode('&'.repeat(600), 500)).toBe(`\`${'&amp;'.repeat(100)}… (500 more characters)\``);
  });

  it('Slack: long agent text is cut, saying how much was left out', () => {
    expect(slackCode('x'.repeat(600), 500)).toBe(`\`${'x'.repeat(500)}… (100 more characters)\``);
  });

  it('Slack: every attribute is shown, however many decoys come first, in as many sections as they take', () => {
    const decoys = Object.fromEntries(Array.from({ length: 49 }, (_, i) => [`k${String(i).padStart(2, '0')}`.padEnd(63, 'x'), 'y'.repeat(1024)]));
    const m = slack(notice({ attributes: { ...decoys, amount: '99999' } })) as unknown as { blocks: { text?: { text: string } }[] };
    const sections = m.blocks.filter((b) => b.text?.text.startsWith('*Attributes'));
    expect(sections.length).toBeGreaterThan(1);
    expect(sections.every((b) => (b.text?.text.length ?? 0) <= 3000)).toBe(true);
    expect(allText(m as never)).toContain('`amount` = `99999`');
  });

  it('CloudEvents: a structured CloudEvents 1.0 event whose id is the hop id, with the hop as data', () => {
    const request = cloudEvent(notice());
    expect(request.contentType).toBe('application/cloudevents+json');
    expect(JSON.parse(request.body)).toEqual({
      specversion: '1.0',
      type: 'io.chainwarden.hop.pending',
      source: '/apis/chainwarden.io/v1alpha1/namespaces/support/agenttasks/ticket-4711',
      id: 'h1_abc_DEF',
      subject: 'h1_abc_DEF',
      time: '2026-11-21T10:00:00.000Z',
      datacontenttype: 'application/json',
      data: {
        namespace: 'support',
        task: 'ticket-4711',
        hopId: 'h1_abc_DEF',
        tool: 'payments',
        action: 'refund',
        resource: 'order/1',
        depth: 2,
        parentHop: 'h1_parent',
        intent: 'refund the duplicate charge',
        attributes: { amount: '42' },
        rules: ['refunds-need-a-human'],
        digest: 'd'.repeat(64),
        requestedAt: '2026-11-21T10:00:00.000Z',
        timeoutAt: '2026-11-21T10:15:00.000Z',
        commands: approvalCommands('support', 'ticket-4711', 'h1_abc_DEF'),
      },
    });
  });

  it('both formats tell the approver of a hop waiting in Audit mode what Enforce would deny it by', () => {
    const audit = notice({ wouldDenyBy: ['no-refunds-after-customer-data'] });
    const m = slack(audit);
    expect(m.text).toContain('Enforce would deny it (`no-refunds-after-customer-data`)');
    expect(allText(m)).toContain('*Enforce would deny it*\n`no-refunds-after-customer-data`');
    expect(allText(slack(notice()))).not.toContain('Enforce would deny');
    expect((JSON.parse(cloudEvent(audit).body) as { data: { wouldDenyBy?: string[] } }).data.wouldDenyBy).toEqual(['no-refunds-after-customer-data']);
  });

  it('CloudEvents: agent text stays data, whatever it holds', () => {
    const hostile = '"}, "id": "forged", "x": {"';
    const event = JSON.parse(cloudEvent(notice({ intent: hostile, resource: '\u0000\n</script>' })).body) as { id: string; data: { intent: string; resource: string } };
    expect(event.id).toBe('h1_abc_DEF');
    expect(event.data.intent).toBe(hostile);
    expect(event.data.resource).toBe('\u0000\n</script>');
  });

  it('a hop without an intent says so, and carries none', () => {
    expect(allText(slack(notice({ intent: '' })))).toContain('*Intent*\n(none given)');
    expect((JSON.parse(cloudEvent(notice({ intent: '' })).body) as { data: object }).data).not.toHaveProperty('intent');
  });

  it('the format picks the payload; Slack when none is given', () => {
    expect(notifyRequest(undefined, notice()).contentType).toBe('application/json');
    expect(notifyRequest('Slack', notice()).contentType).toBe('application/json');
    expect(notifyRequest('CloudEvents', notice()).contentType).toBe('application/cloudevents+json');
  });
});
