import type { Readable } from 'node:stream';
import { canonicalJson, GENESIS, hashRecord, AUDIT_EVENTS, type AuditRecord } from './record.js';

/** One audit record as found in a stream: the file it came from (if any) and its line there. */
export interface AuditEntry {
  record: AuditRecord;
  line: number;
  source?: string;
  /** When the line was written, if it says: after the head covering the record was in the task's status. */
  time?: string;
}

export interface ChainBreak {
  task: string;
  seq: number;
  /** The line of the record that shows the break (for a missing record: the next one there is). */
  line: number;
  source?: string;
  problem: string;
}

/** One task's chain, its records in chain order (by seq, each linked to the one before). */
export interface ChainSummary {
  task: string;
  taskUid: string;
  count: number;
  head: string;
  records: AuditRecord[];
}

/** One line of a log (pino JSON), as an entry if it carries an `audit` object. */
function entryOf(raw: string, line: number, source: string | undefined): AuditEntry | undefined {
  const text = raw.trim();
  if (!text.startsWith('{')) return undefined;
  try {
    const parsed = JSON.parse(text) as { audit?: AuditRecord; time?: unknown };
    if (!parsed.audit || typeof parsed.audit !== 'object' || parsed.audit.v !== 1) return undefined;
    return { record: parsed.audit, line, ...(source === undefined ? {} : { source }), ...(typeof parsed.time === 'string' ? { time: parsed.time } : {}) };
  } catch {
    return undefined; // not JSON: not a record
  }
}

/** Audit records in a stream of log lines (pino JSON): lines carrying an `audit` object. */
export function readAuditRecords(text: string, source?: string): AuditEntry[] {
  const out: AuditEntry[] = [];
  text.split('\n').forEach((raw, i) => {
    const entry = entryOf(raw, i + 1, source);
    if (entry) out.push(entry);
  });
  return out;
}

/**
 * The audit records of a log read line by line, as `readAuditRecords` finds them in its text: a
 * log of any size is never held whole (a string cannot pass 512 MiB), and `keep` drops the
 * records the caller has no use for as they are read.
 */
export async function readAuditStream(input: Readable, source?: string, keep: (record: AuditRecord) => boolean = () => true): Promise<AuditEntry[]> {
  const out: AuditEntry[] = [];
  let line = 0;
  let rest = '';
  const take = (raw: string) => {
    line++;
    const entry = entryOf(raw, line, source);
    if (entry && keep(entry.record)) out.push(entry);
  };
  input.setEncoding('utf8');
  for await (const chunk of input as AsyncIterable<string>) {
    let from = 0;
    for (let at = chunk.indexOf('\n'); at >= 0; at = chunk.indexOf('\n', from)) {
      take(rest + chunk.slice(from, at));
      rest = '';
      from = at + 1;
    }
    rest += chunk.slice(from);
  }
  take(rest);
  return out;
}

/** Where an entry is, for a person: `file:line`, or `line N` for a single unnamed stream. */
export const location = (e: { line: number; source?: string }): string => (e.source === undefined ? `line ${e.line}` : `${e.source}:${e.line}`);

const HASH = /^[0-9a-f]{64}$/;
const EVENTS = new Set<string>(AUDIT_EVENTS);

/** A stream may hold anything; only records of the right shape can be ordered and linked. */
function wellFormed(r: AuditRecord): boolean {
  const u = r as unknown as Record<string, unknown>;
  return (
    typeof u.task === 'string' &&
    typeof u.taskUid === 'string' &&
    Number.isSafeInteger(u.seq) &&
    (u.seq as number) >= 1 &&
    typeof u.prev === 'string' &&
    HASH.test(u.prev) &&
    typeof u.hash === 'string' &&
    HASH.test(u.hash) &&
    typeof u.at === 'string' &&
    typeof u.type === 'string' &&
    EVENTS.has(u.type) &&
    typeof u.data === 'object' &&
    u.data !== null &&
    !Array.isArray(u.data) &&
    // The whole record, not its data alone: any field nested thousands deep would exhaust the stack as it is hashed.
    nestedAtMost(u, MAX_DATA_DEPTH + 1)
  );
}

/**
 * How deep a record's data may nest. Ours nest three levels; a line nested thousands deep is no
 * record of ours, and hashing it would exhaust the stack: it is a break, named, not a crash.
 */
const MAX_DATA_DEPTH = 32;

function nestedAtMost(value: unknown, depth: number): boolean {
  if (value === null || typeof value !== 'object') return true;
  if (depth === 0) return false;
  return Object.values(value).every((v) => nestedAtMost(v, depth - 1));
}

const breakAt = (e: AuditEntry, seq: number, problem: string): ChainBreak => ({
  task: e.record.task,
  seq,
  line: e.line,
  ...(e.source === undefined ? {} : { source: e.source }),
  problem,
});

