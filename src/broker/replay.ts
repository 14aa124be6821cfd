import { parseAgentTask } from '../api/parse.js';
import type { AgentPolicy, AgentTask } from '../api/schema.js';
import { ChainVerifier, type AuditEntry, type ChainBreak, type ChainSummary } from '../audit/verify.js';
import type { AuditRecord } from '../audit/record.js';
import { errorMessage } from '../errors.js';
import { chainView, dataClassesOf, decideHop, touchedSystems, type Evaluate, type HopDecision, type HopRequest } from './decide-hop.js';

/** One recorded decision that the replayed policy would make otherwise. */
export interface ReplayChange {
  task: string;
  hopId: string;
  at: string;
  tool: string;
  action: string;
  resource: string;
  before: string;
  beforeRules: string[];
  after: string;
  afterRules: string[];
}

/** A task left out because its records, though their chain verifies, cannot be replayed. */
export interface UnreplayableTask {
  task: string;
  /** The line of the record that could not be replayed. */
  line: number;
  problem: string;
}

export interface ReplayResult {
  /** Recorded decisions re-decided. */
  decided: number;
  changes: ReplayChange[];
  /** Tasks whose chains verify and that the stream says were admitted under the policy (in its namespace, when it names one). */
  admitted: number;
  /** Tasks the stream says ran under another AgentPolicy, or in another namespace than the policy's. */
  otherPolicy: number;
  /** Tasks whose task_admitted record is not in the stream: what they ran under is not known. */
  notAdmitted: number;
  /** The tasks (by name) left out because a break in the stream names them. */
  broken: string[];
  /** Tasks admitted under the policy whose records cannot be replayed. */
  unreplayable: UnreplayableTask[];
  /** The policies (namespace/name) the stream's verified tasks were admitted under, sorted. */
  admittedUnder: string[];
}

/** What replay reads of a task_admitted record. */
interface Admission {
  seq: number;
  at: string;
  line: number;
  policy: string;
  serviceAccount: string;
  ttl: string;
  intent: string;
}

/** What replay reads of a hop_decided record: the call, the decision and its rules. */
interface RecordedHop {
  seq: number;
  at: string;
  line: number;
  hopId: string;
  depth?: number;
  request: HopRequest;
  decision: string;
  rules: string[];
  wouldDeny: boolean;
  /** The rules an approval that let the call through was given for, when the record keeps them. */
  approvalRules?: string[];
  pod: string;
}

/** One task's chain as read: its admission and its hops, only while they may be replayed. */
interface TaskRecords {
  task: string;
  uid: string;
  admission?: Admission;
  /** By seq: a record present in several replicas' streams is one record. */
  hops: Map<number, RecordedHop>;
  /** Admitted (at seq 1, where nothing can come before it) under another policy, or in another namespace: no hop is kept. */
  elsewhere: boolean;
}

/** A decision as the record or the replay gives it: `allow (would deny)` is Audit mode's allow. */
const label = (decision: string, wouldDeny: boolean | undefined) => (wouldDeny ? `${decision} (would deny)` : decision);

/** What the chain held before a hop, rebuilt from the task's records in chain order. */
interface Walk {
  hopCount: number;
  deepest: number;
  priorDenials: number;
  systems: Set<string>;
  dataClasses: Set<string>;
  /** Hops that waited for approval and are not decided yet. */
  pending: Set<string>;
}

// A stream can be written by anyone, and a chain that verifies only says it was not edited since: read shapes defensively.
const str = (v: unknown): string => (typeof v === 'string' ? v : '');
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function admissionOf(r: AuditRecord, line: number): Admission {
  const d = r.data;
  return { seq: r.seq, at: str(r.at), line, policy: str(d.policy), serviceAccount: str(d.serviceAccount), ttl: str(d.ttl), intent: str(d.intent) };
}

function hopOf(r: AuditRecord, line: number): RecordedHop {
  const d = r.data;
  const attributes = isObject(d.attributes) ? (d.attributes as Record<string, string>) : {};
  const request: HopRequest = { tool: str(d.tool), action: str(d.action), resource: str(d.resource), intent: str(d.intent), attributes, ...(str(d.parentHop) ? { parentHop: str(d.parentHop) } : {}) };
  const rules = Array.isArray(d.reasons) ? d.reasons.map((x: unknown) => str(isObject(x) ? x.rule : undefined)) : [];
  return {
    seq: r.seq,
    at: str(r.at),
    line,
    hopId: str(d.hopId),
    ...(typeof d.depth === 'number' ? { depth: d.depth } : {}),
    request,
    decision: str(d.decision),
    rules,
    wouldDeny: d.wouldDeny === true,
    ...(Array.isArray(d.approvalRules) ? { approvalRules: d.approvalRules.map(str) } : {}),
    pod: str(d.pod),
  };
}

/**
 * The task as far as the stream tells it: its name, service account and intent from its
 * task_admitted record, started when that record was written. Its own limits are not recorded,
 * so the policy's apply.
 */
