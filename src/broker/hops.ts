import { createHash } from 'node:crypto';
import { parseDuration } from '../api/duration.js';
import type { AgentApproval, AgentPolicy, AgentTask, AgentTaskStatus } from '../api/schema.js';
import type { AuditEvent, TaskDelta, TaskJournal } from '../audit/journal.js';
import { canonicalJson } from '../audit/record.js';
import { containerCredentials, type CredentialBroker } from '../credentials/broker.js';
import type { Logger } from '../log.js';
import type { PolicyEngine, Reason } from '../policy/engine.js';
import type { Clock } from '../runtime/clock.js';
import type { Metrics } from '../runtime/metrics.js';
import { HttpError } from '../server/http.js';
import type { AgentPrincipal } from './auth.js';
import type { HopIds } from './hopids.js';

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

export interface HopAnswer {
  hopId: string;
  decision: HopDecision;
  reasons: Reason[];
  depth: number;
  timeoutAt?: string;
  credentials?: Record<string, string>;
}

const NAME = /^[A-Za-z0-9_.:/-]{1,63}$/;
const FIELDS = new Set(['tool', 'action', 'resource', 'parentHop', 'intent', 'attributes', 'credential']);

const bad = (field: string, message: string) => new HttpError(400, 'invalid_hop', `${field}: ${message}`, field);

/** Validates a hop request; the first problem is a 400 that names the field. */
export function parseHopRequest(body: unknown): HopRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw bad('body', 'must be a JSON object such as {"tool":"tickets","action":"read","resource":"ticket/1"}');
  const b = body as Record<string, unknown>;
  for (const key of Object.keys(b)) if (!FIELDS.has(key)) throw bad(key, `is not a hop field (fields: ${[...FIELDS].join(', ')})`);
  const str = (field: string, required: boolean, max: number, pattern?: RegExp): string | undefined => {
    const v = b[field];
    if (v === undefined || v === null) {
      if (required) throw bad(field, 'is required');
      return undefined;
    }
    if (typeof v !== 'string') throw bad(field, 'must be a string');
    if (v.length > max) throw bad(field, `must be at most ${max} characters`);
    if (pattern && !pattern.test(v)) throw bad(field, `must match ${pattern.source}`);
    return v;
  };
  const tool = str('tool', true, 63, NAME) ?? '';
  const action = str('action', true, 63, NAME) ?? '';
  const resource = str('resource', false, 1024) ?? '';
  const parentHop = str('parentHop', false, 64);
  const intent = str('intent', false, 1024) ?? '';
  const credential = str('credential', false, 63, /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/);
  const attributes: Record<string, string> = {};
  if (b.attributes !== undefined) {
    if (typeof b.attributes !== 'object' || b.attributes === null || Array.isArray(b.attributes)) throw bad('attributes', 'must be an object of strings, numbers or booleans');
    const entries = Object.entries(b.attributes as Record<string, unknown>);
    if (entries.length > 50) throw bad('attributes', 'may have at most 50 entries');
    for (const [k, v] of entries) {
      if (!NAME.test(k)) throw bad(`attributes.${k}`, `keys must match ${NAME.source}`);
      if (!['string', 'number', 'boolean'].includes(typeof v)) throw bad(`attributes.${k}`, 'must be a string, number or boolean');
      attributes[k] = String(v);
    }
  }
  return { tool, action, resource, parentHop, intent, attributes, credential };
}

/** What an approval is bound to: the same tool, action, resource and attributes, nothing else. */
export function hopDigest(r: Pick<HopRequest, 'tool' | 'action' | 'resource' | 'attributes'>): string {
  return createHash('sha256').update(canonicalJson({ tool: r.tool, action: r.action, resource: r.resource, attributes: r.attributes })).digest('hex');
}

export interface HopServiceDeps {
  engine: PolicyEngine;
  journal: TaskJournal;
  ids: HopIds;
  policy: (namespace: string, name: string) => AgentPolicy | undefined;
  approvals: (namespace: string) => AgentApproval[];
  credentials: CredentialBroker;
  clock: Clock;
  log: Logger;
  metrics: Metrics;
}

