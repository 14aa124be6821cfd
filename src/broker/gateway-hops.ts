import { setImmediate } from 'node:timers/promises';
import { MAX_HOP_RESOURCE, type AgentApproval, type AgentTask } from '../api/schema.js';
import { ChainwardenError } from '../errors.js';
import type { SvidIssuer } from '../identity/svid.js';
import type { Reason } from '../policy/engine.js';
import type { Clock } from '../runtime/clock.js';
import type { AgentPrincipal } from './auth.js';
import { hopDigest, type GatewayHopFacts, type HopAnswer, type HopDecision, type HopRequest, type HopService } from './hops.js';

/** Set on an AgentApproval once a gateway call has used it: who, and when. */
export const APPROVAL_USED_BY = 'chainwarden.io/used-by';

export interface GatewayHopsDeps {
  hops: Pick<HopService, 'decideForGateway' | 'isHopOf' | 'preview' | 'mayWait'>;
  /** The AgentApprovals of a namespace, from the cache. */
  approvals: (namespace: string) => AgentApproval[];
  /** Marks an approval used by one call, if no call has used it yet: true for the one caller that wins, on any replica. */
  claim: (approval: AgentApproval, hopRef: string) => Promise<boolean>;
  issuer: Pick<SvidIssuer, 'mintTxnToken'>;
  trustDomain: string;
  /** The task's SourceIdentity marker: the `txn` of its transaction tokens. */
  marker: (task: AgentTask) => string;
  /** The task's SPIFFE ID. */
  spiffeId: (task: AgentTask) => string;
  clock: Clock;
}

/** A gateway's hop, decided: allowed with its transaction token, or refused with the error the gateway answers. */
export type GatewayVerdict =
  | { allowed: true; answer: HopAnswer; txnToken: string }
  | { allowed: false; error: ChainwardenError; hopId: string; decision: 'deny' | 'pending_approval'; reasons: Reason[] };

/** One hop of a gateway call of several (a copy's read and write, each object of a bulk delete). */
export interface CallHop {
  request: HopRequest;
  /** Names the hop in refusals: "s3:GetObject on arn:aws:s3:::b/k (the source of a copy)". */
  what: string;
  /** The hop of the same call this one follows, by its place in the call: its parent once decided. */
  after?: number;
}

/**
 * What the AWS and MCP gateways share: a call is a hop. The same call again while its hop waits
 * is that hop, not a new one for the approver to find; once an AgentApproval of it exists, the
 * identical call goes through once (the approval is claimed, on whichever replica); an allowed
 * call carries a transaction token whose hash is in its audit record.
 */
export class GatewayHops {
  constructor(private readonly deps: GatewayHopsDeps) {}

  /**
   * `what` names the call in refusals ("s3:GetObject on arn:aws:s3:::b/k"); `retry` says how
   * to go on once it is approved.
   */
  decide(who: AgentPrincipal, hop: HopRequest, what: string, retry: string): Promise<GatewayVerdict> {
    return this.decideOne(who, hop, what, retry, true);
  }

  /** As `decide`; with `useApproval` false no approval is claimed, so what needs one waits. */
  private async decideOne(who: AgentPrincipal, hop: HopRequest, what: string, retry: string, useApproval: boolean): Promise<GatewayVerdict> {
    // What a gateway derives is bounded as a hop an agent sends is: a longer resource would be a record the task's status refuses.
    if (hop.resource.length > MAX_HOP_RESOURCE) {
      throw new ChainwardenError('invalid_request', `the resource this call names is ${hop.resource.length} characters, more than the ${MAX_HOP_RESOURCE} a hop takes: ${hop.resource.slice(0, 80)}…`, { field: 'resource' });
    }
    const task = who.task;
    const digest = hopDigest(hop);
    const waiting = (task.status?.pendingHops ?? []).find((h) => h.digest === digest);
    if (waiting) {
      const reasons = waiting.rules.map((rule): Reason => ({ rule, effect: 'RequireApproval' }));
      return { allowed: false, error: pendingError(what, waiting.hopId, waiting.rules.join(', '), retry), hopId: waiting.hopId, decision: 'pending_approval', reasons };
    }
    const approvedBy = useApproval ? await this.approvalFor(task, digest, who.podName) : undefined;
    const { answer, txnToken } = await this.deps.hops.decideForGateway(who, hop, approvedBy, (facts) => this.mint(task, hop, facts));
    const rules = answer.reasons.map((r) => r.rule).join(', ');
    if (answer.decision === 'deny') {
      return { allowed: false, error: new ChainwardenError('hop_denied', `${what} was denied by ${rules || 'default-deny'} (hop ${answer.hopId})`), hopId: answer.hopId, decision: 'deny', reasons: answer.reasons };
    }
    if (answer.decision === 'pending_approval' || txnToken === undefined) {
      return { allowed: false, error: pendingError(what, answer.hopId, rules, retry), hopId: answer.hopId, decision: 'pending_approval', reasons: answer.reasons };
    }
    return { allowed: true, answer, txnToken };
  }

