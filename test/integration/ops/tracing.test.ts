import { exampleTask } from '../../builders/examples.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { boundExampleAgent, pendingRefund } from '../../env/hops.js';
import { receivedSpans, type ReceivedSpan } from '../../env/otelcol.js';
import { readTask, waitForTask } from '../operator/helpers.js';
import { kubeconfigFile, run } from './helpers.js';

const taskName = exampleTask('x').metadata.name ?? '';

/** The spans of one trace the collector has received, once `ready` holds for them. */
async function traceOf(file: string, traceId: string, ready: (spans: ReceivedSpan[]) => boolean): Promise<ReceivedSpan[]> {
  let spans: ReceivedSpan[] = [];
  await expect
    .poll(
      async () => {
        spans = (await receivedSpans(file)).filter((s) => s.traceId === traceId);
        return ready(spans);
      },
      { timeout: 15_000, interval: 250 },
    )
    .toBe(true);
  return spans;
}

const named = (spans: ReceivedSpan[], name: string) => spans.filter((s) => s.name === name);

describe('the chain as OpenTelemetry spans, received by a real collector', () => {
  test('a task is one trace: hops nest under the hops that made them, an approval under the hop it answered, lifecycle under the task, and the task span closes at revocation', async ({ admin, env, namespace }) => {
    const spansFile = env.otlpSpans ?? '';
    expect(spansFile).not.toBe('');
    const agent = await boundExampleAgent(admin, env, namespace);
    const read = await agent.hop({ tool: 'tickets', action: 'read', resource: 'ticket/4711', intent: 'read the ticket' });
    const comment = await agent.hop({ tool: 'tickets', action: 'comment', resource: 'ticket/4711', parentHop: read.body.hopId });
    expect([read.body.decision, comment.body.decision]).toEqual(['allow', 'allow']);
    const refund = await pendingRefund(agent);
    const kubeconfig = await kubeconfigFile(admin);
    const approved = await run(['approve', `${namespace}/${taskName}`, refund, '--reason', 'duplicate charge'], { kubeconfig });
    expect(approved.code, approved.stderr).toBe(0);
    await expect.poll(async () => (await agent.poll(refund)).body.decision, { timeout: 10_000 }).toBe('allow');
    // A hop the policy forbids ends the task: Violated, then revoked.
    const freeze = await agent.hop({ tool: 'payments', action: 'admin.freeze', resource: 'account/1', parentHop: comment.body.hopId });
    expect(freeze.body.decision).toBe('deny');
    await waitForTask(admin, namespace, taskName, (t) => t.status?.conditions?.some((c) => c.type === 'Revoked' && c.status === 'True') ?? false);
    const task = await readTask(admin, namespace, taskName);
    const uid = task?.metadata.uid ?? '';

    const anyOfTask = (await receivedSpans(spansFile)).find((s) => s.attributes['chainwarden.task.uid'] === uid);
    const traceId = anyOfTask?.traceId ?? '';
    expect(traceId).toMatch(/^[0-9a-f]{32}$/);
    const spans = await traceOf(spansFile, traceId, (all) => all.some((s) => s.name === `task ${namespace}/${taskName}`) && all.some((s) => s.name === 'approval approve'));

    // Every span of the task is in its trace, and only its.
    expect(spans.every((s) => s.attributes['chainwarden.task.uid'] === uid)).toBe(true);
    const [root] = named(spans, `task ${namespace}/${taskName}`);
    expect(root).toBeDefined();
    expect(root?.parentSpanId).toBe('');
    expect(root?.attributes['chainwarden.task.state']).toBe('Violated');
    expect(root?.status.code).toBe(2); // ERROR
    expect(root?.resource['service.name']).toBe('chainwarden');
    expect(BigInt(root?.endTimeUnixNano ?? 0)).toBeGreaterThan(BigInt(root?.startTimeUnixNano ?? 0));

    const hop = (id: string) => spans.find((s) => s.attributes['chainwarden.hop.hopId'] === id && s.name.startsWith('hop '));
    const readSpan = hop(read.body.hopId);
    const commentSpan = hop(comment.body.hopId);
    const refundSpan = hop(refund);
    const freezeSpan = hop(freeze.body.hopId);
    // The hop tree: read is a first hop (child of the task), comment a child of read, freeze of comment.
    expect(readSpan?.parentSpanId).toBe(root?.spanId);
    expect(commentSpan?.parentSpanId).toBe(readSpan?.spanId);
    expect(freezeSpan?.parentSpanId).toBe(commentSpan?.spanId);
    expect(refundSpan?.parentSpanId).toBe(root?.spanId);
    expect(readSpan).toMatchObject({
      name: 'hop tickets read',
      attributes: { 'chainwarden.tool': 'tickets', 'chainwarden.action': 'read', 'chainwarden.decision': 'allow', 'chainwarden.rule': 'read-and-comment', 'chainwarden.hop.dataClasses': ['pii'], 'chainwarden.resource': 'ticket/4711', 'chainwarden.hop.intent': 'read the ticket' },
    });
    expect(freezeSpan).toMatchObject({ attributes: { 'chainwarden.decision': 'deny', 'chainwarden.rule': 'never-admin-payments' }, status: { code: 2 } });
    expect(freezeSpan?.status.message).toContain('never-admin-payments');
    expect(refundSpan?.attributes['chainwarden.decision']).toBe('pending_approval');

    // The approval answers the refund hop: a child of it, naming the approver and the reason.
    const [approval] = named(spans, 'approval approve');
    expect(approval?.parentSpanId).toBe(refundSpan?.spanId);
    expect(approval?.attributes).toMatchObject({ 'chainwarden.decision': 'allow', 'chainwarden.approval.reason': 'duplicate charge' });
    expect(String(approval?.attributes['chainwarden.approval.approver'])).not.toBe('');

    // The lifecycle: children of the task span, in order.
    const lifecycle = ['task admitted', 'identity bound', 'violation', 'revocation'].map((name) => named(spans, name)[0]);
    for (const span of lifecycle) expect(span?.parentSpanId).toBe(root?.spanId);
    const times = lifecycle.map((s) => BigInt(s?.startTimeUnixNano ?? 0));
    expect([...times].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))).toEqual(times);
    expect(named(spans, 'violation')[0]?.status.code).toBe(2);
    // No two spans share an id: a collector would otherwise merge or drop them.
    expect(new Set(spans.map((s) => s.spanId)).size).toBe(spans.length);
  });
});
