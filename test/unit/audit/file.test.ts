import { existsSync, mkdirSync, mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { AuditFileWriter } from '../../../src/audit/file.js';
import { GENESIS, linkRecords } from '../../../src/audit/record.js';
import { readAuditRecords, verifyChains } from '../../../src/audit/verify.js';
import { createLogger } from '../../../src/log.js';
import { Metrics } from '../../../src/runtime/metrics.js';

const records = linkRecords({ key: 'ns/t', uid: 'u' }, GENESIS, 0, Array.from({ length: 200 }, (_, i) => ({ type: 'hop_decided' as const, at: new Date(i * 1000).toISOString(), data: { i } })));

function capture() {
  const lines: string[] = [];
  return { lines, log: createLogger({ level: 'info' }, { write: (l: string) => void lines.push(l) }) };
}

describe('AuditFileWriter', () => {
  it('appends one line per record and close() resolves once everything is on disk', async () => {
    const file = path.join(mkdtempSync(path.join(os.tmpdir(), 'audit-file-')), 'audit.jsonl');
    const writer = new AuditFileWriter({ path: file, log: capture().log });
    for (const r of records) writer.write(r);
    await writer.close();
    const found = readAuditRecords(readFileSync(file, 'utf8'));
    expect(found).toHaveLength(200);
    expect(verifyChains(found).breaks).toEqual([]);
    writer.write(records[0]!);
    expect(writer.dropped).toBe(1);
  });

  it('flushed() resolves once every record written so far is in the file, with the file still open', async () => {
    const file = path.join(mkdtempSync(path.join(os.tmpdir(), 'audit-file-')), 'audit.jsonl');
    const writer = new AuditFileWriter({ path: file, log: capture().log });
    for (const r of records) writer.write(r);
    // The file is opened and written on another thread: at first nothing is in it.
    expect(existsSync(file) ? readAuditRecords(readFileSync(file, 'utf8')) : []).not.toHaveLength(200);
    await writer.flushed();
    expect(readAuditRecords(readFileSync(file, 'utf8'))).toHaveLength(200);
    await writer.close();
  });

  it('a write error is logged and counted, never thrown, and the file is reopened later', async () => {
    const dir = path.join(mkdtempSync(path.join(os.tmpdir(), 'audit-file-')), 'not-yet');
    const file = path.join(dir, 'audit.jsonl');
    let now = 0;
    const metrics = new Metrics();
    const { lines, log } = capture();
    const writer = new AuditFileWriter({ path: file, log, metrics, clock: { now: () => now }, retryAfterMs: 1000 });
    writer.write(records[0]!);
    await expect.poll(() => writer.errors).toBe(1);
    expect(lines.join('')).toMatch(/writing the audit file failed/);
    expect(metrics.render()).toMatch(/chainwarden_audit_file_errors_total 1/);
    writer.write(records[1]!);
    expect(writer.dropped).toBe(1);

    mkdirSync(dir);
    now = 1000;
    writer.write(records[2]!);
    await writer.close();
    expect(readAuditRecords(readFileSync(file, 'utf8')).map((e) => e.record.seq)).toEqual([3]);
    expect(writer.errors).toBe(1);
  });

  it.skipIf(!existsSync('/dev/full'))('a full disk (ENOSPC) is an error counted, and close() still resolves', async () => {
    const writer = new AuditFileWriter({ path: '/dev/full', log: capture().log });
    for (const r of records.slice(0, 5)) writer.write(r);
    await expect.poll(() => writer.errors).toBeGreaterThan(0);
    await writer.close();
  });
});