interface ChainView {
  hopCount: number;
  priorDenials: number;
  systems: Set<string>;
  dataClasses: Set<string>;
}

/** The chain as this replica sees it: the task's status plus what it has not written yet. */
function chainView(c: AgentTaskStatus['chain'], unwritten: TaskDelta | undefined): ChainView {
  return {
    hopCount: (c?.hopCount ?? 0) + (unwritten?.hopCount ?? 0),
    priorDenials: (c?.priorDenials ?? 0) + (unwritten?.priorDenials ?? 0),
    systems: new Set([...(c?.systemsTouched ?? []), ...(unwritten?.systems ?? [])]),
    dataClasses: new Set([...(c?.dataClassesTouched ?? []), ...(unwritten?.dataClasses ?? [])]),
  };
}

const DEFAULT_DENY: Reason = { rule: 'default-deny', effect: 'Deny' };

/**
 * Every hop is a new decision, taken with the whole chain in view: limits first, then the
 * policy's Cedar. Answers come from memory; the chain state and audit records are written to the
 * task by the journal in small batches, except where an answer must not outrun its record: a
 * hop left waiting for approval and a violation are written before they are answered.
 */
export class HopService {
  private readonly answers = new Map<string, HopAnswer>();

  constructor(private readonly deps: HopServiceDeps) {}

  private remember(answer: HopAnswer): void {
    if (this.answers.size >= 20_000) this.answers.delete(this.answers.keys().next().value ?? '');
    this.answers.set(answer.hopId, answer);
  }

