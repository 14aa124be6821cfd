import { createHash } from 'node:crypto';

/** The hash before a task's first record. */
export const GENESIS = '0'.repeat(64);

export const AUDIT_EVENTS = ['task_admitted', 'identity_bound', 'credential_issued', 'hop_decided', 'approval', 'violation', 'revocation', 'completion', 'expiry'] as const;
export type AuditEventType = (typeof AUDIT_EVENTS)[number];

/** One audit record; `hash` covers every other field in canonical form, `prev` links the chain. */
export interface AuditRecord {
  v: 1;
  /** namespace/name */
  task: string;
  taskUid: string;
  seq: number;
  prev: string;
  at: string;
  type: AuditEventType;
  data: Record<string, unknown>;
  hash: string;
}

/** JSON with object keys sorted at every level and no whitespace: one byte string per value. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (Array.isArray(value)) {
    let out = '[';
    for (let i = 0; i < value.length; i++) out += (i > 0 ? ',' : '') + canonicalJson(value[i]);
    return `${out}]`;
  }
  // Every record is hashed in this form on the hop path: built in one pass, without the arrays
  // of entries a map-and-join would make. sort() orders by UTF-16 code units, as `<` does.
  const object = value as Record<string, unknown>;
  let out = '{';
  for (const key of Object.keys(object).sort()) {
    const v = object[key];
    if (v === undefined) continue;
    out += `${out.length > 1 ? ',' : ''}${JSON.stringify(key)}:${canonicalJson(v)}`;
  }
  return `${out}}`;
}

export function hashRecord(record: Omit<AuditRecord, 'hash'>): string {
  const { hash: _ignored, ...rest } = record as AuditRecord;
  return createHash('sha256').update(canonicalJson(rest)).digest('hex');
}

/**
 * Each linked record's JSON: the canonical form its hash was taken over, with the hash added. A
 * record is written to the status outbox and to the audit file; both write these bytes, so the
 * record is serialized once on the hop path, not three times, and what is written is exactly what
 * was hashed.
 */
const linkedJson = new WeakMap<AuditRecord, string>();

/** A record as one line of JSON: as it was hashed if it was linked here, else as JSON.stringify gives it. */
export function recordJson(record: AuditRecord): string {
  return linkedJson.get(record) ?? JSON.stringify(record);
}

/** Links `events` after `head` (which has `count` records before it). */
export function linkRecords(
  task: { key: string; uid: string },
  head: string,
  count: number,
  events: readonly { type: AuditEventType; at: string; data: Record<string, unknown> }[],
): AuditRecord[] {
  const out: AuditRecord[] = [];
  let prev = head;
  events.forEach((e, i) => {
    const body = { v: 1 as const, task: task.key, taskUid: task.uid, seq: count + i + 1, prev, at: e.at, type: e.type, data: structuredClone(e.data) };
    const canonical = canonicalJson(body);
    const record = { ...body, hash: createHash('sha256').update(canonical).digest('hex') };
    linkedJson.set(record, `${canonical.slice(0, -1)},"hash":"${record.hash}"}`);
    out.push(record);
    prev = record.hash;
  });
  return out;
}
