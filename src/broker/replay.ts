import { parseAgentTask } from '../api/parse.js';
import type { AgentPolicy, AgentTask } from '../api/schema.js';
import { chainView, dataClassesOf, decideHop, touchedSystems, type Evaluate, type HopDecision, type HopRequest } from './decide-hop.js';
import type { AuditRecord } from '../audit/record.js';

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

export interface ReplayResult {
  /** Recorded decisions re-decided. */
  decided: number;
  changes: ReplayChange[];
  /** Tasks skipped because the stream says they ran under another AgentPolicy. */
  otherPolicy: string[];
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

const str = (v: unknown): string => (typeof v === 'string' ? v : '');

/**
 * The task as far as the stream tells it: its name, service account and intent from its
 * task_admitted record, started when that record was written. Its own limits are not recorded,
 * so the policy's apply.
 */
function taskOf(records: AuditRecord[], policy: AgentPolicy): AgentTask {
  const first = records[0];
  const admitted = records.find((r) => r.type === 'task_admitted');
  const [namespace = '', name = ''] = (first?.task ?? '/').split('/');
  return parseAgentTask({
    apiVersion: 'chainwarden.io/v1alpha1',
    kind: 'AgentTask',
    metadata: { namespace, name, uid: first?.taskUid, creationTimestamp: admitted?.at ?? first?.at },
    spec: {
      policyRef: { name: policy.metadata.name ?? '' },
      serviceAccountName: str(admitted?.data.serviceAccount) || 'unknown',
      ttl: str(admitted?.data.ttl) || '1h',
      ...(str(admitted?.data.intent) ? { intent: str(admitted?.data.intent) } : {}),
    },
  });
}

function requestOf(r: AuditRecord): HopRequest {
  const d = r.data;
  const attributes = typeof d.attributes === 'object' && d.attributes !== null ? (d.attributes as Record<string, string>) : {};
  return { tool: str(d.tool), action: str(d.action), resource: str(d.resource), intent: str(d.intent), attributes, ...(str(d.parentHop) ? { parentHop: str(d.parentHop) } : {}) };
}

const rulesOf = (r: AuditRecord): string[] => ((r.data.reasons as { rule?: string }[] | undefined) ?? []).map((x) => str(x.rule));

/**
 * Re-decides one task's recorded hops under `policy`, each against the chain as it happened:
 * the systems and data classes its allowed hops touched (classified by `policy`'s systems),
 * its hop count, depth and prior denials. A changed decision does not change the history the
 * next hop is judged against: replay says how each recorded hop would be decided, not what
 * the agent would have done next.
 */
export function replayTask(records: AuditRecord[], policy: AgentPolicy, evaluate: Evaluate): { decided: number; changes: ReplayChange[] } {
  const task = taskOf(records, policy);
  const walk: Walk = { hopCount: 0, deepest: 0, priorDenials: 0, systems: new Set(), dataClasses: new Set(), pending: new Set() };
  const changes: ReplayChange[] = [];
  let decided = 0;
  const touch = (request: Pick<HopRequest, 'tool' | 'resource'>) => {
    const touched = touchedSystems(policy, request);
    for (const s of [request.tool, ...touched.map((t) => t.name)]) walk.systems.add(s);
    for (const c of dataClassesOf(touched)) walk.dataClasses.add(c);
  };
  for (const r of records) {
    if (r.type !== 'hop_decided') continue;
    const hopId = str(r.data.hopId);
    const request = requestOf(r);
    const recorded = str(r.data.decision);
    const rules = rulesOf(r);
    if (walk.pending.has(hopId)) {
      // The decision on a waiting hop: a person's, a timeout's, or the status cap's. Not a policy decision to replay.
      walk.pending.delete(hopId);
      if (recorded === 'allow') touch(request);
      else if (rules.includes('limit:pendingHops')) walk.priorDenials += 1;
      continue;
    }
    const depth = typeof r.data.depth === 'number' ? r.data.depth : walk.deepest || 1;
    // A gateway call that went through on an approval claimed for it is replayed with that
    // approval: it lifts the rules the record says it was given for, or any, on a record from
    // before they were recorded.
    const approval = rules.find((rule) => rule.startsWith('approval:'));
    const given = Array.isArray(r.data.approvalRules) ? r.data.approvalRules.map(str) : undefined;
    const outcome = decideHop(
      {
        task,
        policy,
        request,
        hopId,
        depth,
        chain: chainView({ version: 0, hopCount: walk.hopCount, deepest: walk.deepest, priorDenials: walk.priorDenials, systemsTouched: [...walk.systems], dataClassesTouched: [...walk.dataClasses] }, undefined, walk.pending.size),
        now: Date.parse(r.at),
        pod: str(r.data.pod),
        ...(approval ? { approval: { name: approval.slice('approval:'.length), ...(given ? { rules: given } : {}) } } : {}),
      },
      evaluate,
    );
    decided += 1;
    const before = label(recorded, r.data.wouldDeny === true);
    const after = label(outcome.decision, outcome.wouldDeny);
    if (before !== after) {
      changes.push({ task: r.task, hopId, at: r.at, tool: request.tool, action: request.action, resource: request.resource, before, beforeRules: rules, after, afterRules: outcome.reasons.map((x) => x.rule) });
    }
    // The chain goes on as it happened.
    walk.hopCount += 1;
    walk.deepest = Math.max(walk.deepest, depth);
    if (recorded === 'allow') touch(request);
    else if (recorded === 'deny') walk.priorDenials += 1;
    else if ((recorded as HopDecision) === 'pending_approval') walk.pending.add(hopId);
  }
  return { decided, changes };
}

/**
 * Every task chain in the records, in chain order, re-decided under `policy`. Tasks whose
 * task_admitted record names another AgentPolicy are left out (and listed); so are tasks in
 * another namespace than the policy's, when the policy file names one.
 */
export function replayRecords(records: AuditRecord[], policy: AgentPolicy, evaluate: Evaluate): ReplayResult {
  const byTask = new Map<string, AuditRecord[]>();
  const seen = new Set<string>();
  for (const r of records) {
    const key = `${r.task}\u0000${r.taskUid}`;
    // Several replicas' streams may hold the same record; it counts once (a lookup, not a scan: streams run to millions of records).
    if (seen.has(`${key}\u0000${r.seq}`)) continue;
    seen.add(`${key}\u0000${r.seq}`);
    const list = byTask.get(key);
    if (list) list.push(r);
    else byTask.set(key, [r]);
  }
  const result: ReplayResult = { decided: 0, changes: [], otherPolicy: [] };
  for (const list of byTask.values()) {
    list.sort((a, b) => a.seq - b.seq);
    const task = list[0]?.task ?? '';
    const admittedUnder = str(list.find((r) => r.type === 'task_admitted')?.data.policy);
    const namespace = task.split('/')[0];
    if ((admittedUnder && admittedUnder !== policy.metadata.name) || (policy.metadata.namespace && namespace !== policy.metadata.namespace)) {
      result.otherPolicy.push(task);
      continue;
    }
    const { decided, changes } = replayTask(list, policy, evaluate);
    result.decided += decided;
    for (const c of changes) result.changes.push(c);
  }
  return result;
}