function taskOf(task: string, uid: string, admission: Admission, policy: AgentPolicy): AgentTask {
  const [namespace = '', name = ''] = task.split('/');
  return parseAgentTask({
    apiVersion: 'chainwarden.io/v1alpha1',
    kind: 'AgentTask',
    metadata: { namespace, name, uid, creationTimestamp: admission.at },
    spec: {
      policyRef: { name: policy.metadata.name ?? '' },
      serviceAccountName: admission.serviceAccount || 'unknown',
      ttl: admission.ttl || '1h',
      ...(admission.intent ? { intent: admission.intent } : {}),
    },
  });
}

/** A task that cannot be replayed, at the record that says why. */
class UnreplayableError extends Error {
  constructor(
    readonly line: number,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Re-decides one task's recorded hops (in chain order) under `policy`, each against the chain as
 * it happened: the systems and data classes its allowed hops touched (classified by `policy`'s
 * systems), its hop count, depth and prior denials. A changed decision does not change the
 * history the next hop is judged against: replay says how each recorded hop would be decided,
 * not what the agent would have done next.
 */
function replayTask(records: TaskRecords, admission: Admission, policy: AgentPolicy, evaluate: Evaluate): { decided: number; changes: ReplayChange[] } {
  let task: AgentTask;
  try {
    task = taskOf(records.task, records.uid, admission, policy);
  } catch (err) {
    throw new UnreplayableError(admission.line, errorMessage(err));
  }
  const walk: Walk = { hopCount: 0, deepest: 0, priorDenials: 0, systems: new Set(), dataClasses: new Set(), pending: new Set() };
  const changes: ReplayChange[] = [];
  let decided = 0;
  const touch = (request: Pick<HopRequest, 'tool' | 'resource'>) => {
    const touched = touchedSystems(policy, request);
    for (const s of [request.tool, ...touched.map((t) => t.name)]) walk.systems.add(s);
    for (const c of dataClassesOf(touched)) walk.dataClasses.add(c);
  };
  for (const hop of [...records.hops.values()].sort((a, b) => a.seq - b.seq)) {
    const { hopId, request, decision: recorded, rules } = hop;
    if (walk.pending.has(hopId)) {
      // The decision on a waiting hop: a person's, a timeout's, or the status cap's. Not a policy
      // decision to replay; a rejection or a timeout is a denial the chain counts, as the journal counts it.
      walk.pending.delete(hopId);
      if (recorded === 'allow') touch(request);
      else walk.priorDenials += 1;
      continue;
    }
    const depth = hop.depth ?? (walk.deepest || 1);
    // A gateway call that went through on an approval claimed for it is replayed with that
    // approval: it lifts the rules the record says it was given for, or any, on a record from
    // before they were recorded.
    const approval = rules.find((rule) => rule.startsWith('approval:'));
    let outcome: ReturnType<typeof decideHop>;
    try {
      outcome = decideHop(
        {
          task,
          policy,
          request,
          hopId,
          depth,
          chain: chainView({ version: 0, hopCount: walk.hopCount, deepest: walk.deepest, priorDenials: walk.priorDenials, systemsTouched: [...walk.systems], dataClassesTouched: [...walk.dataClasses] }, undefined, walk.pending.size),
          now: Date.parse(hop.at),
          pod: hop.pod,
          ...(approval ? { approval: { name: approval.slice('approval:'.length), ...(hop.approvalRules ? { rules: hop.approvalRules } : {}) } } : {}),
        },
        evaluate,
      );
    } catch (err) {
      throw new UnreplayableError(hop.line, `${hopId ? `hop ${hopId}: ` : ''}${errorMessage(err)}`);
    }
    decided += 1;
    const before = label(recorded, hop.wouldDeny);
    const after = label(outcome.decision, outcome.wouldDeny);
    if (before !== after) {
      changes.push({ task: records.task, hopId, at: hop.at, tool: request.tool, action: request.action, resource: request.resource, before, beforeRules: rules, after, afterRules: outcome.reasons.map((x) => x.rule) });
    }
    // The chain goes on as it happened.
    walk.hopCount += 1;
    // As the broker counts it: a denied hop leaves the chain's depth as it was.
    if (recorded !== 'deny') walk.deepest = Math.max(walk.deepest, depth);
    if (recorded === 'allow') touch(request);
    else if (recorded === 'deny') walk.priorDenials += 1;
    else if ((recorded as HopDecision) === 'pending_approval') walk.pending.add(hopId);
  }
  return { decided, changes };
}

/**
 * An audit stream replayed under `policy`, read one record at a time. Every record goes through
 * the `ChainVerifier` that `audit verify` uses, which keeps what linking needs of each (a few
 * hundred bytes). Of the records themselves only what a replay reads is kept: the admission and
 * the hop decisions of tasks that may have run under the policy, reduced to the fields replayed.
 * A task admitted elsewhere keeps nothing past its admission; its records read before it are let go.
 */
export class StreamReplay {
  private readonly verifier = new ChainVerifier(false);
  private readonly tasks = new Map<string, TaskRecords>();
  /** Every policy any task_admitted record of a task's name claims, copies and forgeries included. */
  private readonly admissionsOf = new Map<string, Set<string>>();
  private verified: { chains: ChainSummary[]; breaks: ChainBreak[] } | undefined;
  /** Hop records held for the replay. */
  held = 0;

  constructor(private readonly policy: AgentPolicy) {}

  /** Records read so far, of any shape. */
  get count(): number {
    return this.verifier.count;
  }

  add(entry: AuditEntry): void {
    this.verifier.add(entry);
    const r = entry.record as unknown as Record<string, unknown>;
    // Not of a shape to keep: the verifier has named it a break.
    if (typeof r.task !== 'string' || typeof r.taskUid !== 'string' || !Number.isSafeInteger(r.seq) || !isObject(r.data)) return;
    const record = entry.record;
    const key = `${record.task}\u0000${record.taskUid}`;
    let task = this.tasks.get(key);
    if (!task) {
      task = { task: record.task, uid: record.taskUid, hops: new Map(), elsewhere: !this.inNamespace(record.task) };
      this.tasks.set(key, task);
    }
    if (record.type === 'task_admitted') {
      const claimed = this.admissionsOf.get(record.task) ?? new Set<string>();
      claimed.add(str(record.data.policy));
      this.admissionsOf.set(record.task, claimed);
      if (!task.admission || record.seq < task.admission.seq) task.admission = admissionOf(record, entry.line);
      if (record.seq === 1 && task.admission.policy !== this.policy.metadata.name) this.leaveOut(task);
    } else if (record.type === 'hop_decided' && !task.elsewhere && !task.hops.has(record.seq)) {
      task.hops.set(record.seq, hopOf(record, entry.line));
      this.held++;
    }
  }

  /** Every chain in the stream and every break, as `audit verify` finds them. */
  verify(): { chains: ChainSummary[]; breaks: ChainBreak[] } {
    this.verified ??= this.verifier.finish();
    return this.verified;
  }

  /**
   * The breaks that can change this replay: in a task of a name that may have run under the
   * policy (in its namespace, with no admission in the stream, or one claiming the policy, even
   * in a record that does not verify), or in a record that names no task. One replica's stream
   * lacks the records other replicas wrote: a task of another policy broken there is no reason
   * to give no verdict on this one.
   */
  breaksThatMatter(): ChainBreak[] {
    return this.verify().breaks.filter((b) => this.mayBeReplayed(b.task));
  }

  private mayBeReplayed(task: string): boolean {
    if (task === '?') return true;
    if (!this.inNamespace(task)) return false;
    const claimed = this.admissionsOf.get(task);
    return !claimed || claimed.has(this.policy.metadata.name ?? '');
  }

  /**
   * The hops of every task whose chain verifies and that the stream says was admitted under the
   * policy (and in its namespace, when the policy names one), re-decided in chain order. A task
   * that a break names is left out whole: which of its records is the true one is not known.
   */
  replay(evaluate: Evaluate): ReplayResult {
    const { chains } = this.verify();
    // A task broken elsewhere (another policy, another namespace) is counted as such below.
    const broken = new Set(this.breaksThatMatter().map((b) => b.task));
    const result: ReplayResult = { decided: 0, changes: [], admitted: 0, otherPolicy: 0, notAdmitted: 0, broken: [...broken].filter((t) => t !== '?').sort(), unreplayable: [], admittedUnder: [] };
    const under = new Set<string>();
    for (const chain of chains) {
      const task = this.tasks.get(`${chain.task}\u0000${chain.taskUid}`);
      if (!task || broken.has(chain.task)) continue;
      const admission = task.admission;
      if (admission) under.add(`${chain.task.split('/')[0] ?? ''}/${admission.policy}`);
      if (!this.inNamespace(task.task)) result.otherPolicy += 1;
      else if (!admission) result.notAdmitted += 1;
      else if (admission.policy !== this.policy.metadata.name) result.otherPolicy += 1;
      else {
        result.admitted += 1;
        try {
          const { decided, changes } = replayTask(task, admission, this.policy, evaluate);
          result.decided += decided;
          for (const c of changes) result.changes.push(c);
        } catch (err) {
          result.unreplayable.push({ task: task.task, line: err instanceof UnreplayableError ? err.line : admission.line, problem: errorMessage(err) });
        }
      }
    }
    result.admittedUnder = [...under].sort();
    return result;
  }

  private inNamespace(task: string): boolean {
    return !this.policy.metadata.namespace || task.split('/')[0] === this.policy.metadata.namespace;
  }

  private leaveOut(task: TaskRecords): void {
    task.elsewhere = true;
    this.held -= task.hops.size;
    task.hops.clear();
  }
}

/** `StreamReplay` over records already read, each its own line: verified, then replayed (for tests and callers with records in hand). */
export function replayRecords(records: readonly AuditRecord[], policy: AgentPolicy, evaluate: Evaluate): ReplayResult & { breaks: ChainBreak[] } {
  const reading = new StreamReplay(policy);
  records.forEach((record, i) => reading.add({ record, line: i + 1 }));
  return { ...reading.replay(evaluate), breaks: reading.verify().breaks };
}
