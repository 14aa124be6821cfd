import { hash } from 'node:crypto';
import { parseDuration } from '../api/duration.js';
import type { AgentPolicy, AgentTask, AgentTaskStatus } from '../api/schema.js';
import { MAX_PENDING_HOP_BYTES, POLICY_DEFAULTS, STATUS_CAPS, storedJsonBytes } from '../api/task.js';
import type { AuditEvent, TaskDelta } from '../audit/journal.js';
import { canonicalJson } from '../audit/record.js';
import { globMatches } from '../policy/glob.js';
import type { Evaluation, HopContext, HopSubject, Reason } from '../policy/engine.js';

export interface HopRequest {
  tool: string;
  action: string;
  resource: string;
  parentHop?: string;
  intent: string;
  attributes: Record<string, string>;
  /** On allow, also answer with this credential of the task (container-credentials format). */
  credential?: string;
}

export type HopDecision = 'allow' | 'deny' | 'pending_approval';

/** The chain as one replica sees it: what the task's status says plus what it has not written yet. */
export interface ChainView {
  hopCount: number;
  /** The deepest hop so far. */
  deepest: number;
  priorDenials: number;
  systems: ReadonlySet<string>;
  dataClasses: ReadonlySet<string>;
  /** Hops waiting for approval. */
  pending: number;
}

export function chainView(c: AgentTaskStatus['chain'], unwritten: TaskDelta | undefined, pendingHops = 0): ChainView {
  const written: ChainView = {
    pending: pendingHops,
    hopCount: c?.hopCount ?? 0,
    deepest: c?.deepest ?? 0,
    priorDenials: c?.priorDenials ?? 0,
    systems: new Set(c?.systemsTouched ?? []),
    dataClasses: new Set(c?.dataClassesTouched ?? []),
  };
  return unwritten ? advanceChain(written, unwritten) : written;
}

/** The chain with one more change in it (a decided hop's, or all a replica has not written): counters add, sets unite. */
export function advanceChain(view: ChainView, delta: Partial<TaskDelta>): ChainView {
  const unite = (a: ReadonlySet<string>, b: Set<string> | undefined) => (b && b.size > 0 ? new Set([...a, ...b]) : a);
  return {
    pending: view.pending + (delta.addPending?.length ?? 0),
    hopCount: view.hopCount + (delta.hopCount ?? 0),
    deepest: Math.max(view.deepest, delta.deepest ?? 0),
    priorDenials: view.priorDenials + (delta.priorDenials ?? 0),
    systems: unite(view.systems, delta.systems),
    dataClasses: unite(view.dataClasses, delta.dataClasses),
  };
}

/**
 * A hop's depth. The agent says which hop this one follows, but the agent is not trusted: were
 * depth only its parent's plus one, it could start over at depth 1 whenever it liked, by leaving
 * `parentHop` out or by naming an early, shallow hop, and no depth limit or depth rule would ever
 * bind it. So depth never goes back up the tree: a hop is as deep as its parent plus one, and at
 * least as deep as the deepest hop the task has made so far.
 */
export function depthOf(parentDepth: number | undefined, chain: Pick<ChainView, 'deepest'>): number {
  return Math.max(parentDepth === undefined ? 1 : parentDepth + 1, chain.deepest);
}

/** Everything one hop is decided on, gathered by the caller. */
export interface HopInput {
  task: AgentTask;
  policy: AgentPolicy;
  request: HopRequest;
  /** Minted by the caller: ids are random, decisions are not. */
  hopId: string;
  depth: number;
  chain: ChainView;
  now: number;
  /** The pod that asked, for the audit record. */
  pod: string;
  /** An AgentApproval of this exact call, claimed for it: what would wait only for the rules it was given for is allowed. */
  approval?: HopApproval;
}

/** What an AgentApproval of a call lifts when the call comes again. */
export interface HopApproval {
  name: string;
  /**
   * The rules its hop waited for when the approver saw it (`spec.hopRules`). Unset only on
   * approvals admitted before they were recorded, which lift whatever holds the call.
   */
  rules?: readonly string[];
}

