import type { Logger } from '../log.js';
import type { Clock } from '../runtime/clock.js';
import type { IamPort } from './iam.js';

/** The inline policy chainwarden keeps on every role tasks assume. */
export const REVOCATION_POLICY = 'chainwarden-revocations';
/** IAM's limit for all inline policies of one role, together. */
export const MAX_INLINE_POLICY_CHARS = 10_240;

const BUCKET_SECONDS = 600;
const MARKER_PREFIX = 'chainwarden-';

interface Statement {
  Sid: string;
  Effect: 'Deny';
  Action: '*';
  Resource: '*';
  Condition: Record<string, Record<string, string | string[]>>;
}

interface Document {
  Version: '2012-10-17';
  Statement: Statement[];
}

export interface RevocationEntry {
  /** The task's SourceIdentity marker. */
  marker: string;
  /** When every session the marker covers has expired; the entry is pruned after. */
  pruneAfter: number;
}

const empty = (): Document => ({ Version: '2012-10-17', Statement: [] });

function parse(text: string | undefined): Document {
  if (!text) return empty();
  const doc = JSON.parse(text) as Document;
  return { Version: '2012-10-17', Statement: Array.isArray(doc.Statement) ? doc.Statement : [doc.Statement] };
}

/** Statements are grouped by prune time (10-minute buckets); the Sid carries it. */
const bucketSid = (pruneAfter: number) => `ChainwardenRevoked${Math.ceil(pruneAfter / 1000 / BUCKET_SECONDS) * BUCKET_SECONDS}`;
const cutoffSid = (pruneAfter: number) => `ChainwardenCutoff${Math.ceil(pruneAfter / 1000 / BUCKET_SECONDS) * BUCKET_SECONDS}`;
const pruneTimeOf = (sid: string) => Number(/(\d+)$/.exec(sid)?.[1] ?? '0') * 1000;

const markersOf = (s: Statement): string[] => {
  const v = s.Condition.StringEquals?.['aws:SourceIdentity'];
  return v === undefined ? [] : Array.isArray(v) ? v : [v];
};

/**
 * Adds `entry` to the deny document, dropping what has expired. When the document would exceed
 * IAM's inline-policy size, every listed marker collapses into one cutoff statement: deny every
 * chainwarden session of the role issued before now. That keeps revocation whole at any scale;
 * its cost is that sessions of live tasks on the role, issued before the cutoff, are denied too
 * until their agents fetch new ones (see the README's limits).
 */
export function mergeRevocation(text: string | undefined, entry: RevocationEntry, now: number, maxChars = MAX_INLINE_POLICY_CHARS): { document: Document; collapsed: boolean } {
  const doc = prune(parse(text), now);
  const sid = bucketSid(entry.pruneAfter);
  const covered = doc.Statement.some((s) => (s.Sid.startsWith('ChainwardenCutoff') && pruneTimeOf(s.Sid) >= entry.pruneAfter && cutoffCovers(s, now)) || markersOf(s).includes(entry.marker));
  if (covered) return { document: doc, collapsed: false };
  const bucket = doc.Statement.find((s) => s.Sid === sid);
  if (bucket) {
    bucket.Condition.StringEquals = { 'aws:SourceIdentity': [...markersOf(bucket), entry.marker] };
  } else {
    doc.Statement.push({ Sid: sid, Effect: 'Deny', Action: '*', Resource: '*', Condition: { StringEquals: { 'aws:SourceIdentity': [entry.marker] } } });
  }
  if (JSON.stringify(doc).length <= maxChars) return { document: doc, collapsed: false };
  const latest = Math.max(entry.pruneAfter, ...doc.Statement.map((s) => pruneTimeOf(s.Sid)));
  return {
    collapsed: true,
    document: {
      Version: '2012-10-17',
      Statement: [
        {
          Sid: cutoffSid(latest),
          Effect: 'Deny',
          Action: '*',
          Resource: '*',
          Condition: { StringLike: { 'aws:SourceIdentity': `${MARKER_PREFIX}*` }, DateLessThan: { 'aws:TokenIssueTime': new Date(now).toISOString() } },
        },
      ],
    },
  };
}

/** A cutoff statement covers every session issued before its time; a marker revoked now was issued before now. */
function cutoffCovers(s: Statement, now: number): boolean {
  const cutoff = s.Condition.DateLessThan?.['aws:TokenIssueTime'];
  return typeof cutoff === 'string' && Date.parse(cutoff) >= now;
}

/** Drops statements whose sessions have all expired. */
export function prune(doc: Document, now: number): Document {
  return { Version: '2012-10-17', Statement: doc.Statement.filter((s) => !s.Sid.startsWith('Chainwarden') || pruneTimeOf(s.Sid) > now) };
}

/** Writes and prunes the AWS-side deny on each role a task could have assumed. */
export class Revoker {
  constructor(
    private readonly iam: IamPort,
    private readonly clock: Clock,
    private readonly log: Logger,
  ) {}

  /** Idempotent: a marker already denied is left as it is. Throws (retryable) when IAM cannot be written. */
  async deny(roleName: string, entry: RevocationEntry): Promise<void> {
    const now = this.clock.now();
    const current = await this.iam.getRolePolicy(roleName, REVOCATION_POLICY);
    const { document, collapsed } = mergeRevocation(current, entry, now);
    const next = JSON.stringify(document);
    if (next === current) return;
    await this.iam.putRolePolicy(roleName, REVOCATION_POLICY, next);
    if (collapsed) this.log.warn({ role: roleName }, 'revocation policy full: collapsed into a cutoff on every chainwarden session issued before now');
  }

  /** Removes expired entries; deletes the policy once nothing is left in it. */
  async prune(roleName: string): Promise<void> {
    const current = await this.iam.getRolePolicy(roleName, REVOCATION_POLICY);
    if (!current) return;
    const pruned = prune(parse(current), this.clock.now());
    if (pruned.Statement.length === 0) await this.iam.deleteRolePolicy(roleName, REVOCATION_POLICY);
    else if (JSON.stringify(pruned) !== current) await this.iam.putRolePolicy(roleName, REVOCATION_POLICY, JSON.stringify(pruned));
  }
}
