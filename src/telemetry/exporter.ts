import { ExportResultCode } from '@opentelemetry/core';
import { SpanKind, SpanStatusCode, TraceFlags, type HrTime } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, type ReadableSpan, type SpanExporter } from '@opentelemetry/sdk-trace';
import type { AuditRecord } from '../audit/record.js';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../runtime/metrics.js';
import { SpanMapper, type SpanData } from './spans.js';

export interface TracingOptions {
  /** The OTLP/HTTP traces URL, e.g. http://otel-collector.observability:4318/v1/traces. */
  endpoint: string;
  /** `service.name` of every span; OTEL_SERVICE_NAME, else chainwarden. */
  serviceName?: string;
  /** `service.instance.id`: this replica. */
  instance: string;
  /** Longest wait before a batch is sent. */
  flushMs?: number;
  log: Logger;
  metrics: Metrics;
  /** When the task was created, for the span that covers its life. */
  taskStart: (task: string) => number | undefined;
}

const hrTime = (ms: number): HrTime => [Math.floor(ms / 1000), Math.round((ms % 1000) * 1e6)];

/**
 * Sends the audit stream as OTLP/HTTP spans through the OpenTelemetry SDK's batching exporter
 * (headers from OTEL_EXPORTER_OTLP_TRACES_HEADERS or OTEL_EXPORTER_OTLP_HEADERS, retries as the
 * SDK does them). Spans are a view: what cannot be sent is counted and logged, and the audit
 * chain stays the record.
 */
export class TraceExporter {
  private readonly processor: BatchSpanProcessor;
  private readonly mapper: SpanMapper;
  private readonly resource;
  private readonly scope = { name: 'chainwarden' };

  constructor(private readonly options: TracingOptions) {
    this.mapper = new SpanMapper(options.taskStart);
    this.resource = resourceFromAttributes({ 'service.name': options.serviceName ?? process.env.OTEL_SERVICE_NAME ?? 'chainwarden', 'service.instance.id': options.instance });
    const otlp = new OTLPTraceExporter({ url: options.endpoint });
    const counted: SpanExporter = {
      export: (spans, done) =>
        otlp.export(spans, (result) => {
          const ok = result.code === ExportResultCode.SUCCESS;
          options.metrics.counter('chainwarden_trace_spans_total', 'Spans sent to the OTLP endpoint, by outcome', { result: ok ? 'exported' : 'failed' }).inc(spans.length);
          if (!ok) options.log.warn({ endpoint: options.endpoint, spans: spans.length, err: result.error ? errorMessage(result.error) : undefined }, 'spans not accepted by the OTLP endpoint; the audit chain still has every record');
          done(result);
        }),
      shutdown: () => otlp.shutdown(),
      forceFlush: () => otlp.forceFlush(),
    };
    this.processor = new BatchSpanProcessor({ exporter: counted, scheduledDelayMillis: options.flushMs ?? 1000, maxQueueSize: 8192, maxExportBatchSize: 512 });
  }

  /** Called with every audit record this replica writes, after it landed. */
  record(record: AuditRecord): void {
    for (const span of this.mapper.map(record)) this.processor.onEnd(this.readable(span));
  }

  private readable(span: SpanData): ReadableSpan {
    const context = { traceId: span.traceId, spanId: span.spanId, traceFlags: TraceFlags.SAMPLED };
    return {
      name: span.name,
      kind: SpanKind.INTERNAL,
      spanContext: () => context,
      parentSpanContext: span.parentSpanId ? { traceId: span.traceId, spanId: span.parentSpanId, traceFlags: TraceFlags.SAMPLED } : undefined,
      startTime: hrTime(span.startMs),
      endTime: hrTime(span.endMs),
      duration: hrTime(span.endMs - span.startMs),
      status: span.error ? { code: SpanStatusCode.ERROR, message: span.error } : { code: SpanStatusCode.UNSET },
      attributes: span.attributes,
      links: [],
      events: [],
      ended: true,
      resource: this.resource,
      instrumentationScope: this.scope,
      droppedAttributesCount: 0,
      droppedEventsCount: 0,
      droppedLinksCount: 0,
    };
  }

  /** Sends what is queued; what the endpoint refuses is already counted and logged. */
  flush(): Promise<void> {
    return this.processor.forceFlush().catch(() => undefined);
  }

  /** Sends what is queued, then stops. */
  shutdown(): Promise<void> {
    return this.processor.shutdown().catch(() => undefined);
  }
}