/** The approval an AgentApproval gives the call it is bound to. */
export const approvalOf = (approval: { metadata: { name?: string }; spec: { hopRules?: readonly string[] } }): HopApproval => ({
  name: approval.metadata.name ?? '',
  ...(approval.spec.hopRules ? { rules: approval.spec.hopRules } : {}),
});

/** The decision, and what the journal records for it. */
export interface HopOutcome {
  decision: HopDecision;
  reasons: Reason[];
  /** Allowed only because the policy is in Audit mode; `reasons` are the rules that would have denied it. */
  wouldDeny?: boolean;
  delta: Partial<TaskDelta>;
  /** The answer must not outrun its record: a hop left waiting and a violation are written before they are answered. */
  commit: boolean;
  /** When a waiting hop is denied if nobody decides. */
  timeoutAt?: string;
}

export type Evaluate = (policy: AgentPolicy, subject: HopSubject, context: HopContext, toolBoundary: string) => Evaluation;

/** What an approval is bound to: the same tool, action, resource and attributes, nothing else. */
export function hopDigest(r: Pick<HopRequest, 'tool' | 'action' | 'resource' | 'attributes'>): string {
  return hash('sha256', canonicalJson({ tool: r.tool, action: r.action, resource: r.resource, attributes: r.attributes }), 'hex');
}

const DEFAULT_DENY: Reason = { rule: 'default-deny', effect: 'Deny' };

interface Verdict {
  decision: HopDecision;
  reasons: Reason[];
  /** Allowed, or held for approval, by Audit mode where Enforce would deny. */
  wouldDeny?: boolean;
  /** Held in Audit mode where Enforce would deny: the rules that would deny it. */
  denied?: Reason[];
}

/**
 * The task's limits within the policy's as it is now: admission keeps a task within its policy
 * when created, but a policy tightened since binds the task at once, not once the controller
 * has unbound it.
 */
function limitsOf(input: HopInput): { maxHops: number; maxDepth: number } {
  const { task, policy } = input;
  const maxHops = policy.spec.limits?.maxHops ?? POLICY_DEFAULTS.maxHops;
  const maxDepth = policy.spec.limits?.maxDepth ?? POLICY_DEFAULTS.maxDepth;
  return { maxHops: Math.min(task.spec.limits?.maxHops ?? maxHops, maxHops), maxDepth: Math.min(task.spec.limits?.maxDepth ?? maxDepth, maxDepth) };
}

/** Limits come first: a hop over a limit is denied whatever the rules say. */
function overLimit(input: HopInput): Verdict | undefined {
  const { maxHops, maxDepth } = limitsOf(input);
  if (input.chain.hopCount + 1 > maxHops) return { decision: 'deny', reasons: [{ rule: 'limit:maxHops', effect: 'Deny' }] };
  if (input.depth > maxDepth) return { decision: 'deny', reasons: [{ rule: 'limit:maxDepth', effect: 'Deny' }] };
  return undefined;
}

type System = NonNullable<AgentPolicy['spec']['systems']>[number];

/**
 * The systems a hop touches: the one its tool names, and every one whose `resources` globs match
 * its resource (an AWS call reading arn:aws:s3:::customers/1 touches the system that classifies
 * that bucket), the tool's own first.
 */
export function touchedSystems(policy: AgentPolicy, hop: Pick<HopRequest, 'tool' | 'resource'>): System[] {
  const systems = policy.spec.systems ?? [];
  const byName = systems.filter((s) => s.name === hop.tool);
  const byResource = hop.resource ? systems.filter((s) => s.name !== hop.tool && (s.resources ?? []).some((glob) => globMatches(glob, hop.resource))) : [];
  return [...byName, ...byResource];
}

/** The data classes of every system a hop touches. */
export const dataClassesOf = (systems: System[]): string[] => [...new Set(systems.flatMap((s) => s.dataClasses ?? []))];

/**
 * What the task's status can hold: the API server refuses a status over its lists' caps every
 * time, so a hop whose record would not fit is denied rather than answered and never recorded.
 */
