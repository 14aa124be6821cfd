import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ensureOtelCollector } from '../../src/controlplane/assets.js';
import { httpGet } from '../../src/controlplane/http.js';
import { freePort } from '../../src/controlplane/ports.js';
import { ManagedProcess } from '../../src/controlplane/process.js';
import { startWithFreshPorts } from '../../src/controlplane/start.js';

/** A real OpenTelemetry Collector: OTLP/HTTP in, every request it accepted written to a file as OTLP JSON. */
export interface Collector {
  /** The OTLP/HTTP traces URL. */
  tracesUrl: string;
  /** The file the collector writes (one ExportTraceServiceRequest per line). */
  file: string;
  stop(): Promise<void>;
}

export async function startCollector(dir: string, progress: (m: string) => void = () => {}): Promise<Collector> {
  const binary = await ensureOtelCollector(progress);
  return startWithFreshPorts(3, async () => {
    const port = await freePort();
    const file = path.join(dir, 'otel-spans.jsonl');
    const config = path.join(dir, 'otelcol.yaml');
    await writeFile(
      config,
      [
        'receivers:',
        '  otlp:',
        '    protocols:',
        '      http:',
        `        endpoint: 127.0.0.1:${port}`,
        'exporters:',
        '  file:',
        `    path: ${file}`,
        '    flush_interval: 100ms',
        'service:',
        '  telemetry:',
        '    metrics:',
        '      level: none',
        '    logs:',
        '      level: warn',
        '  pipelines:',
        '    traces:',
        '      receivers: [otlp]',
        '      exporters: [file]',
        '',
      ].join('\n'),
    );
    const proc = ManagedProcess.start({ name: 'otelcol', command: binary, args: ['--config', `file:${config}`], logFile: path.join(dir, 'otelcol.log') });
    const tracesUrl = `http://127.0.0.1:${port}/v1/traces`;
    try {
      // The receiver answers 405 to a GET once it listens.
      await proc.waitUntilReady(async () => (await httpGet(tracesUrl)).status === 405, 30_000);
    } catch (err) {
      await proc.stop(1000);
      throw err;
    }
    return { tracesUrl, file, stop: () => proc.stop() };
  });
}

interface OtlpValue {
  stringValue?: string;
  boolValue?: boolean;
  intValue?: string | number;
  doubleValue?: number;
  arrayValue?: { values?: OtlpValue[] };
}

/** One span as the collector received it, attributes flattened. */
export interface ReceivedSpan {
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  startTimeUnixNano: string;
  endTimeUnixNano: string;
  status: { code?: number; message?: string };
  attributes: Record<string, unknown>;
  resource: Record<string, unknown>;
}

const value = (v: OtlpValue | undefined): unknown =>
  v?.stringValue ?? v?.boolValue ?? (v?.intValue !== undefined ? Number(v.intValue) : undefined) ?? v?.doubleValue ?? v?.arrayValue?.values?.map(value);

const flatten = (attributes: { key: string; value?: OtlpValue }[] | undefined) => Object.fromEntries((attributes ?? []).map((a) => [a.key, value(a.value)]));

interface ExportRequest {
  resourceSpans?: {
    resource?: { attributes?: { key: string; value?: OtlpValue }[] };
    scopeSpans?: { spans?: (Omit<ReceivedSpan, 'attributes' | 'resource' | 'parentSpanId'> & { parentSpanId?: string; attributes?: { key: string; value?: OtlpValue }[] })[] }[];
  }[];
}

/** Every span the collector has written so far. */
export async function receivedSpans(file: string): Promise<ReceivedSpan[]> {
  const text = await readFile(file, 'utf8').catch(() => '');
  const spans: ReceivedSpan[] = [];
  const lines = text.split('\n');
  for (const [i, line] of lines.entries()) {
    if (line.trim() === '') continue;
    let request: ExportRequest;
    try {
      request = JSON.parse(line) as ExportRequest;
    } catch (err) {
      // The collector may be writing the last line as we read it.
      if (i === lines.length - 1) break;
      throw err;
    }
    for (const rs of request.resourceSpans ?? []) {
      const resource = flatten(rs.resource?.attributes);
      for (const ss of rs.scopeSpans ?? []) {
        for (const s of ss.spans ?? []) spans.push({ ...s, parentSpanId: s.parentSpanId ?? '', attributes: flatten(s.attributes), resource });
      }
    }
  }
  return spans;
}
