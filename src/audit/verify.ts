import { GENESIS, hashRecord, type AuditRecord } from './record.js';

export interface ChainBreak {
  task: string;
  seq: number;
  line: number;
  problem: string;
}

export interface ChainSummary {
  task: string;
  count: number;
  head: string;
}

/** Audit records in a stream of log lines (pino JSON): lines carrying an `audit` object. */
export function readAuditRecords(text: string): { record: AuditRecord; line: number }[] {
  const out: { record: AuditRecord; line: number }[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (!line.startsWith('{')) return;
    try {
      const parsed = JSON.parse(line) as { audit?: AuditRecord };
      if (parsed.audit && typeof parsed.audit === 'object' && parsed.audit.v === 1) out.push({ record: parsed.audit, line: i + 1 });
    } catch {
      // not JSON: not a record
    }
  });
  return out;
}

/**
 * Checks every task's chain in the stream: each record's hash over its content, its link to
 * the record before, and an unbroken sequence from 1. An edited, removed, reordered or inserted
 * record breaks one of the three.
 */
export function verifyChains(records: readonly { record: AuditRecord; line: number }[]): { chains: ChainSummary[]; breaks: ChainBreak[] } {
  const state = new Map<string, { head: string; count: number }>();
  const breaks: ChainBreak[] = [];
  for (const { record, line } of records) {
    const key = `${record.task}#${record.taskUid}`;
    const chain = state.get(key) ?? { head: GENESIS, count: 0 };
    const problems: string[] = [];
    if (hashRecord(record) !== record.hash) problems.push('its content does not match its hash (edited)');
    if (record.seq !== chain.count + 1) problems.push(`sequence ${record.seq} follows ${chain.count} (a record is missing, reordered or inserted)`);
    if (record.prev !== chain.head) problems.push('it does not link to the record before it');
    for (const problem of problems) breaks.push({ task: record.task, seq: record.seq, line, problem });
    state.set(key, { head: record.hash, count: record.seq });
  }
  const chains = [...state.entries()].map(([key, s]) => ({ task: key.slice(0, key.indexOf('#')), count: s.count, head: s.head }));
  return { chains, breaks };
}