function overCapacity(input: HopInput, touched: System[], verdict: Verdict): Verdict | undefined {
  const { chain, request } = input;
  const deny = (rule: string, message?: string): Verdict => ({ decision: 'deny', reasons: [{ rule, effect: 'Deny', ...(message ? { message } : {}) }] });
  if (verdict.decision === 'pending_approval') {
    if (chain.pending >= STATUS_CAPS.pendingHops) return deny('limit:pendingHops');
    const bytes = storedJsonBytes({ tool: request.tool, action: request.action, resource: request.resource, intent: request.intent, attributes: request.attributes });
    if (bytes > MAX_PENDING_HOP_BYTES) return deny('limit:pendingHops', `a hop that waits for approval waits in the task's status, and this one's tool, action, resource, intent and attributes come to ${bytes} bytes of UTF-8 as the API server stores them (<, > and & escaped in six), over ${MAX_PENDING_HOP_BYTES}: send shorter values, or fewer attributes`);
  }
  if (verdict.decision !== 'allow') return undefined;
  const added = new Set([request.tool, ...touched.map((t) => t.name)].filter((name) => !chain.systems.has(name))).size;
  if (chain.systems.size + added > STATUS_CAPS.systemsTouched) return deny('limit:systemsTouched');
  const classes = dataClassesOf(touched);
  const newClasses = classes.filter((c) => !chain.dataClasses.has(c)).length;
  if (chain.dataClasses.size + newClasses > STATUS_CAPS.dataClassesTouched) return deny('limit:dataClassesTouched');
  return undefined;
}

/**
 * A call that would wait, with an approval claimed for it, goes through if every rule that holds
 * it now held it when it was approved; a limit or a Deny still wins. A rule the approver was not
 * shown (the chain has read customer data since, say) holds it again, with all its rules, for a
 * person to see.
 */
function approved(input: HopInput, verdict: Verdict): Verdict {
  const { approval } = input;
  if (verdict.decision !== 'pending_approval' || !approval) return verdict;
  if (approval.rules && !verdict.reasons.every((r) => approval.rules?.includes(r.rule))) return verdict;
  const lifted: Reason = { rule: `approval:${approval.name}`, effect: 'Allow' };
  // In Audit mode a hop Enforce would deny is allowed once approved, recorded with what would deny it.
  return verdict.wouldDeny ? { decision: 'allow', reasons: [lifted, ...(verdict.denied ?? [])], wouldDeny: true } : { decision: 'allow', reasons: [lifted] };
}

/**
 * Audit mode: a hop the policy would deny is allowed, keeping the denying rules as its reasons.
 * Only the policy's verdicts are relaxed (its rules and its maxHops / maxDepth limits): a status
 * cap still denies, since a hop whose record the API server would refuse cannot be recorded at
 * all. A hop that waits for approval still waits: Audit is for trying out denials without
 * breaking agents, not for lifting a human gate the policy asks for, and an Enforce policy moved
 * to Audit while a stricter version is tried must not lose its approvals meanwhile. That holds
 * where a Deny rule or a limit would also refuse the hop: Cedar's forbid hides the permits it
 * overrides, so the policy's RequireApproval rules are asked on their own.
 */
function audited(input: HopInput, verdict: Verdict, touched: System[], evaluate: Evaluate): Verdict {
  if (verdict.decision !== 'deny' || (input.policy.spec.mode ?? POLICY_DEFAULTS.mode) !== 'Audit') return verdict;
  const held = heldForApproval(input, touched, evaluate);
  if (held.length > 0) return { decision: 'pending_approval', reasons: held, wouldDeny: true, denied: verdict.reasons };
  return { ...verdict, decision: 'allow', wouldDeny: true };
}