/**
 * Orders one task's records by their chain linkage, whatever order the lines came in: several
 * replicas write one task's chain, so their streams interleave, and files may be concatenated
 * in any order. Record k must be the only record with seq k and carry the hash of record k-1
 * (the genesis hash for k = 1). An exact copy of a record (the same stream given twice) is one
 * record.
 */
function linkChain(entries: AuditEntry[], breaks: ChainBreak[]): ChainSummary {
  const first = entries[0];
  const bySeq = new Map<number, AuditEntry[]>();
  // Each record's canonical form once, by seq: a stream of thousands of forged variants of one seq costs one pass, not a comparison of every pair.
  const seen = new Map<number, Set<string>>();
  for (const e of entries) {
    const forms = seen.get(e.record.seq) ?? new Set<string>();
    seen.set(e.record.seq, forms);
    const form = canonicalJson(e.record);
    if (forms.has(form)) continue;
    forms.add(form);
    const same = bySeq.get(e.record.seq) ?? [];
    same.push(e);
    bySeq.set(e.record.seq, same);
  }
  const ordered: AuditRecord[] = [];
  let expected = 1;
  let prevHash: string | undefined = GENESIS;
  for (const seq of [...bySeq.keys()].sort((a, b) => a - b)) {
    const candidates = bySeq.get(seq) ?? [];
    const chosen = candidates.find((c) => c.record.prev === prevHash) ?? candidates[0];
    if (!chosen) continue;
    if (seq > expected) {
      const missing = seq === expected + 1 ? `record ${expected} is missing` : `records ${expected} to ${seq - 1} are missing`;
      breaks.push(breakAt(chosen, expected, `${missing} (record ${seq} is the next in the stream, at ${location(chosen)})`));
      // The link into a gap cannot be checked; the records after it still can.
      prevHash = undefined;
    }
    if (candidates.length > 1) {
      breaks.push(breakAt(chosen, seq, `${candidates.length} different records claim seq ${seq} (at ${candidates.map(location).join(', ')}): a record was inserted or altered`));
    } else if (prevHash !== undefined && chosen.record.prev !== prevHash) {
      breaks.push(breakAt(chosen, seq, `it does not link to record ${seq - 1}: that record was altered, or this one was`));
    }
    ordered.push(chosen.record);
    prevHash = chosen.record.hash;
    expected = seq + 1;
  }
  const last = ordered.at(-1);
  return { task: first?.record.task ?? '', taskUid: first?.record.taskUid ?? '', count: last?.seq ?? 0, head: last?.hash ?? GENESIS, records: ordered };
}

/**
 * Checks every task's chain in the stream: each record's hash over its content, its link to
 * the record before, and an unbroken sequence from 1. Records are linked by seq and prev hash,
 * not by line order, so streams of several replicas verify merged in any order; an edited,
 * removed or inserted record still breaks one of the three. (A record cut off the end of a
 * chain leaves no trace in the stream itself: `checkHead` compares with the task's status.)
 */
export function verifyChains(entries: readonly AuditEntry[]): { chains: ChainSummary[]; breaks: ChainBreak[] } {
  const breaks: ChainBreak[] = [];
  const byTask = new Map<string, AuditEntry[]>();
  for (const e of entries) {
    if (!wellFormed(e.record)) {
      const seq = Number.isSafeInteger(e.record.seq) ? e.record.seq : 0;
      breaks.push({ ...breakAt(e, seq, 'it is not a well-formed audit record'), task: typeof e.record.task === 'string' ? e.record.task : '?' });
      continue;
    }
    if (hashRecord(e.record) !== e.record.hash) breaks.push(breakAt(e, e.record.seq, 'its content does not match its hash (edited)'));
    const key = `${e.record.task}#${e.record.taskUid}`;
    const chain = byTask.get(key);
    if (chain) chain.push(e);
    else byTask.set(key, [e]);
  }
  const chains = [...byTask.values()].map((chain) => linkChain(chain, breaks));
  breaks.sort((a, b) => (a.task < b.task ? -1 : a.task > b.task ? 1 : a.seq - b.seq));
  return { chains, breaks };
}

/** What is wrong when a verified chain is compared with the head kept in the task's status. */
export function checkHead(chain: Pick<ChainSummary, 'count' | 'head'>, head: { head: string; count: number }): string | undefined {
  if (head.count > chain.count) return `the stream ends at record ${chain.count} but the task's status counts ${head.count}: records are missing (truncated)`;
  if (head.count < chain.count) return `the stream has ${chain.count} records but the task's status counts only ${head.count}`;
  if (head.head !== chain.head) return "the stream's last record does not hash to the head in the task's status";
  return undefined;
}