  /**
   * A call of several hops, which goes on only if every one is allowed: decided in order, each
   * with those before it in the chain, a hop after one that is not allowed left undecided. The
   * verdict is the last hop's, or the first deny, or the first wait (saying how many more wait;
   * up to 20 a try, to be approved in one round).
   *
   * A try that cannot go through records and spends only what it must. While hops of an earlier
   * try wait, the call waits on them and nothing is decided again. Otherwise, when the policy
   * holds any hop for approval, the call is first forecast (`HopService.preview`, up to its first
   * deny):
   * - a hop would be denied: the hops before it that are allowed outright are decided, then it,
   *   so the deny is recorded on the chain it was forecast on; no person is asked about a call
   *   that cannot go through, and no approval is used;
   * - hops would wait: only they are decided, each after what it follows (`decideWaiting`); the
   *   others are neither recorded nor counted, and no approval is used, until a try can go through.
   * A forecast that proves wrong (the chain moved meanwhile) costs only that: the call is then
   * decided in full.
   */
  async decideCall(who: AgentPrincipal, hops: readonly CallHop[], retry: string): Promise<GatewayVerdict> {
    if (hops.length === 1 && hops[0]) return this.decide(who, hops[0].request, hops[0].what, retry);
    const waiting = new Set((who.task.status?.pendingHops ?? []).map((h) => h.digest));
    const still = hops.find((hop) => waiting.has(hopDigest(hop.request)));
    if (still) return this.decide(who, still.request, still.what, retry);
    if (!this.deps.hops.mayWait(who.task)) return this.decideAll(who, hops, retry);
    // For each hop, the hop an unused approval of it released: the approval the call would use, each used by one hop.
    const unused = new Map<string, string[]>();
    for (const { spec } of this.unusedApprovals(who.task)) if (spec.hopDigest) unused.set(spec.hopDigest, [...(unused.get(spec.hopDigest) ?? []), spec.hopId]);
    const released = hops.map((hop) => unused.get(hopDigest(hop.request))?.shift());
    const forecast = await this.forecast(who, hops, released);
    const denied = forecast.indexOf('deny');
    if (denied >= 0) {
      // Skipped: hops that would wait (a wait adds nothing to the chain) and hops an approval would allow (its hop is in the chain already).
      const skip = new Set(forecast.flatMap((d, i) => (d === 'pending_approval' || released[i] !== undefined ? [i] : [])));
      const verdict = await this.decideInOrder(who, hops.slice(0, denied + 1), retry, { skip, stands: released, useApproval: false });
      if (verdict && !verdict.allowed && verdict.decision === 'deny') return verdict;
    } else if (forecast.includes('pending_approval')) {
      const waits = await this.decideWaiting(who, hops, forecast, released, retry);
      if (waits) return waits;
    }
    return this.decideAll(who, hops, retry);
  }

  private async decideAll(who: AgentPrincipal, hops: readonly CallHop[], retry: string): Promise<GatewayVerdict> {
    const verdict = await this.decideInOrder(who, hops, retry);
    if (!verdict) throw new ChainwardenError('invalid_request', 'the call names no hop');
    return verdict;
  }

  /** The call's hops as they would be decided, up to the first that would be denied. */
  private async forecast(who: AgentPrincipal, hops: readonly CallHop[], released: readonly (string | undefined)[]): Promise<(HopDecision | undefined)[]> {
    const decisions: (HopDecision | undefined)[] = [];
    const breathe = pacer();
    const planned = hops.map((hop, i) => ({ request: hop.request, ...(hop.after !== undefined ? { after: hop.after } : {}), approved: released[i] !== undefined }));
    for (const decision of this.deps.hops.preview(who, planned)) {
      decisions.push(decision);
      if (decision === 'deny') break;
      await breathe();
    }
    return decisions;
  }

  /**
   * The hops forecast to wait (the first 20), each after what it follows, so that the approver
   * sees it in its place in the chain and with every rule that holds it: a hop it follows that is
   * allowed outright is decided first; one an unused approval allows is not (that would spend the
   * approval), and the hop that approval released, already in the chain, stands in for it. A hop
   * that follows one that waits is not forecast, and is left for a later try, once what it follows
   * is in the chain. Undefined when, decided, none waits after all.
   */
  private async decideWaiting(who: AgentPrincipal, hops: readonly CallHop[], forecast: readonly (HopDecision | undefined)[], released: readonly (string | undefined)[], retry: string): Promise<GatewayVerdict | undefined> {
    const decide = new Set<number>();
    const waits = forecast.flatMap((d, i) => (d === 'pending_approval' ? [i] : [])).slice(0, MAX_WAITING_A_CALL);
    for (const i of waits) {
      decide.add(i);
      for (let j = hops[i]?.after; j !== undefined && released[j] === undefined; j = hops[j]?.after) decide.add(j);
    }
    const ids: (string | undefined)[] = [...released];
    const refused: Refused[] = [];
    const breathe = pacer();
    for (const [i, hop] of hops.entries()) {
      if (!decide.has(i)) continue;
      await breathe();
      const parent = hop.after === undefined ? undefined : ids[hop.after];
      const verdict = await this.decideOne(who, parent ? { ...hop.request, parentHop: parent } : hop.request, hop.what, retry, false);
      ids[i] = verdict.allowed ? verdict.answer.hopId : undefined;
      if (verdict.allowed) continue;
      if (verdict.decision === 'deny') return verdict;
      refused.push(verdict);
    }
    return refused.length > 0 ? together(refused) : undefined;
  }