/** The RequireApproval rules of the policy that match the hop, with its Deny rules, raw Cedar and limits set aside. */
function heldForApproval(input: HopInput, touched: System[], evaluate: Evaluate): Reason[] {
  const { policy } = input;
  const rules = (policy.spec.rules ?? []).filter((r) => r.effect === 'RequireApproval');
  if (rules.length === 0) return [];
  const { cedar: _raw, ...spec } = policy.spec;
  // Its own name, so the engine prepares and remembers it apart from the whole policy.
  const approvalsOnly: AgentPolicy = { ...policy, metadata: { ...policy.metadata, name: `${policy.metadata.name ?? ''}/require-approval` }, spec: { ...spec, rules } };
  const { subject, context, boundary } = hopContext(input, touched);
  return evaluate(approvalsOnly, subject, context, boundary).reasons.filter((r) => r.effect === 'RequireApproval');
}

/** The Cedar context of the hop: the request and the whole chain so far; `touched` is what `touchedSystems` gives for it. */
export function hopContext(input: HopInput, touched: System[]): { subject: HopSubject; context: HopContext; boundary: string } {
  const { task, policy, request, chain, now } = input;
  const systems = policy.spec.systems ?? [];
  // A tool the policy does not declare, on a resource no system classifies, is outside the
  // organisation; so is a hop that touches any external system, whatever else it touches and in
  // whatever order the policy lists them.
  const external = (s: System) => (s.trustBoundary ?? 'internal') === 'external';
  const boundary = touched.length === 0 || touched.some(external) ? 'external' : 'internal';
  const internal = new Set(systems.filter((s) => !external(s)).map((s) => s.name));
  return {
    subject: {
      namespace: task.metadata.namespace ?? '',
      task: task.metadata.name ?? '',
      serviceAccount: task.spec.serviceAccountName,
      intent: task.spec.intent ?? '',
      toolDataClasses: dataClassesOf(touched),
      attributes: request.attributes,
    },
    context: {
      tool: request.tool,
      action: request.action,
      resource: request.resource,
      intent: request.intent,
      depth: input.depth,
      hopCount: chain.hopCount,
      secondsSinceStart: Math.max(0, Math.floor((now - Date.parse(task.metadata.creationTimestamp ?? '')) / 1000)),
      systemsTouched: [...chain.systems],
      dataClassesTouched: [...chain.dataClasses],
      trustBoundary: boundary,
      // From an internal system to an external one: one the chain touched before, or one this hop touches itself (an email of an object an internal system classifies).
      crossesTrustBoundary: boundary === 'external' && ([...chain.systems].some((s) => internal.has(s)) || touched.some((s) => !external(s))),
      priorDenials: chain.priorDenials,
    },
    boundary,
  };
}

/** The policy's rules: Deny wins; otherwise a RequireApproval rule holds the hop; otherwise Allow. */
function byRules(input: HopInput, touched: System[], evaluate: Evaluate): Verdict {
  const { subject, context, boundary } = hopContext(input, touched);
  const evaluation = evaluate(input.policy, subject, context, boundary);
  if (evaluation.decision === 'Deny') {
    const denials = evaluation.reasons.filter((r) => r.effect === 'Deny');
    return { decision: 'deny', reasons: denials.length > 0 ? denials : evaluation.reasons.length > 0 ? evaluation.reasons : [DEFAULT_DENY] };
  }
  const approvals = evaluation.reasons.filter((r) => r.effect === 'RequireApproval');
  return approvals.length > 0 ? { decision: 'pending_approval', reasons: approvals } : { decision: 'allow', reasons: evaluation.reasons };
}

/**
 * One hop, decided with the whole chain in view: limits first, then the policy's rules. Pure:
 * the same input gives the same decision and the same journal delta, so the policy scenarios
 * are a unit table over this function.
 */
