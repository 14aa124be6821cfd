import { createHash } from 'node:crypto';
import type { AuditRecord } from '../audit/record.js';
import { APPROVAL_TIMEOUT_RULE } from '../api/schema.js';

/**
 * The audit stream as OpenTelemetry spans. A task is one trace; its span is the root, every
 * lifecycle record is a child of it, and every hop is a child of the hop that made it (a first
 * hop, of the task). Ids are derived from the task's uid and the hop's id, so any replica can
 * write any span without asking another which id its parent got, and a collector sees one tree
 * however the records were spread over replicas.
 */
export interface SpanData {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  startMs: number;
  endMs: number;
  /** An error status, with the rule that refused or ended it; an ok span has none. */
  error?: string;
  attributes: Record<string, string | number | boolean | string[]>;
}

const digest = (text: string, bytes: number) => createHash('sha256').update(text).digest('hex').slice(0, bytes * 2);

export const traceIdOf = (taskUid: string) => digest(`chainwarden/task/${taskUid}`, 16);
export const taskSpanIdOf = (taskUid: string) => digest(`chainwarden/task-span/${taskUid}`, 8);
export const hopSpanIdOf = (taskUid: string, hopId: string) => digest(`chainwarden/hop/${taskUid}/${hopId}`, 8);
const recordSpanIdOf = (record: AuditRecord) => digest(`chainwarden/record/${record.taskUid}/${record.seq}/${record.hash}`, 8);

/** The rules that answer a hop which was held for approval: the second decision a hop can get. */
const RESOLVING_RULE = new RegExp(`^(approval:.*|${APPROVAL_TIMEOUT_RULE}|limit:pendingHops)$`);

interface Reason {
  rule?: unknown;
  effect?: unknown;
}

const text = (value: unknown): string => (typeof value === 'string' ? value : typeof value === 'number' || typeof value === 'boolean' ? String(value) : '');
const rulesOf = (reasons: unknown): string[] => (Array.isArray(reasons) ? reasons.map((r) => text((r as Reason | null)?.rule)).filter((r) => r !== '') : []);

/** Whether this hop record answers a hop that was already recorded as waiting for approval. */
export function resolvesHeldHop(record: AuditRecord): boolean {
  const d = record.data as { decision?: unknown; reasons?: unknown };
  return record.type === 'hop_decided' && d.decision !== 'pending_approval' && rulesOf(d.reasons).some((r) => RESOLVING_RULE.test(r));
}

type Attributes = SpanData['attributes'];

/** Copies the scalar fields of `data` a span should carry, under `prefix`. */
function scalars(data: Record<string, unknown>, fields: readonly string[], prefix: string, out: Attributes): void {
  for (const field of fields) {
    const value = data[field];
    if (typeof value === 'string' || typeof value === 'boolean' || (typeof value === 'number' && Number.isFinite(value))) out[`${prefix}${field}`] = value;
  }
}

function taskAttributes(record: AuditRecord): Attributes {
  const [namespace = '', name = ''] = record.task.split('/');
  return { 'chainwarden.task': record.task, 'chainwarden.task.uid': record.taskUid, 'k8s.namespace.name': namespace, 'chainwarden.task.name': name };
}

const LIFECYCLE_FIELDS: Partial<Record<AuditRecord['type'], readonly string[]>> = {
  task_admitted: ['policy', 'serviceAccount', 'ttl', 'deadline', 'intent'],
  identity_bound: ['spiffeID'],
  credential_issued: ['credential', 'roleArn', 'accessKeyId', 'expiration', 'sessionName', 'durationSeconds', 'replica'],
  violation: ['hopId', 'rule', 'message', 'onViolation'],
  completion: ['reason', 'pod'],
  expiry: ['deadline'],
  revocation: ['state', 'awsDenyInPlace', 'marker'],
};

