import type { Readable } from 'node:stream';
import { GENESIS, hashRecord, AUDIT_EVENTS, type AuditRecord } from './record.js';

/** One audit record as found in a stream: the file it came from (if any) and its line there. */
export interface AuditEntry {
  record: AuditRecord;
  line: number;
  source?: string;
  /** When the line was written, if it says: after the head covering the record was in the task's status. */
  time?: string;
  /** What is wrong with the line beyond its record's content, e.g. a key written twice. */
  problem?: string;
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
    const { twice, aliased } = scanAudit(text);
    const problem =
      twice !== undefined
        ? `it holds the key ${JSON.stringify(twice)} twice: the hash covers the last, a person or another reader may see the first (edited)`
        : aliased !== undefined
          ? `it holds the number ${aliased.slice(0, 40)}, which the hash covers as ${JSON.stringify(Number(aliased))}: a person or another reader sees another value than the one hashed (edited)`
          : undefined;
    return {
      record: parsed.audit,
      line,
      ...(source === undefined ? {} : { source }),
      ...(typeof parsed.time === 'string' ? { time: parsed.time } : {}),
      ...(problem === undefined ? {} : { problem }),
    };
  } catch {
    return undefined; // not JSON: not a record
  }
}

/**
 * The first key the line's audit record (or the line itself, for `audit`) holds twice, if any.
 * `JSON.parse` keeps the last silently, and the hash is checked over what it kept, so a record
 * with a forged first copy of a key would verify while a person, or a reader that keeps the
 * first, sees the forgery. `text` has already parsed as JSON. Keys elsewhere in the line are the
 * logger's, which may repeat a binding, and are not looked at.
 */
export function duplicateAuditKey(text: string): string | undefined {
  return scanAudit(text).twice;
}

/**
 * What of the line's audit record the hash does not cover as written: a key held twice
 * (`duplicateAuditKey`), or a number not written as JSON.stringify writes it, which the hash
 * covers as another (`1e400` as null, `9007199254740993` as `9007199254740992`, `-0` as `0`).
 * Records are written by JSON.stringify, so only an edited one has such a number.
 */
function scanAudit(text: string): { twice?: string; aliased?: string } {
  // A Set of keys for each open object, undefined for each open array.
  const open: (Set<string> | undefined)[] = [];
  let expectKey = false;
  let auditAt = -1;
  let nextIsAudit = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      let end = i + 1;
      let escaped = false;
      while (text.charCodeAt(end) !== 0x22) {
        const backslash = text.charCodeAt(end) === 0x5c;
        escaped ||= backslash;
        end += backslash ? 2 : 1;
      }
      const keys = open[open.length - 1];
      if (expectKey && keys) {
        // Decoded: "a" and "\u0061" are one key.
        const key = escaped ? (JSON.parse(text.slice(i, end + 1)) as string) : text.slice(i + 1, end);
        const checked = auditAt > 0 || (open.length === 1 && key === 'audit');
        if (checked && keys.has(key)) return { twice: key };
        keys.add(key);
        nextIsAudit = open.length === 1 && key === 'audit';
        expectKey = false;
      }
      i = end;
    } else if (c === 0x7b) {
      open.push(new Set());
      if (nextIsAudit && auditAt < 0) auditAt = open.length;
      nextIsAudit = false;
      expectKey = true;
    } else if (c === 0x5b) {
      open.push(undefined);
      nextIsAudit = false;
    } else if (c === 0x7d || c === 0x5d) {
      open.pop();
      if (open.length < auditAt) auditAt = -1;
      expectKey = false;
    } else if (c === 0x2c) {
      expectKey = open[open.length - 1] !== undefined;
      nextIsAudit = false;
    } else if (auditAt > 0 && (c === 0x2d || (c >= 0x30 && c <= 0x39))) {
      let end = i + 1;
      while (end < text.length && /[0-9.eE+-]/.test(text.charAt(end))) end++;
      const token = text.slice(i, end);
      if (JSON.stringify(Number(token)) !== token) return { aliased: token };
      i = end - 1;
    }
  }
  return {};
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
 * Each audit record of a log as it is read, line by line, as `readAuditRecords` finds them in its
 * text: a log of any size is never held whole (a string cannot pass 512 MiB).
 */