export function decideHop(input: HopInput, evaluate: Evaluate): HopOutcome {
  const { policy, request, hopId, depth, now } = input;
  // Matched once: the systems a hop touches feed its Cedar context, the status caps and its record.
  const touched = touchedSystems(policy, request);
  const ruled = approved(input, audited(input, overLimit(input) ?? byRules(input, touched, evaluate), touched, evaluate));
  const { decision, reasons, wouldDeny, denied } = overCapacity(input, touched, ruled) ?? ruled;
  // Held in Audit mode where Enforce would deny: what it would deny it by, as the approver is shown.
  const wouldDenyBy = decision === 'pending_approval' ? denied?.map((r) => r.rule) : undefined;
  const at = new Date(now).toISOString();
  const digest = hopDigest(request);
  const classes = dataClassesOf(touched);
  const record: AuditEvent = {
    type: 'hop_decided',
    at,
    data: {
      hopId,
      parentHop: request.parentHop,
      depth,
      tool: request.tool,
      action: request.action,
      resource: request.resource,
      attributes: request.attributes,
      intent: request.intent,
      digest,
      decision,
      reasons,
      ...(wouldDeny ? { wouldDeny: true } : {}),
      ...(wouldDenyBy ? { wouldDenyBy } : {}),
      // Allowed by an approval: the rules it was given for, so a replay lifts those and no other.
      ...(input.approval?.rules && reasons.some((r) => r.rule === `approval:${input.approval?.name ?? ''}`) ? { approvalRules: [...input.approval.rules] } : {}),
      // The data classes of the systems it touched: what an auditor (or a trace) filters on.
      ...(classes.length > 0 ? { dataClasses: classes } : {}),
      pod: input.pod,
    },
  };
  const rules = reasons.map((r) => r.rule);
  if (decision === 'allow') {
    // A hop allowed in Audit happened: it touches systems and data classes like any other, and is no prior denial.
    return {
      decision,
      reasons,
      ...(wouldDeny ? { wouldDeny } : {}),
      commit: false,
      delta: {
        hopCount: 1,
        deepest: depth,
        allowed: 1,
        ...(wouldDeny ? { wouldDeny: 1 } : {}),
        systems: new Set([request.tool, ...touched.map((t) => t.name)]),
        dataClasses: new Set(classes),
        recent: [{ hopId, decision: 'allow', tool: request.tool, action: request.action, resource: request.resource, rules, ...(wouldDeny ? { wouldDeny } : {}), at }],
        events: [record],
      },
    };
  }
  if (decision === 'pending_approval') {
    const timeoutAt = new Date(now + parseDuration(policy.spec.approval?.timeout ?? POLICY_DEFAULTS.approvalTimeout)).toISOString();
    return {
      decision,
      reasons,
      // Held in Audit mode where Enforce would deny: the answer and the record say so.
      ...(wouldDeny ? { wouldDeny } : {}),
      commit: true,
      timeoutAt,
      delta: {
        hopCount: 1,
        deepest: depth,
        pending: 1,
        // The approver sees what they approve: the attributes the approval is bound to, the agent's
        // stated intent, and in Audit mode what Enforce would deny it by.
        addPending: [
          {
            hopId,
            digest,
            tool: request.tool,
            action: request.action,
            resource: request.resource,
            attributes: request.attributes,
            intent: request.intent,
            depth,
            parentHop: request.parentHop,
            rules,
            ...(wouldDenyBy ? { wouldDenyBy } : {}),
            requestedAt: at,
            timeoutAt,
          },
        ],
        events: [record],
      },
    };
  }
  // A denied hop went nowhere: it leaves the chain's depth as it was, or one attempt past maxDepth
  // would set every later hop past it too (depthOf never goes shallower than `deepest`).
  const delta: Partial<TaskDelta> = { hopCount: 1, denied: 1, priorDenials: 1, recent: [{ hopId, decision: 'deny', tool: request.tool, action: request.action, resource: request.resource, rules, at }], events: [record] };
  if ((policy.spec.onViolation ?? POLICY_DEFAULTS.onViolation) !== 'Revoke') return { decision, reasons, commit: false, delta };
  const rule = rules.join(', ');
  const message = `${request.tool} ${request.action} ${request.resource} was denied by ${rule}`;
  return {
    decision,
    reasons,
    commit: true,
    delta: { ...delta, violation: { hopId, rule, message }, events: [record, { type: 'violation', at, data: { hopId, rule, message, tool: request.tool, action: request.action, resource: request.resource, onViolation: 'Revoke' } }] },
  };
}
