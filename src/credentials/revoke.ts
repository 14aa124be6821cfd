import { setTimeout as sleep } from 'node:timers/promises';
import { ChainwardenError, errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import type { Clock } from '../runtime/clock.js';
import { faultPoint } from '../runtime/faults.js';
import { isNoSuchEntity, policySize, ROLE_INLINE_POLICIES_MAX_CHARS, type IamPort } from './iam.js';
import { planAwsRetry } from './plan.js';
import { scrubOperatorIdentity } from './sts.js';

/** The inline policy chainwarden keeps on every role tasks assume. */
export const REVOCATION_POLICY = 'chainwarden-revocations';

const BUCKET_SECONDS = 600;
const MARKER_PREFIX = 'chainwarden-';
/** Only statements with these Sids and our shape are chainwarden's; everything else in the policy is kept as it is. */
const OUR_SID = /^Chainwarden(Revoked|Cutoff)(\d+)$/;

/** A policy document as IAM holds it. Statements are whatever someone wrote: we read ours, and keep the others untouched. */
export interface PolicyDocument {
  Version: string;
  Statement: unknown[];
  [key: string]: unknown;
}

export interface RevocationEntry {
  /** The task's SourceIdentity marker. */
  marker: string;
  /** When every session the marker covers has expired; the entry is pruned after. */
  pruneAfter: number;
}

/** An entry a Revoker wrote and still owes until `pruneAfter`; every session it covers was issued before `since`, the moment it was revoked. */
export interface OwedDeny extends RevocationEntry {
  since: number;
}

/** A statement chainwarden wrote: markers denied until a prune time, or a cutoff on every chainwarden session issued before a moment. */
type OurStatement = { kind: 'markers'; pruneAfter: number; markers: string[] } | { kind: 'cutoff'; pruneAfter: number; issuedBefore: number };

const isAccessDenied = (err: unknown) => ['AccessDenied', 'AccessDeniedException'].includes((err as { name?: string })?.name ?? '');

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function parse(text: string | undefined): PolicyDocument {
  const raw: unknown = text ? JSON.parse(text) : {};
  const doc = isRecord(raw) ? raw : {};
  const statements = doc.Statement === undefined ? [] : Array.isArray(doc.Statement) ? (doc.Statement as unknown[]) : [doc.Statement];
  return { ...doc, Version: typeof doc.Version === 'string' ? doc.Version : '2012-10-17', Statement: statements };
}

/** Statements are grouped by prune time (10-minute buckets); the Sid carries it. */
const bucketOf = (pruneAfter: number) => Math.ceil(pruneAfter / 1000 / BUCKET_SECONDS) * BUCKET_SECONDS;
const bucketSid = (pruneAfter: number) => `ChainwardenRevoked${bucketOf(pruneAfter)}`;
const cutoffSid = (pruneAfter: number) => `ChainwardenCutoff${bucketOf(pruneAfter)}`;

function ours(s: unknown): OurStatement | undefined {
  if (!isRecord(s) || typeof s.Sid !== 'string' || s.Effect !== 'Deny' || !isRecord(s.Condition)) return undefined;
  const sid = OUR_SID.exec(s.Sid);
  if (!sid) return undefined;
  const pruneAfter = Number(sid[2]) * 1000;
  if (sid[1] === 'Revoked') {
    const v = isRecord(s.Condition.StringEquals) ? s.Condition.StringEquals['aws:SourceIdentity'] : undefined;
    const markers = typeof v === 'string' ? [v] : Array.isArray(v) && v.every((m) => typeof m === 'string') ? v : undefined;
    return markers && { kind: 'markers', pruneAfter, markers };
  }
  const cutoff = isRecord(s.Condition.DateLessThan) ? s.Condition.DateLessThan['aws:TokenIssueTime'] : undefined;
  const issuedBefore = typeof cutoff === 'string' ? Date.parse(cutoff) : NaN;
  return Number.isNaN(issuedBefore) ? undefined : { kind: 'cutoff', pruneAfter, issuedBefore };
}

/** Whether a statement of ours denies every session of `entry` for as long as it must. */
function covers(s: OurStatement, entry: OwedDeny): boolean {
  if (s.pruneAfter < entry.pruneAfter) return false;
  return s.kind === 'markers' ? s.markers.includes(entry.marker) : s.issuedBefore >= entry.since;
}

function coveredBy(statements: readonly unknown[], entry: OwedDeny): boolean {
  return statements.some((s) => {
    const o = ours(s);
    return o !== undefined && covers(o, entry);
  });
}

/** Whether the policy text denies every session of `entry` until its prune time. */
export const denies = (text: string | undefined, entry: OwedDeny): boolean => coveredBy(parse(text).Statement, entry);

const markerStatement = (entry: RevocationEntry) => ({ Sid: bucketSid(entry.pruneAfter), Effect: 'Deny', Action: '*', Resource: '*', Condition: { StringEquals: { 'aws:SourceIdentity': [entry.marker] } } });

/** Adds the marker to its bucket's statement (a copy; the document's statements are not changed in place). */
function withMarker(statements: unknown[], entry: RevocationEntry): unknown[] {
  const sid = bucketSid(entry.pruneAfter);
  const at = statements.findIndex((s) => isRecord(s) && s.Sid === sid && ours(s)?.kind === 'markers');
  if (at < 0) return [...statements, markerStatement(entry)];
  const bucket = statements[at] as { Condition: { StringEquals: Record<string, unknown> } };
  const markers = (ours(bucket) as { markers: string[] }).markers;
  const next = { ...bucket, Condition: { ...bucket.Condition, StringEquals: { ...bucket.Condition.StringEquals, 'aws:SourceIdentity': [...markers, entry.marker] } } };
  return statements.map((s, i) => (i === at ? next : s));
}

export type RevocationPlan =
  /** `document` undefined: nothing is left in the policy, delete it. `changed` false: IAM already holds exactly this. */
  | { fits: true; document: PolicyDocument | undefined; changed: boolean; collapsed: boolean; size: number }
  /** Not even one cutoff beside the statements we keep fits in `budget`. */
  | { fits: false; needed: number };

/**
 * What `chainwarden-revocations` should hold: the current document without our expired entries,
 * plus every owed entry it does not cover. Statements chainwarden did not write stay as they are.
 * When the result exceeds `budget` (what the role's other inline policies leave of IAM's limit),
 * all our statements collapse into one cutoff: deny every chainwarden session of the role issued
 * before now. That keeps revocation whole at any scale; its cost is that sessions of live tasks
 * on the role, issued before the cutoff, are denied too until their agents fetch new ones (see
 * the README's limits).
 */
export function planRevocationPolicy(current: string | undefined, owed: readonly OwedDeny[], now: number, budget = ROLE_INLINE_POLICIES_MAX_CHARS): RevocationPlan {
  const before = parse(current);
  let statements = before.Statement.filter((s) => (ours(s)?.pruneAfter ?? Infinity) > now);
  for (const entry of owed) if (entry.pruneAfter > now && !coveredBy(statements, entry)) statements = withMarker(statements, entry);
  let document: PolicyDocument = { ...before, Statement: statements };
  let collapsed = false;
  const latest = Math.max(0, ...statements.map((s) => ours(s)?.pruneAfter ?? 0));
  if (policySize(JSON.stringify(document)) > budget && latest > 0) {
    document = { ...before, Statement: [...statements.filter((s) => !ours(s)), cutoffStatement(latest, now)] };
    collapsed = true;
  }
  const changed = JSON.stringify(document) !== JSON.stringify(before);
  const size = policySize(JSON.stringify(document));
  // What IAM already holds is not ours to refuse; only a write must fit.
  if (size > budget && changed) return { fits: false, needed: size };
  return { fits: true, document: document.Statement.length > 0 ? document : undefined, changed, collapsed, size };
}

/** Denies every chainwarden session of the role issued before `now`, until the latest prune time it replaces. */
const cutoffStatement = (pruneAfter: number, now: number) => ({
  Sid: cutoffSid(pruneAfter),
  Effect: 'Deny',
  Action: '*',
  Resource: '*',
  Condition: { StringLike: { 'aws:SourceIdentity': `${MARKER_PREFIX}*` }, DateLessThan: { 'aws:TokenIssueTime': new Date(now).toISOString() } },
});

/** The role's other inline policies leave too little room for even one cutoff statement: a person has to make room. */
export class RevocationPolicyFullError extends ChainwardenError {
  constructor(role: string, needed: number, budget: number) {
    super(
      'revocation_policy_full',
      `IAM role ${role}: its other inline policies leave ${Math.max(budget, 0)} of the role's ${ROLE_INLINE_POLICIES_MAX_CHARS} characters to ${REVOCATION_POLICY}, which needs ${needed} even collapsed into one cutoff; the deny is not written. Move the role's other inline policies into managed policies or shorten them (IAM counts all inline policies of a role together)`,
    );
    this.name = 'RevocationPolicyFullError';
  }
}

/** Throws when this process may no longer write (the leader-only writers: its lease may have passed to another replica). */
export type WriteGuard = () => void;

export interface RevokerOptions {
  /** Puts one pass may make while IAM keeps showing a deny it owes missing; then it throws (retryable). */
  attempts?: number;
  /** Waits between a put and the read that verifies it, growing with each retry; jittered. */
  backoffMs?: { base: number; cap: number };
  sleep?: (ms: number) => Promise<void>;
  random?: () => number;
}

/** IAM failed about a role (throttling, 5xx, a timeout, a cut connection, a refusal): the Revoker leaves the role alone until `retryAt`. Retryable. */
export class IamUnavailableError extends ChainwardenError {
  constructor(
    role: string,
    cause: unknown,
    readonly retryAt: number,
  ) {
    const name = (cause as { name?: string })?.name ?? 'Error';
    // IAM's refusals name the caller, the operator's own role and account; the message reaches the task's status, which its tenant reads.
    super('iam_unavailable', `IAM failed for role ${role} (${name}: ${scrubOperatorIdentity(cause instanceof Error ? cause.message : String(cause), '')})`);
    this.name = 'IamUnavailableError';
  }
}

/**
 * Writes and prunes the AWS-side deny on each role a task could have assumed.
 *
 * IAM has no conditional put: two writers doing read-modify-write on one policy can each drop
 * what the other just added. So within a process every write to a role is serialized, and
 * across processes (replicas overlapping at a failover) the Revoker remembers every deny it
 * wrote and still owes, re-reads after each put, and writes again until IAM shows all of them.
 * A stale write by another replica that lands after that check is repaired by the next `prune`
 * of the role, which every replica runs for the roles it owes denies on.
 */
export class Revoker {
  private readonly owed = new Map<string, Map<string, OwedDeny>>();
  private readonly tails = new Map<string, Promise<void>>();
  /** Roles IAM failed to answer for: until `retryAt`, a deny or prune of the role fails at once with the same error. */
  private readonly unanswered = new Map<string, { failures: number; error: IamUnavailableError }>();
  private readonly attempts: number;
  private readonly backoffMs: { base: number; cap: number };
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly random: () => number;

  constructor(
    private readonly iam: IamPort,
    private readonly clock: Clock,
    private readonly log: Logger,
    options: RevokerOptions = {},
  ) {
    this.attempts = options.attempts ?? 6;
    this.backoffMs = options.backoffMs ?? { base: 100, cap: 3_000 };
    this.sleep = options.sleep ?? ((ms) => sleep(ms));
    this.random = options.random ?? Math.random;
  }

  /** Idempotent: resolves once IAM shows the deny (and every other this Revoker owes on the role). Throws (retryable) when IAM cannot be written. */
  async deny(roleName: string, entry: RevocationEntry & { since?: number }, mayWrite?: WriteGuard): Promise<void> {
    this.owe(roleName, entry);
    await this.serialized(roleName, () => this.converge(roleName, mayWrite));
  }

  /**
   * Takes on a deny without writing it: the next `prune` of the role writes it with every other
   * owed one. `since` is when the task was revoked (now, unless said): a cutoff on sessions issued
   * before it covers the entry.
   */
  owe(roleName: string, entry: RevocationEntry & { since?: number }): void {
    const owed = this.owed.get(roleName) ?? new Map<string, OwedDeny>();
    this.owed.set(roleName, owed);
    const known = owed.get(entry.marker);
    owed.set(entry.marker, { marker: entry.marker, pruneAfter: Math.max(entry.pruneAfter, known?.pruneAfter ?? 0), since: known?.since ?? entry.since ?? this.clock.now() });
  }

  /** Removes expired entries, re-asserts every deny this Revoker still owes on the role, and deletes the policy once nothing is left in it. */
  async prune(roleName: string, mayWrite?: WriteGuard): Promise<void> {
    await this.serialized(roleName, () => this.converge(roleName, mayWrite));
  }

  /**
   * A role that does not exist has no live sessions to deny: AWS ends the sessions of a deleted
   * role, and one created again under the same name is a new role its old sessions cannot use.
   */
  private async converge(role: string, mayWrite?: WriteGuard): Promise<void> {
    const waiting = this.unanswered.get(role);
    // Retryable, at once: IAM failed moments ago. Every status write wakes the controller, and each wake must not become IAM calls.
    if (waiting && waiting.error.retryAt > this.clock.now()) throw waiting.error;
    try {
      await this.writeOwed(role, mayWrite);
      this.unanswered.delete(role);
    } catch (err) {
      if (isNoSuchEntity(err)) {
        this.unanswered.delete(role);
        this.owed.delete(role);
        this.log.info({ role }, 'the role does not exist: there is no session of it to deny');
        return;
      }
      // Ours (a full policy, writers racing) is decided by what IAM showed; anything else is IAM failing.
      throw err instanceof ChainwardenError ? err : this.leaveAlone(role, err);
    }
  }

  /** Remembers that IAM failed for the role, and until when it is left alone; returns the error to throw. */
  private leaveAlone(role: string, cause: unknown): IamUnavailableError {
    const failures = (this.unanswered.get(role)?.failures ?? 0) + 1;
    const waitMs = planAwsRetry(failures, this.random);
    const error = new IamUnavailableError(role, cause, this.clock.now() + waitMs);
    this.unanswered.set(role, { failures, error });
    this.log.warn({ role, failures, retryInMs: waitMs, err: errorMessage(cause) }, 'IAM failed: the role is not written to again until the wait is over');
    return error;
  }

  /** Roles on which this Revoker still owes a deny: each needs a periodic `prune` so another replica's stale write cannot drop one for long. */
  owedRoles(): string[] {
    const now = this.clock.now();
    return [...this.owed.keys()].filter((role) => this.stillOwed(role, now).length > 0);
  }

  private stillOwed(role: string, now: number): OwedDeny[] {
    const owed = this.owed.get(role);
    if (!owed) return [];
    for (const [marker, entry] of owed) if (entry.pruneAfter <= now) owed.delete(marker);
    if (owed.size === 0) this.owed.delete(role);
    return [...owed.values()];
  }

  /** One write at a time per role in this process: a deny and a prune never read-modify-write over each other. */
  private serialized(role: string, work: () => Promise<void>): Promise<void> {
    const run = (this.tails.get(role) ?? Promise.resolve()).then(work);
    const tail = run.catch(() => undefined);
    this.tails.set(role, tail);
    void tail.then(() => this.tails.get(role) === tail && this.tails.delete(role));
    return run;
  }

  /** Reads, writes what is missing, and reads again until IAM shows every owed deny; bounded, then retryable. */
  private async writeOwed(role: string, mayWrite?: WriteGuard): Promise<void> {
    for (let writes = 0; ; writes++) {
      const now = this.clock.now();
      const current = await this.iam.getRolePolicy(role, REVOCATION_POLICY);
      const owed = this.stillOwed(role, now);
      if (current === undefined && owed.length === 0) return;
      const budget = await this.budgetOf(role);
      const plan = planRevocationPolicy(current, owed, now, budget);
      // Retryable, but only a person can make room: the task stays DenyPending with this message.
      if (!plan.fits) {
        const err = new RevocationPolicyFullError(role, plan.needed, budget);
        this.log.error({ role, needed: plan.needed, budget }, err.message);
        throw err;
      }
      if (!plan.changed) return;
      // Retryable: the controller backs off and denies again.
      if (writes === this.attempts) throw new ChainwardenError('conflict', `IAM role ${role}: ${REVOCATION_POLICY} kept losing denies to concurrent writers (${writes} writes)`);
      if (writes > 0) this.log.warn({ role, writes }, 'IAM does not show every deny this replica owes (overwritten by another writer, or not yet consistent); writing again');
      faultPoint('deny-policy.before-write');
      // Checked right before the put: the read above may have been answered after a long stall.
      mayWrite?.();
      if (plan.document) await this.iam.putRolePolicy(role, REVOCATION_POLICY, JSON.stringify(plan.document));
      else await this.iam.deleteRolePolicy(role, REVOCATION_POLICY);
      if (plan.collapsed) this.log.warn({ role, size: plan.size, budget }, 'revocation policy full: collapsed into a cutoff on every chainwarden session issued before now');
      // Let a concurrent writer's put land before the read that verifies ours.
      await this.sleep(this.backoff(writes + 1));
    }
  }

  /**
   * What IAM's shared limit leaves for our policy once the role's other inline policies are
   * counted. Without `iam:ListRolePolicies` the deny is still written, counting our policy alone:
   * a missing permission must not stop revocation; IAM refuses a put that does not fit.
   */
  private async budgetOf(role: string): Promise<number> {
    const names = await this.iam.listRolePolicies(role).catch((err: unknown) => {
      if (!isAccessDenied(err)) throw err;
      this.log.warn({ role }, `cannot list the role's inline policies: grant iam:ListRolePolicies, or ${REVOCATION_POLICY} may not fit beside them`);
      return [];
    });
    const others = names.filter((name) => name !== REVOCATION_POLICY);
    const sizes = await Promise.all(others.map(async (name) => policySize((await this.iam.getRolePolicy(role, name)) ?? '')));
    return ROLE_INLINE_POLICIES_MAX_CHARS - sizes.reduce((a, b) => a + b, 0);
  }

  /** Exponential backoff, jittered between half and all of it: desynchronizes two replicas that keep overwriting each other. */
  private backoff(attempt: number): number {
    const ceiling = Math.min(this.backoffMs.cap, this.backoffMs.base * 2 ** (attempt - 1));
    return ceiling / 2 + (this.random() * ceiling) / 2;
  }
}
