import { hash } from 'node:crypto';

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

/**
 * Object keys in UTF-16 code unit order (as `<` compares, and as `sort()` does), sorted in place:
 * an insertion sort for the few keys a record's objects have, which `sort()` would first copy.
 */
function sortKeys(keys: string[]): string[] {
  if (keys.length > 16) return keys.sort();
  for (let i = 1; i < keys.length; i++) {
    const key = keys[i] as string;
    let j = i - 1;
    while (j >= 0 && (keys[j] as string) > key) {
      keys[j + 1] = keys[j] as string;
      j--;
    }
    keys[j + 1] = key;
  }
  return keys;
}

/** Keys as JSON strings, quoted once: records repeat the same few dozen keys on every hop. */
const quotedKeys = new Map<string, string>();
const MAX_QUOTED_KEYS = 4096;

function quoted(key: string): string {
  let q = quotedKeys.get(key);
  if (q === undefined) {
    q = JSON.stringify(key);
    if (quotedKeys.size >= MAX_QUOTED_KEYS) quotedKeys.clear();
    if (key.length <= 64) quotedKeys.set(key, q);
  }
  return q;
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
  // of entries a map-and-join would make, nor the copy sort() makes of the keys.
  const object = value as Record<string, unknown>;
  let out = '{';
  for (const key of sortKeys(Object.keys(object))) {
    const v = object[key];
    if (v === undefined) continue;
    out += `${out.length > 1 ? ',' : ''}${quoted(key)}:${canonicalJson(v)}`;
  }
  return `${out}}`;
}

export function hashRecord(record: Omit<AuditRecord, 'hash'>): string {
  const { hash: _ignored, ...rest } = record as AuditRecord;
  return hash('sha256', canonicalJson(rest), 'hex');
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

/**
 * Links `events` after `head` (which has `count` records before it). A record holds its event's
 * data as given, not a copy: the data is hashed here, and nothing changes an event once queued.
 */
export function linkRecords(
  task: { key: string; uid: string },
  head: string,
  count: number,
  events: readonly { type: AuditEventType; at: string; data: Record<string, unknown> }[],
): AuditRecord[] {
  const out: AuditRecord[] = [];
  let prev = head;
  events.forEach((e, i) => {
    const body = { v: 1 as const, task: task.key, taskUid: task.uid, seq: count + i + 1, prev, at: e.at, type: e.type, data: e.data };
    const canonical = canonicalJson(body);
    const record = { ...body, hash: hash('sha256', canonical, 'hex') };
    linkedJson.set(record, `${canonical.slice(0, -1)},"hash":"${record.hash}"}`);
    out.push(record);
    prev = record.hash;
  });
  return out;
}