function hopSpan(record: AuditRecord, hopId: string, at: number, approval: AuditRecord | undefined): SpanData {
  const d = record.data;
  const rules = rulesOf(d.reasons);
  // The hop's own facts under the names the trace contract gives them; the rest under `chainwarden.hop.`.
  const attributes: Attributes = { ...taskAttributes(record), 'chainwarden.rule': rules.join(', ') };
  scalars(d, ['tool', 'action', 'resource', 'decision'], 'chainwarden.', attributes);
  scalars(d, ['hopId', 'depth', 'intent', 'parentHop', 'pod', 'wouldDeny', 'digest'], 'chainwarden.hop.', attributes);
  if (Array.isArray(d.dataClasses)) attributes['chainwarden.hop.dataClasses'] = d.dataClasses.map(String);
  if (d.attributes && typeof d.attributes === 'object') {
    for (const [key, value] of Object.entries(d.attributes as Record<string, unknown>)) attributes[`chainwarden.hop.attribute.${key}`] = typeof value === 'object' && value !== null ? JSON.stringify(value) : String(value);
  }
  const traceId = traceIdOf(record.taskUid);
  const error = d.decision === 'deny' ? `denied by ${rules.join(', ') || 'policy'}` : undefined;
  if (resolvesHeldHop(record)) {
    // The answer to a held hop: a child of the hop that waited, with who answered and why.
    if (approval) scalars(approval.data, ['approval', 'decision', 'reason'], 'chainwarden.approval.', attributes);
    const approver = (approval?.data as { approver?: { username?: unknown } } | undefined)?.approver?.username;
    if (typeof approver === 'string') attributes['chainwarden.approval.approver'] = approver;
    const name = rules.includes(APPROVAL_TIMEOUT_RULE) ? 'approval timed out' : approval ? `approval ${text(approval.data.decision).toLowerCase()}` : `held hop ${text(d.decision)}`;
    return { traceId, spanId: recordSpanIdOf(record), parentSpanId: hopSpanIdOf(record.taskUid, hopId), name, startMs: at, endMs: at, error, attributes };
  }
  const parent = typeof d.parentHop === 'string' && d.parentHop !== '' ? hopSpanIdOf(record.taskUid, d.parentHop) : taskSpanIdOf(record.taskUid);
  return { traceId, spanId: hopSpanIdOf(record.taskUid, hopId), parentSpanId: parent, name: `hop ${text(d.tool)} ${text(d.action)}`, startMs: at, endMs: at, error, attributes };
}

/**
 * Turns audit records into spans as they are written. Stateful only in two small ways: an
 * approval record waits for the hop record that follows it in the same batch, and the task span
 * (which covers the task's whole life) is written with the task's final record, starting when
 * `taskStart` says the task was created.
 */
export class SpanMapper {
  private readonly approvals = new Map<string, AuditRecord>();

  constructor(private readonly taskStart: (task: string) => number | undefined) {}

  map(record: AuditRecord): SpanData[] {
    const at = Date.parse(record.at);
    if (!Number.isFinite(at)) return [];
    const d = record.data as { hopId?: unknown };
    if (record.type === 'approval') {
      if (typeof d.hopId === 'string') {
        this.approvals.set(`${record.taskUid}/${d.hopId}`, record);
        // Only ever a handful wait for their hop record; a stream that never sends it cannot grow this.
        if (this.approvals.size > 1_000) this.approvals.delete(this.approvals.keys().next().value as string);
      }
      return [];
    }
    if (record.type === 'hop_decided') {
      if (typeof d.hopId !== 'string') return [];
      const key = `${record.taskUid}/${d.hopId}`;
      const approval = this.approvals.get(key);
      this.approvals.delete(key);
      return [hopSpan(record, d.hopId, at, approval)];
    }
    const attributes = taskAttributes(record);
    scalars(record.data, LIFECYCLE_FIELDS[record.type] ?? [], `chainwarden.${record.type}.`, attributes);
    const traceId = traceIdOf(record.taskUid);
    const taskSpanId = taskSpanIdOf(record.taskUid);
    const spans: SpanData[] = [
      {
        traceId,
        spanId: recordSpanIdOf(record),
        parentSpanId: taskSpanId,
        name: record.type.replace(/_/g, ' '),
        startMs: at,
        endMs: at,
        error: record.type === 'violation' ? text(record.data.message) || 'violation' : undefined,
        attributes,
      },
    ];
    if (record.type === 'revocation') {
      // The last record a task gets: its span can be closed now, from creation to revocation.
      const state = text(record.data.state);
      const start = Math.min(this.taskStart(record.task) ?? at, at);
      spans.push({
        traceId,
        spanId: taskSpanId,
        name: `task ${record.task}`,
        startMs: start,
        endMs: at,
        error: state === 'Violated' ? 'the task violated its policy' : undefined,
        attributes: { ...taskAttributes(record), 'chainwarden.task.state': state },
      });
    }
    return spans;
  }
}
