import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { linkRecords, GENESIS, type AuditEventType, type AuditRecord } from '../../../src/audit/record.js';
import { createLogger } from '../../../src/log.js';
import { Metrics } from '../../../src/runtime/metrics.js';
import { TraceExporter } from '../../../src/telemetry/exporter.js';
import { hopSpanIdOf, SpanMapper, taskSpanIdOf, traceIdOf } from '../../../src/telemetry/spans.js';

const task = { key: 'support/refund-4711', uid: 'uid-1' };
const records = (events: { type: AuditEventType; at?: string; data: Record<string, unknown> }[]): AuditRecord[] =>
  linkRecords(task, GENESIS, 0, events.map((e, i) => ({ at: e.at ?? new Date(Date.UTC(2026, 0, 1, 0, 0, i)).toISOString(), ...e })));

describe('SpanMapper', () => {
  it('gives a held hop one span, and its answer a child span naming the approver; the next hop nests under the held one', () => {
    const mapper = new SpanMapper(() => undefined);
    const spans = records([
      { type: 'hop_decided', data: { hopId: 'h1', tool: 'payments', action: 'refund', decision: 'pending_approval', reasons: [{ rule: 'refunds-need-a-human', effect: 'RequireApproval' }] } },
      { type: 'approval', data: { hopId: 'h1', approval: 'ok-1', decision: 'Approve', reason: 'dup', approver: { username: 'alice' } } },
      { type: 'hop_decided', data: { hopId: 'h1', tool: 'payments', action: 'refund', decision: 'allow', reasons: [{ rule: 'approval:ok-1', effect: 'Allow' }] } },
      { type: 'hop_decided', data: { hopId: 'h2', parentHop: 'h1', tool: 'email', action: 'send', decision: 'deny', reasons: [{ rule: 'no-exfiltration', effect: 'Deny' }] } },
    ]).flatMap((r) => mapper.map(r));
    expect(spans.map((s) => s.name)).toEqual(['hop payments refund', 'approval approve', 'hop email send']);
    const [held, answer, next] = spans;
    expect(held).toMatchObject({ traceId: traceIdOf('uid-1'), spanId: hopSpanIdOf('uid-1', 'h1'), parentSpanId: taskSpanIdOf('uid-1'), error: undefined });
    expect(answer).toMatchObject({ parentSpanId: held?.spanId, attributes: { 'chainwarden.approval.approver': 'alice', 'chainwarden.approval.reason': 'dup', 'chainwarden.rule': 'approval:ok-1' } });
    expect(answer?.spanId).not.toBe(held?.spanId);
    expect(next).toMatchObject({ parentSpanId: held?.spanId, error: 'denied by no-exfiltration' });
  });

  it('names a timed-out hold, and a held hop denied for overflowing the pending cap, as answers to the hop', () => {
    const mapper = new SpanMapper(() => undefined);
    const spans = records([
      { type: 'hop_decided', data: { hopId: 'h1', decision: 'deny', reasons: [{ rule: 'approval-timeout', effect: 'Deny' }] } },
      { type: 'hop_decided', data: { hopId: 'h2', decision: 'deny', reasons: [{ rule: 'limit:pendingHops', effect: 'Deny' }] } },
    ]).flatMap((r) => mapper.map(r));
    expect(spans.map((s) => [s.name, s.parentSpanId])).toEqual([
      ['approval timed out', hopSpanIdOf('uid-1', 'h1')],
      ['held hop deny', hopSpanIdOf('uid-1', 'h2')],
    ]);
  });

  it('closes the task span at revocation, from when the task was created, with its final state', () => {
    const created = Date.UTC(2025, 11, 31, 23, 59, 0);
    const mapper = new SpanMapper((key) => (key === task.key ? created : undefined));
    const [record] = records([{ type: 'revocation', data: { state: 'Completed', awsDenyInPlace: true } }]);
    const spans = mapper.map(record as AuditRecord);
    expect(spans.map((s) => s.name)).toEqual(['revocation', `task ${task.key}`]);
    expect(spans[1]?.parentSpanId).toBeUndefined();
    expect(spans[1]).toMatchObject({ spanId: taskSpanIdOf('uid-1'), startMs: created, endMs: Date.parse(record?.at ?? ''), error: undefined, attributes: { 'chainwarden.task.state': 'Completed' } });
  });

  it('keeps an agent inside its own trace: a parentHop naming another task\'s hop, or the task itself, grafts nothing elsewhere', () => {
    const mapper = new SpanMapper(() => undefined);
    const other = { uid: 'uid-2' };
    const [span] = mapper.map(
      records([{ type: 'hop_decided', data: { hopId: 'h9', parentHop: 'their-hop', tool: 'tickets', action: 'read', decision: 'allow', reasons: [] } }])[0] as AuditRecord,
    );
    expect(span?.traceId).toBe(traceIdOf('uid-1'));
    expect(span?.parentSpanId).toBe(hopSpanIdOf('uid-1', 'their-hop'));
    expect(span?.parentSpanId).not.toBe(hopSpanIdOf(other.uid, 'their-hop'));
    // A hop cannot take the task span's id, whatever it is called.
    for (const hopId of ['task', taskSpanIdOf('uid-1'), '']) expect(hopSpanIdOf('uid-1', hopId)).not.toBe(taskSpanIdOf('uid-1'));
  });

  it('never throws, and gives well-formed ids, whatever a record holds (a stream can be forged)', () => {
    const types = ['task_admitted', 'identity_bound', 'credential_issued', 'hop_decided', 'approval', 'violation', 'revocation', 'completion', 'expiry'] as const;
    fc.assert(
      fc.property(fc.constantFrom(...types), fc.dictionary(fc.constantFrom('hopId', 'parentHop', 'decision', 'reasons', 'attributes', 'state', 'dataClasses', 'approver'), fc.anything()), fc.string(), (type, data, at) => {
        const mapper = new SpanMapper(() => undefined);
        const [record] = records([{ type, data, at }]);
        for (const span of mapper.map(record as AuditRecord)) {
          expect(span.traceId).toMatch(/^[0-9a-f]{32}$/);
          expect(span.spanId).toMatch(/^[0-9a-f]{16}$/);
          for (const value of Object.values(span.attributes)) expect(['string', 'number', 'boolean', 'object']).toContain(typeof value);
        }
      }),
    );
  });
});