  async decide(who: AgentPrincipal, body: unknown): Promise<HopAnswer> {
    const started = performance.now();
    const request = parseHopRequest(body);
    const task = who.task;
    const { namespace = '', name = '', uid = '' } = task.metadata;
    const policy = this.deps.policy(namespace, task.spec.policyRef.name);
    if (!policy) throw new HttpError(403, 'task_not_active', `AgentPolicy ${task.spec.policyRef.name} does not exist; the task gets no decisions`);
    let depth = 1;
    if (request.parentHop) {
      const parentDepth = this.deps.ids.depthOf(uid, request.parentHop);
      if (parentDepth === undefined) throw bad('parentHop', `is not a hop of AgentTask ${namespace}/${name}`);
      depth = parentDepth + 1;
    }
    const view = chainView(this.deps.journal.latestChain(task), this.deps.journal.unwritten(namespace, name));
    const hopId = this.deps.ids.mint(uid, depth);
    const now = this.deps.clock.now();
    const at = new Date(now).toISOString();
    const maxHops = task.spec.limits?.maxHops ?? policy.spec.limits?.maxHops ?? 100;
    const maxDepth = task.spec.limits?.maxDepth ?? policy.spec.limits?.maxDepth ?? 6;
    const system = (policy.spec.systems ?? []).find((s) => s.name === request.tool);
    // A tool the policy does not declare is treated as outside the organisation.
    const boundary = system?.trustBoundary ?? 'external';
    const internal = new Set((policy.spec.systems ?? []).filter((s) => (s.trustBoundary ?? 'internal') === 'internal').map((s) => s.name));

    let decision: HopDecision;
    let reasons: Reason[];
    if (view.hopCount + 1 > maxHops) {
      decision = 'deny';
      reasons = [{ rule: 'limit:maxHops', effect: 'Deny' }];
    } else if (depth > maxDepth) {
      decision = 'deny';
      reasons = [{ rule: 'limit:maxDepth', effect: 'Deny' }];
    } else {
      const evaluation = this.deps.engine.evaluate(
        policy,
        { namespace, task: name, serviceAccount: task.spec.serviceAccountName, intent: task.spec.intent ?? '', toolDataClasses: system?.dataClasses ?? [], attributes: request.attributes },
        {
          tool: request.tool,
          action: request.action,
          resource: request.resource,
          intent: request.intent,
          depth,
          hopCount: view.hopCount,
          secondsSinceStart: Math.max(0, Math.floor((now - Date.parse(task.metadata.creationTimestamp ?? '')) / 1000)),
          systemsTouched: [...view.systems],
          dataClassesTouched: [...view.dataClasses],
          trustBoundary: boundary,
          crossesTrustBoundary: boundary === 'external' && [...view.systems].some((s) => internal.has(s)),
          priorDenials: view.priorDenials,
        },
        boundary,
      );
      if (evaluation.errors.length > 0) this.deps.log.warn({ task: `${namespace}/${name}`, errors: evaluation.errors }, 'Cedar evaluation errors');
      if (evaluation.decision === 'Deny') {
        decision = 'deny';
        reasons = evaluation.reasons.length > 0 ? evaluation.reasons.filter((r) => r.effect === 'Deny') : [DEFAULT_DENY];
        if (reasons.length === 0) reasons = evaluation.reasons;
      } else {
        const approvals = evaluation.reasons.filter((r) => r.effect === 'RequireApproval');
        decision = approvals.length > 0 ? 'pending_approval' : 'allow';
        reasons = approvals.length > 0 ? approvals : evaluation.reasons;
      }
    }

    const record: AuditEvent = {
      type: 'hop_decided',
      at,
      data: { hopId, parentHop: request.parentHop, depth, tool: request.tool, action: request.action, resource: request.resource, intent: request.intent, digest: hopDigest(request), decision, reasons, pod: who.podName },
    };
    const answer: HopAnswer = { hopId, decision, reasons, depth };
    const recent = { hopId, decision: decision === 'allow' ? 'allow' : 'deny', rules: reasons.map((r) => r.rule), at };
    if (decision === 'allow') {
      this.deps.journal.record(namespace, name, { hopCount: 1, allowed: 1, systems: new Set([request.tool]), dataClasses: new Set(system?.dataClasses ?? []), recent: [recent], events: [record] });
      if (request.credential) answer.credentials = containerCredentials(await this.deps.credentials.credentials(who, request.credential));
    } else if (decision === 'pending_approval') {
      const timeoutAt = new Date(now + parseDuration(policy.spec.approval?.timeout ?? '15m')).toISOString();
      answer.timeoutAt = timeoutAt;
      await this.deps.journal.commit(namespace, name, {
        hopCount: 1,
        pending: 1,
        addPending: [{ hopId, digest: hopDigest(request), tool: request.tool, action: request.action, resource: request.resource, depth, parentHop: request.parentHop, rules: reasons.map((r) => r.rule), requestedAt: at, timeoutAt }],
        events: [record],
      });
    } else {
      const violation = (policy.spec.onViolation ?? 'Revoke') === 'Revoke';
      const change: Partial<TaskDelta> = { hopCount: 1, denied: 1, priorDenials: 1, recent: [recent], events: [record] };
      if (violation) {
        const rule = reasons.map((r) => r.rule).join(', ');
        const message = `${request.tool} ${request.action} ${request.resource} was denied by ${rule}`;
        change.violation = { hopId, rule, message };
        change.events = [record, { type: 'violation', at, data: { hopId, rule, message, onViolation: 'Revoke' } }];
        await this.deps.journal.commit(namespace, name, change);
      } else {
        this.deps.journal.record(namespace, name, change);
      }
    }
    this.remember(answer);
    this.deps.metrics.counter('chainwarden_hops_total', 'Hop decisions by outcome.', { decision }).inc();
    this.deps.metrics.histogram('chainwarden_hop_decision_seconds', 'Time to decide one hop.').observe((performance.now() - started) / 1000);
    return answer;
  }

