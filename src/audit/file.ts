import { createWriteStream, type WriteStream } from 'node:fs';
import type { Logger } from '../log.js';
import { systemClock, type Clock } from '../runtime/clock.js';
import type { Metrics } from '../runtime/metrics.js';
import { recordJson, type AuditRecord } from './record.js';

export interface AuditFileOptions {
  path: string;
  log: Logger;
  metrics?: Metrics;
  clock?: Clock;
  /** After a write error, records are dropped (and counted) for this long before the file is reopened. */
  retryAfterMs?: number;
  /** Records are dropped (and counted) while more than this is waiting for a slow disk. */
  maxBufferedBytes?: number;
}

/**
 * The operator's audit file: one JSON line per record, appended. The file is a copy; every
 * record also goes to the operator's log, and the chain head lives in the task's status. So a
 * full disk, a removed directory or a slow volume must never stop the operator: a write error
 * is logged and counted (`chainwarden_audit_file_errors_total`), records that cannot be written
 * are counted (`chainwarden_audit_file_dropped_records_total`), the file is reopened after
 * `retryAfterMs`, and a gap left in the file shows up in `chainwarden audit verify`.
 * `close()` flushes what is buffered and resolves once the file is closed, error or not.
 */
export class AuditFileWriter {
  private stream: WriteStream | undefined;
  private brokenUntil = 0;
  private closed = false;
  private errorCount = 0;
  private droppedCount = 0;
  private readonly clock: Clock;
  private stored: Promise<void> = Promise.resolve();

  constructor(private readonly options: AuditFileOptions) {
    this.clock = options.clock ?? systemClock;
  }

  get errors(): number {
    return this.errorCount;
  }

  get dropped(): number {
    return this.droppedCount;
  }

  write(record: AuditRecord): void {
    const stream = this.open();
    if (!stream || stream.writableLength > (this.options.maxBufferedBytes ?? 64 * 1024 * 1024)) {
      this.drop();
      return;
    }
    const line = `{"time":"${new Date(this.clock.now()).toISOString()}","audit":${recordJson(record)}}\n`;
    this.stored = new Promise((resolve) => stream.write(line, () => resolve()));
  }

  /**
   * Resolves once every record written so far is with the operating system, or was given up on
   * (a write error, a full buffer): a killed process loses nothing `flushed` has answered for.
   */
  flushed(): Promise<void> {
    return this.stored;
  }

  async close(): Promise<void> {
    this.closed = true;
    const stream = this.stream;
    this.stream = undefined;
    if (!stream || stream.closed) return;
    await new Promise<void>((resolve) => {
      stream.once('close', resolve);
      stream.end();
    });
  }

  private open(): WriteStream | undefined {
    if (this.closed) return undefined;
    if (this.stream) return this.stream;
    if (this.clock.now() < this.brokenUntil) return undefined;
    const stream = createWriteStream(this.options.path, { flags: 'a' });
    stream.on('error', (err) => this.failed(stream, err));
    this.stream = stream;
    return stream;
  }

  private failed(stream: WriteStream, err: Error): void {
    this.errorCount++;
    this.options.metrics?.counter('chainwarden_audit_file_errors_total', 'Errors writing the audit file; records still reach the log.').inc();
    this.options.log.error({ err, file: this.options.path }, 'writing the audit file failed; audit records go to the log only until it is reopened');
    if (this.stream === stream) this.stream = undefined;
    this.brokenUntil = this.clock.now() + (this.options.retryAfterMs ?? 5_000);
  }

  private drop(): void {
    this.droppedCount++;
    this.options.metrics?.counter('chainwarden_audit_file_dropped_records_total', 'Audit records not written to the audit file (they are still in the log).').inc();
  }
}