export async function eachAuditRecord(input: Readable, source: string | undefined, each: (entry: AuditEntry) => void): Promise<void> {
  let line = 0;
  let rest = '';
  const take = (raw: string) => {
    line++;
    const entry = entryOf(raw, line, source);
    if (entry) each(entry);
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
}

/** The audit records of a log read line by line (see `eachAuditRecord`). */
export async function readAuditStream(input: Readable, source?: string): Promise<AuditEntry[]> {
  const out: AuditEntry[] = [];
  await eachAuditRecord(input, source, (e) => out.push(e));
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

/**
 * What linking needs of a record, checked and hashed as it was read: the record itself only when
 * the caller wants the chains' records back.
 */
interface Link {
  task: string;
  seq: number;
  prev: string;
  hash: string;
  /** The hash of the record's content with the hash it claims: equal for exact copies alone. */
  copy: string;
  line: number;
  source?: string;
  record?: AuditRecord;
}

const breakAt = (e: { line: number; source?: string }, task: string, seq: number, problem: string): ChainBreak => ({
  task,
  seq,
  line: e.line,
  ...(e.source === undefined ? {} : { source: e.source }),
  problem,
});

/**
 * Checks audit records as they are read, one at a time: each record's shape and its hash over
 * its content at once, its place in its task's chain (seq, and the hash of the record before)
 * at `finish`. Records are linked by seq and prev hash, not by line order, so the streams of
 * several replicas verify merged in any order; an edited, removed or inserted record still
 * breaks one of the three. A record cut off the end of a chain leaves no trace in the stream
 * itself: `checkHead` compares with the task's status. Without `keepRecords` only what linking
 * needs is held, a few hundred bytes a record, so a long stream verifies in little memory.
 */
export class ChainVerifier {
  private readonly breaks: ChainBreak[] = [];
  private readonly byTask = new Map<string, Link[]>();
  private readonly taskUids = new Map<string, string>();
  count = 0;

  constructor(private readonly keepRecords = true) {}

  add(e: AuditEntry): void {
    this.count++;
    const r = e.record;
    if (!wellFormed(r)) {
      const seq = Number.isSafeInteger(r.seq) ? r.seq : 0;
      this.breaks.push(breakAt(e, typeof r.task === 'string' ? r.task : '?', seq, 'it is not a well-formed audit record'));
      return;
    }
    const computed = hashRecord(r);
    if (computed !== r.hash) this.breaks.push(breakAt(e, r.task, r.seq, 'its content does not match its hash (edited)'));
    if (e.problem) this.breaks.push(breakAt(e, r.task, r.seq, e.problem));
    const key = `${r.task}#${r.taskUid}`;
    // A record whose content matches its hash is told apart by the hash alone; an edited one by both (never the same length).
    const link: Link = { task: r.task, seq: r.seq, prev: r.prev, hash: r.hash, copy: computed === r.hash ? r.hash : `${computed}${r.hash}`, line: e.line, ...(e.source === undefined ? {} : { source: e.source }), ...(this.keepRecords ? { record: r } : {}) };
    const chain = this.byTask.get(key);
    if (chain) chain.push(link);
    else {
      this.byTask.set(key, [link]);
      this.taskUids.set(key, r.taskUid);
    }
  }

  /** Every task's chain, and every break found, by task and seq. */
  finish(): { chains: ChainSummary[]; breaks: ChainBreak[] } {
    const chains = [...this.byTask].map(([key, links]) => linkChain(links, this.taskUids.get(key) ?? '', this.breaks));
    this.breaks.sort((a, b) => (a.task < b.task ? -1 : a.task > b.task ? 1 : a.seq - b.seq));
    return { chains, breaks: this.breaks };
  }
}

/**
 * Orders one task's records by their chain linkage, whatever order the lines came in: several
 * replicas write one task's chain, so their streams interleave, and files may be concatenated
 * in any order. Record k must be the only record with seq k and carry the hash of record k-1
 * (the genesis hash for k = 1). An exact copy of a record (the same stream given twice) is one
 * record.
 */
function linkChain(links: Link[], taskUid: string, breaks: ChainBreak[]): ChainSummary {
  const task = links[0]?.task ?? '';
  const bySeq = new Map<number, Link[]>();
  // Exact copies found by a lookup per record: a stream of thousands of forged variants of one seq costs one pass, not a comparison of every pair.
  const seen = new Set<string>();
  for (const l of links) {
    if (seen.has(l.copy)) continue;
    seen.add(l.copy);
    const same = bySeq.get(l.seq);
    if (same) same.push(l);
    else bySeq.set(l.seq, [l]);
  }
  const ordered: AuditRecord[] = [];
  let expected = 1;
  let prevHash: string | undefined = GENESIS;
  let last: Link | undefined;
  for (const seq of [...bySeq.keys()].sort((a, b) => a - b)) {
    const candidates = bySeq.get(seq) ?? [];
    const chosen = candidates.find((c) => c.prev === prevHash) ?? candidates[0];
    if (!chosen) continue;
    if (seq > expected) {
      const missing = seq === expected + 1 ? `record ${expected} is missing` : `records ${expected} to ${seq - 1} are missing`;
      breaks.push(breakAt(chosen, task, expected, `${missing} (record ${seq} is the next in the stream, at ${location(chosen)})`));
      // The link into a gap cannot be checked; the records after it still can.
      prevHash = undefined;
    }
    if (candidates.length > 1) {
      breaks.push(breakAt(chosen, task, seq, `${candidates.length} different records claim seq ${seq} (at ${candidates.map(location).join(', ')}): a record was inserted or altered`));
    } else if (prevHash !== undefined && chosen.prev !== prevHash) {
      breaks.push(breakAt(chosen, task, seq, `it does not link to record ${seq - 1}: that record was altered, or this one was`));
    }
    if (chosen.record) ordered.push(chosen.record);
    prevHash = chosen.hash;
    expected = seq + 1;
    last = chosen;
  }
  return { task, taskUid, count: last?.seq ?? 0, head: last?.hash ?? GENESIS, records: ordered };
}

/** `ChainVerifier` over records already read, keeping the chains' records (for `trace`). */
export function verifyChains(entries: readonly AuditEntry[]): { chains: ChainSummary[]; breaks: ChainBreak[] } {
  const verifier = new ChainVerifier();
  for (const e of entries) verifier.add(e);
  return verifier.finish();
}

/** What is wrong when a verified chain is compared with the head kept in the task's status. */
export function checkHead(chain: Pick<ChainSummary, 'count' | 'head'>, head: { head: string; count: number }): string | undefined {
  if (head.count > chain.count) return `the stream ends at record ${chain.count} but the task's status counts ${head.count}: records are missing (truncated)`;
  if (head.count < chain.count) return `the stream has ${chain.count} records but the task's status counts only ${head.count}`;
  if (head.head !== chain.head) return "the stream's last record does not hash to the head in the task's status";
  return undefined;
}