  /** GET /v1/hops/{id}: the hop's decision, resolving it first if it waits for approval. */
  async status(who: AgentPrincipal, hopId: string): Promise<HopAnswer> {
    const { namespace = '', name = '', uid = '' } = who.task.metadata;
    const depth = this.deps.ids.depthOf(uid, hopId);
    if (depth === undefined) throw new HttpError(404, 'hop_not_found', `${hopId} is not a hop of AgentTask ${namespace}/${name}`);
    const known = this.answers.get(hopId);
    if (known && known.decision !== 'pending_approval') return known;
    const pending = (who.task.status?.pendingHops ?? []).find((h) => h.hopId === hopId);
    if (pending) {
      await this.resolvePending(who.task);
      const resolved = this.answers.get(hopId);
      if (resolved && resolved.decision !== 'pending_approval') return resolved;
      return { hopId, decision: 'pending_approval', reasons: pending.rules.map((rule) => ({ rule, effect: 'RequireApproval' })), depth, timeoutAt: pending.timeoutAt };
    }
    const recent = (who.task.status?.recentHops ?? []).find((h) => h.hopId === hopId);
    if (recent) return { hopId, decision: recent.decision as HopDecision, reasons: recent.rules.map((rule) => ({ rule, effect: recent.decision === 'allow' ? 'Allow' : 'Deny' })), depth };
    if (known) return known;
    throw new HttpError(404, 'hop_not_found', `hop ${hopId} is not among the recent hops of AgentTask ${namespace}/${name}`);
  }

  /**
   * Decides the task's waiting hops that an AgentApproval now answers or whose time ran out.
   * Safe on every replica at once: a hop's resolution counts only if it was still pending.
   */
  async resolvePending(task: AgentTask): Promise<number> {
    const { namespace = '', name = '' } = task.metadata;
    const pending = task.status?.pendingHops ?? [];
    if (pending.length === 0) return 0;
    const now = this.deps.clock.now();
    const at = new Date(now).toISOString();
    const approvals = this.deps.approvals(namespace).filter((a) => a.spec.taskRef.name === name);
    const policy = this.deps.policy(namespace, task.spec.policyRef.name);
    const resolutions: TaskDelta['resolutions'] = [];
    for (const hop of pending) {
      const approval = approvals.find((a) => a.spec.hopId === hop.hopId);
      if (approval && approval.spec.hopDigest !== hop.digest) {
        this.deps.log.warn({ task: `${namespace}/${name}`, hopId: hop.hopId, approval: approval.metadata.name }, 'approval does not match the hop it names; ignored');
        continue;
      }
      const timedOut = !approval && now >= Date.parse(hop.timeoutAt);
      if (!approval && !timedOut) continue;
      const approved = approval?.spec.decision === 'Approve';
      const rule = approval ? `approval:${approval.metadata.name ?? ''}` : 'approval-timeout';
      const reasons: Reason[] = [{ rule, effect: approved ? 'Allow' : 'Deny' }];
      const system = (policy?.spec.systems ?? []).find((s) => s.name === hop.tool);
      const events: AuditEvent[] = [];
      if (approval) {
        events.push({ type: 'approval', at, data: { hopId: hop.hopId, approval: approval.metadata.name, decision: approval.spec.decision, reason: approval.spec.reason, approver: approval.spec.approver } });
      }
      events.push({ type: 'hop_decided', at, data: { hopId: hop.hopId, parentHop: hop.parentHop, depth: hop.depth, tool: hop.tool, action: hop.action, resource: hop.resource, digest: hop.digest, decision: approved ? 'allow' : 'deny', reasons } });
      resolutions.push({
        hopId: hop.hopId,
        decision: approved ? 'allow' : 'deny',
        systems: approved ? [hop.tool] : [],
        dataClasses: approved ? (system?.dataClasses ?? []) : [],
        recent: { hopId: hop.hopId, decision: approved ? 'allow' : 'deny', rules: [rule], at },
        events,
      });
      this.remember({ hopId: hop.hopId, decision: approved ? 'allow' : 'deny', reasons, depth: hop.depth });
    }
    if (resolutions.length > 0) await this.deps.journal.commit(namespace, name, { resolutions });
    return resolutions.length;
  }
}