describe('TraceExporter', () => {
  it('counts spans an endpoint refuses and logs it, and sends them as OTLP when it accepts', async () => {
    let answer = 400;
    const bodies: string[] = [];
    const keys: unknown[] = [];
    const server = createServer((req, res) => {
      keys.push(req.headers['api-key']);
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        bodies.push(Buffer.concat(chunks).toString('utf8'));
        res.writeHead(answer, { 'content-type': 'application/json' }).end('{}');
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const lines: string[] = [];
    const metrics = new Metrics();
    // The chart puts a Secret's headers here; the collector must get them.
    process.env.OTEL_EXPORTER_OTLP_TRACES_HEADERS = 'api-key=s3cret-otlp';
    const exporter = new TraceExporter({
      endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`,
      instance: 'replica-a',
      flushMs: 10,
      log: createLogger({ level: 'warn' }, { write: (l: string) => void lines.push(l) }),
      metrics,
      taskStart: () => undefined,
    });
    try {
      const [hop] = records([{ type: 'hop_decided', data: { hopId: 'h1', tool: 'tickets', action: 'read', decision: 'allow', reasons: [] } }]);
      exporter.record(hop as AuditRecord);
      await exporter.flush();
      expect(metrics.render()).toContain('chainwarden_trace_spans_total{result="failed"} 1');
      expect(lines.join('')).toContain('spans not accepted by the OTLP endpoint');
      answer = 200;
      exporter.record(hop as AuditRecord);
      await exporter.flush();
      expect(metrics.render()).toContain('chainwarden_trace_spans_total{result="exported"} 1');
      expect(bodies.at(-1)).toContain('"service.instance.id"');
      expect(bodies.at(-1)).toContain(hopSpanIdOf('uid-1', 'h1'));
      expect(keys).toEqual(['s3cret-otlp', 's3cret-otlp']);
    } finally {
      delete process.env.OTEL_EXPORTER_OTLP_TRACES_HEADERS;
      await exporter.shutdown();
      await new Promise((r) => server.close(r));
    }
  });
});