  /**
   * Every hop in order but those in `skip`; a hop after one not allowed is not decided, nor after
   * one skipped unless `stands` names a hop in the chain that stands in for it. Undefined when
   * none was decided.
   */
  private async decideInOrder(who: AgentPrincipal, hops: readonly CallHop[], retry: string, { skip = new Set(), stands = [], useApproval = true }: InOrder = {}): Promise<GatewayVerdict | undefined> {
    const ids: (string | undefined)[] = [];
    const refused: Refused[] = [];
    let last: GatewayVerdict | undefined;
    const breathe = pacer();
    for (const [i, hop] of hops.entries()) {
      const parent = hop.after === undefined ? undefined : ids[hop.after];
      if (skip.has(i) || (hop.after !== undefined && parent === undefined)) {
        ids.push(skip.has(i) ? stands[i] : undefined);
        continue;
      }
      await breathe();
      last = await this.decideOne(who, parent ? { ...hop.request, parentHop: parent } : hop.request, hop.what, retry, useApproval);
      ids.push(last.allowed ? last.answer.hopId : undefined);
      if (last.allowed) continue;
      if (last.decision === 'deny') return last;
      if (refused.push(last) >= MAX_WAITING_A_CALL) break;
    }
    return refused.length > 0 ? together(refused) : last;
  }

  /** Approvals of the task's hops (of this exact call, given its digest) that no call has used yet. */
  private unusedApprovals(task: AgentTask, digest?: string): AgentApproval[] {
    return this.deps.approvals(task.metadata.namespace ?? '').filter(
      (a) =>
        a.spec.taskRef.name === task.metadata.name &&
        a.spec.decision === 'Approve' &&
        (digest === undefined || a.spec.hopDigest === digest) &&
        !a.metadata.annotations?.[APPROVAL_USED_BY] &&
        this.deps.hops.isHopOf(task, a.spec.hopId),
    );
  }

  /**
   * An unused approval of this exact call, claimed for this one. Its hop must be one of this
   * task: approvals outlive their task, and one left unused by an earlier task of the same name
   * must not release the same call in a new one.
   */
  private async approvalFor(task: AgentTask, digest: string, pod: string): Promise<string | undefined> {
    for (const approval of this.unusedApprovals(task, digest)) if (await this.deps.claim(approval, `${pod}@${new Date(this.deps.clock.now()).toISOString()}`)) return approval.metadata.name;
    return undefined;
  }

  private mint(task: AgentTask, hop: HopRequest, facts: GatewayHopFacts): string {
    return this.deps.issuer.mintTxnToken({
      spiffeId: this.deps.spiffeId(task),
      trustDomain: this.deps.trustDomain,
      txn: this.deps.marker(task),
      scope: `${hop.tool}:${hop.action}`,
      tctx: {
        task: task.metadata.name ?? '',
        namespace: task.metadata.namespace ?? '',
        policy: facts.policy,
        hopId: facts.hopId,
        // Every claim the contract lists is there: a first hop's parent is null, not left out.
        parentHop: facts.parentHop ?? null,
        depth: facts.depth,
        dataClassesTouched: facts.dataClassesTouched,
      },
    });
  }
}

type Refused = Extract<GatewayVerdict, { allowed: false }>;

interface InOrder {
  /** Hops not decided. */
  skip?: ReadonlySet<number>;
  /** For a skipped hop, one in the chain that stands in for it as the parent of those that follow it. */
  stands?: readonly (string | undefined)[];
  /** Whether an unused approval of a hop is claimed for it: not in a try that cannot go through. */
  useApproval?: boolean;
}

/** A call decides up to this many hops that need approval in one try, then waits on them. */
const MAX_WAITING_A_CALL = 20;
/** How long a run of a call's decisions holds the event loop before other calls are answered. */
const YIELD_EVERY_MS = 5;

/** Lets other calls in every few milliseconds of a long run of decisions (a bulk delete is up to a thousand). */
function pacer(): () => Promise<void> {
  let ran = performance.now();
  return async () => {
    if (performance.now() - ran <= YIELD_EVERY_MS) return;
    await setImmediate();
    ran = performance.now();
  };
}

/** The first wait of a call, saying how many more of its hops wait with it. */
function together(refused: readonly Refused[]): Refused {
  const [first] = refused;
  if (!first) throw new Error('no refusal to answer');
  const more = refused.length - 1;
  if (more === 0) return first;
  return { ...first, error: new ChainwardenError(first.error.code, `${first.error.message}; ${more} more of its hops ${more === 1 ? 'waits' : 'wait'} for approval too (the task's status.pendingHops), and the call goes through once all are approved`) };
}

const pendingError = (what: string, hopId: string, rules: string, retry: string) => new ChainwardenError('approval_pending', `${what} waits for approval (hop ${hopId}, rule ${rules}); ${retry}`);
