import { setImmediate, setTimeout as sleep } from 'node:timers/promises';
import { MAX_HOP_RESOURCE, type AgentApproval, type AgentTask } from '../api/schema.js';
import { unhashedBody } from '../api/task.js';
import { ChainwardenError } from '../errors.js';
import type { SvidIssuer } from '../identity/svid.js';
import type { Reason } from '../policy/engine.js';
import type { Clock } from '../runtime/clock.js';
import type { AgentPrincipal } from './auth.js';
import { approvalOf, firstApprovals, hopDigest, notAParentOf, type Forecast, type GatewayHopFacts, type HopAnswer, type HopApproval, type HopRequest, type HopService } from './hops.js';

/** Set on an AgentApproval once a gateway call has used it: who, and when. */
export const APPROVAL_USED_BY = 'chainwarden.io/used-by';

export interface GatewayHopsDeps {
  hops: Pick<HopService, 'decideForGateway' | 'isHopOf' | 'preview' | 'mayWait'>;
  /** The AgentApprovals of a namespace, from the cache. */
  approvals: (namespace: string) => AgentApproval[];
  /** Marks an approval used by one call, if no call has used it yet: true for the one caller that wins, on any replica. */
  claim: (approval: AgentApproval, hopRef: string) => Promise<boolean>;
  /** Unmarks an approval claimed (as `hopRef`) for a call that then did not go through, if it is still so marked. */
  release: (approval: AgentApproval, hopRef: string) => Promise<boolean>;
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
  /**
   * Approvals this replica gave back, by namespace/name, with the mark it removed: until the
   * watch shows them unmarked, the cache still does, and a retry a moment later would wait for a
   * new approval. An approval whose cached mark is exactly the one removed counts as unused (the
   * claim reads it fresh all the same).
   */
  private readonly givenBack = new Map<string, string>();

  constructor(private readonly deps: GatewayHopsDeps) {}

  /**
   * Releases claims, a few at a time, the answer waiting at most a second for all of them: a call
   * is refused for a slow API server, among other things, and its answer must not wait on that
   * API server again. A release that lands later still counts.
   */
  private giveBack(claims: readonly Claim[]): Promise<void> {
    if (claims.length === 0) return Promise.resolve();
    const release = ({ approval, by }: Claim) =>
      this.deps.release(approval, by).then(
        (done) => {
          if (!done) return;
          if (this.givenBack.size >= GIVEN_BACK_REMEMBERED) this.givenBack.delete(this.givenBack.keys().next().value ?? '');
          this.givenBack.set(keyOf(approval), by);
        },
        () => undefined,
      );
    const all = (async () => {
      for (let i = 0; i < claims.length; i += RELEASES_AT_ONCE) await Promise.all(claims.slice(i, i + RELEASES_AT_ONCE).map(release));
    })();
    return Promise.race([all, sleep(GIVE_BACK_WAIT_MS, undefined, { ref: false })]);
  }

  /** Claims an approval for this call; one whose claim failed midway (its answer lost) is given back with `before`, then the failure is thrown. */
  private async claim(approval: AgentApproval, by: string, before: readonly Claim[] = []): Promise<boolean> {
    try {
      return await this.deps.claim(approval, by);
    } catch (err) {
      await this.giveBack([...before, { approval, by }]);
      throw err;
    }
  }

  /** Whether no call has used the approval, as far as this replica knows. */
  private isUnused(approval: AgentApproval): boolean {
    const mark = approval.metadata.annotations?.[APPROVAL_USED_BY];
    if (!mark) {
      this.givenBack.delete(keyOf(approval));
      return true;
    }
    return this.givenBack.get(keyOf(approval)) === mark;
  }

  /**
   * `what` names the call in refusals ("s3:GetObject on arn:aws:s3:::b/k"); `retry` says how
   * to go on once it is approved.
   */
  decide(who: AgentPrincipal, hop: HopRequest, what: string, retry: string): Promise<GatewayVerdict> {
    return this.decideOne(who, hop, what, retry, 'claim');
  }

  /**
   * As `decide`. What an unused approval of the hop does: `claim` claims one that would let it
   * through and decides with it; an approval names one that a call of several hops claims only
   * once every hop is allowed; `none` decides without, so what needs one waits. `outgrown` is an
   * approval of the hop that a forecast found too narrow for it now: a wait says so.
   */
  private async decideOne(who: AgentPrincipal, hop: HopRequest, what: string, retryOnce: string, approvalGiven: 'claim' | AgentApproval | 'none', outgrown?: AgentApproval): Promise<GatewayVerdict> {
    // What a gateway derives is bounded as a hop an agent sends is: a longer resource would be a record the task's status refuses.
    if (hop.resource.length > MAX_HOP_RESOURCE) {
      throw new ChainwardenError('invalid_request', `the resource this call names is ${hop.resource.length} characters, more than the ${MAX_HOP_RESOURCE} a hop takes: ${hop.resource.slice(0, 80)}…`, { field: 'resource' });
    }
    const task = who.task;
    const digest = hopDigest(hop);
    const bound = approvable(hop);
    const retry = bound ? retryOnce : unbound(hop);
    const approval = bound ? approvalGiven : 'none';
    const waiting = (task.status?.pendingHops ?? []).find((h) => h.digest === digest);
    if (waiting) {
      const reasons = waiting.rules.map((rule): Reason => ({ rule, effect: 'RequireApproval' }));
      return { allowed: false, error: pendingError(what, waiting.hopId, waiting.rules.join(', '), retry), hopId: waiting.hopId, decision: 'pending_approval', reasons };
    }
    // A parent the agent named that is no hop of the task is refused before any approval is
    // claimed: deciding refuses it all the same, and a claim given back on every such try would
    // let an agent churn an approval's mark at will. (A call's own hops name parents it minted.)
    if (approval === 'claim' && hop.parentHop !== undefined && !this.deps.hops.isHopOf(task, hop.parentHop)) throw notAParentOf(task);
    const found = approval === 'claim' ? await this.approvalFor(who, hop, digest) : approval === 'none' ? { outgrown } : { approval: approvalOf(approval), outgrown: approval };
    let decided: Awaited<ReturnType<HopService['decideForGateway']>>;
    try {
      decided = await this.deps.hops.decideForGateway(who, hop, found.approval, (facts) => this.mint(task, hop, facts));
    } catch (err) {
      // Refused before it went through (a hop that widens the chain whose record is not written yet): its approval lets the retry through.
      if (found.claim) await this.giveBack([found.claim]);
      throw err;
    }
    const { answer, txnToken } = decided;
    // Claimed on a forecast the decision did not bear out (the chain grew in between): the approval stays for the call it still fits.
    if (found.claim && !(txnToken !== undefined && answer.reasons.some((r) => r.rule === `approval:${found.claim?.approval.metadata.name ?? ''}`))) await this.giveBack([found.claim]);
    const rules = answer.reasons.map((r) => r.rule).join(', ');
    if (answer.decision === 'deny') {
      return { allowed: false, error: new ChainwardenError('hop_denied', `${what} was denied by ${rules || 'default-deny'} (hop ${answer.hopId})`), hopId: answer.hopId, decision: 'deny', reasons: answer.reasons };
    }
    if (answer.decision === 'pending_approval' || txnToken === undefined) {
      const error = pendingError(what, answer.hopId, rules, retry, found.outgrown && outgrownBy(found.outgrown, answer.reasons));
      return { allowed: false, error, hopId: answer.hopId, decision: 'pending_approval', reasons: answer.reasons };
    }
    return { allowed: true, answer, txnToken };
  }

  /**
   * A call of several hops, which goes on only if every one is allowed: decided in order, each
   * with those before it in the chain, a hop after one that is not allowed left undecided. The
   * verdict is the last hop's, or the first deny, or the first wait (saying how many more wait;
   * up to 20 a try, to be approved in one round). An approval a hop needs is claimed only once
   * every hop of the call is allowed, so no try that is refused uses one up.
   *
   * While hops of an earlier try wait, the call waits on them and nothing is decided again.
   * Otherwise, when the policy holds any hop for approval, the call is first forecast
   * (`HopService.preview`, up to its first deny). If hops would wait and none would be denied,
   * only they are decided (`decideWaiting`), so that the others are neither recorded nor counted
   * until a try can go through. Else, and whenever the forecast proves wrong, the call is decided
   * in order; with a deny forecast, past any number of waits, so the deny is recorded on the chain
   * deciding in order gives it.
   */
  async decideCall(who: AgentPrincipal, hops: readonly CallHop[], retry: string): Promise<GatewayVerdict> {
    await this.refuseUnapprovable(who, hops);
    if (hops.length === 1 && hops[0]) return this.decide(who, hops[0].request, hops[0].what, retry);
    const waiting = new Set((who.task.status?.pendingHops ?? []).map((h) => h.digest));
    const still = hops.find((hop) => waiting.has(hopDigest(hop.request)));
    if (still) return this.decide(who, still.request, still.what, retry);
    // For each hop, an unused approval of it, each given to one hop: what the call uses if it goes through.
    const unused = new Map<string, AgentApproval[]>();
    for (const a of this.unusedApprovals(who.task)) if (a.spec.hopDigest) unused.set(a.spec.hopDigest, [...(unused.get(a.spec.hopDigest) ?? []), a]);
    const released = hops.map((hop) => (approvable(hop.request) ? unused.get(hopDigest(hop.request))?.shift() : undefined));
    if (!this.deps.hops.mayWait(who.task)) return this.decideInOrder(who, hops, released, retry, MAX_WAITING_A_CALL);
    let forecast = await this.forecast(who, hops, released);
    // An approval the forecast finds too narrow for its hop now (a rule it was not given for holds
    // the hop) gives way to the next approval of the same call, if there is one; it stays unused.
    // One given to a hop the call does not decide (it follows one that is not allowed) goes to a
    // later hop of the same digest that would wait without one, as deciding in order gives it.
    for (let swaps = 0; swaps < MAX_APPROVAL_SWAPS; swaps++) {
      const narrow = forecast.findIndex((f, i) => f?.decision === 'pending_approval' && released[i] !== undefined && (unused.get(hopDigest(hops[i]?.request as HopRequest))?.length ?? 0) > 0);
      if (narrow >= 0) released[narrow] = unused.get(hopDigest(hops[narrow]?.request as HopRequest))?.shift();
      else if (!passIdleApproval(hops, forecast, released)) break;
      forecast = await this.forecast(who, hops, released);
    }
    const denied = forecast.some((f) => f?.decision === 'deny');
    if (!denied && forecast.some((f) => f?.decision === 'pending_approval')) {
      const waits = await this.decideWaiting(who, hops, forecast, released, retry);
      if (waits) return waits;
    }
    return this.decideInOrder(who, hops, released, retry, denied ? Infinity : MAX_WAITING_A_CALL);
  }

  /**
   * A call with a hop that would wait for a person, though no approval could release it (its body
   * is not hashed), is refused before anything of it is decided: nothing is recorded as waiting,
   * no approver is asked for what they cannot give, and the agent hears how to send it instead.
   */
  private async refuseUnapprovable(who: AgentPrincipal, hops: readonly CallHop[]): Promise<void> {
    // Forecast only when it can matter: a hop names an unhashed body, and the policy holds anything for a person.
    if (hops.every((hop) => approvable(hop.request)) || !this.deps.hops.mayWait(who.task)) return;
    const forecast = await this.forecast(who, hops, hops.map(() => undefined));
    const held = forecast.findIndex((f, i) => f?.decision === 'pending_approval' && !approvable((hops[i] as CallHop).request));
    if (held < 0) return;
    const hop = hops[held] as CallHop;
    throw new ChainwardenError('aws_request_invalid', `${hop.what} needs approval (rule ${forecast[held]?.rules.join(', ') ?? ''}), and ${unbound(hop.request)}`, { field: 'x-amz-content-sha256' });
  }

  /** The call's hops as they would be decided, up to the first that would be denied. */
  private async forecast(who: AgentPrincipal, hops: readonly CallHop[], released: readonly (AgentApproval | undefined)[], only?: readonly number[]): Promise<(Forecast | undefined)[]> {
    const forecasts: (Forecast | undefined)[] = [];
    const breathe = pacer();
    const picked = only ?? hops.map((_, i) => i);
    const planned = picked.map((i) => {
      const after = hops[i]?.after;
      const at = after === undefined ? -1 : picked.indexOf(after);
      const approval = released[i];
      return { request: hops[i]?.request as HopRequest, ...(at >= 0 ? { after: at } : {}), ...(approval ? { approval: approvalOf(approval) } : {}) };
    });
    for (const forecast of this.deps.hops.preview(who, planned)) {
      forecasts.push(forecast);
      if (forecast?.decision === 'deny') break;
      await breathe();
    }
    return forecasts;
  }

  /**
   * The hops forecast to wait (the first 20), without those the forecast decides before them
   * and allows, so long as each would wait as it does in the call, for the same rules: decided
   * alone (after the hops it follows), so the approver sees it with every rule that holds it.
   * A hop it follows that is allowed outright is decided first; one an approval allows is not
   * (the hop that approval released, already in the chain, stands in for it). Undefined when one
   * would wait otherwise alone (the call is then decided in order), or when, decided, none waits.
   */
  private async decideWaiting(who: AgentPrincipal, hops: readonly CallHop[], forecast: readonly (Forecast | undefined)[], released: readonly (AgentApproval | undefined)[], retry: string): Promise<GatewayVerdict | undefined> {
    const lineage = (i: number): number[] => {
      const up: number[] = [];
      for (let j = hops[i]?.after; j !== undefined; j = hops[j]?.after) up.unshift(j);
      return up;
    };
    const waits = forecast.flatMap((f, i) => (f?.decision === 'pending_approval' ? [i] : [])).slice(0, MAX_WAITING_A_CALL);
    const decide = new Set<number>();
    for (const i of waits) {
      const alone = await this.forecast(who, hops, released, [...lineage(i), i]);
      if (!sameForecast(alone.at(-1), forecast[i])) return undefined;
      decide.add(i);
      for (const j of lineage(i).reverse()) {
        if (released[j] !== undefined) break;
        decide.add(j);
      }
    }
    const ids: (string | undefined)[] = released.map((a) => a?.spec.hopId);
    const refused: Refused[] = [];
    const breathe = pacer();
    for (const [i, hop] of hops.entries()) {
      if (!decide.has(i)) continue;
      await breathe();
      const parent = hop.after === undefined ? undefined : ids[hop.after];
      // Decided without the approval given to it, which the forecast found outgrown: the refusal names it.
      const verdict = await this.decideOne(who, parent ? { ...hop.request, parentHop: parent } : hop.request, hop.what, retry, 'none', released[i]);
      ids[i] = verdict.allowed ? verdict.answer.hopId : undefined;
      if (verdict.allowed) continue;
      if (verdict.decision === 'deny') return verdict;
      refused.push(verdict);
    }
    return refused.length > 0 ? together(refused) : undefined;
  }

  /**
   * Every hop in order, a hop after one not allowed left undecided, until a deny or `maxWaits`
   * waits. Each hop may be allowed by the approval `released` gives it; once all are allowed, the
   * approvals that allowed any are claimed, and if another call has used one meanwhile the call
   * waits for a new one.
   */
  private async decideInOrder(who: AgentPrincipal, hops: readonly CallHop[], released: readonly (AgentApproval | undefined)[], retry: string, maxWaits: number): Promise<GatewayVerdict> {
    const ids: (string | undefined)[] = [];
    const refused: Refused[] = [];
    const used: { approval: AgentApproval; hop: CallHop; verdict: Extract<GatewayVerdict, { allowed: true }> }[] = [];
    let last: GatewayVerdict | undefined;
    const breathe = pacer();
    for (const [i, hop] of hops.entries()) {
      const parent = hop.after === undefined ? undefined : ids[hop.after];
      if (hop.after !== undefined && parent === undefined) {
        ids.push(undefined);
        continue;
      }
      await breathe();
      const approval = released[i];
      last = await this.decideOne(who, parent ? { ...hop.request, parentHop: parent } : hop.request, hop.what, retry, approval ?? 'none');
      ids.push(last.allowed ? last.answer.hopId : undefined);
      if (last.allowed) {
        if (approval && last.answer.reasons.some((r) => r.rule === `approval:${approval.metadata.name ?? ''}`)) used.push({ approval, hop, verdict: last });
        continue;
      }
      if (last.decision === 'deny') return last;
      if (refused.push(last) >= maxWaits) break;
    }
    if (refused.length > 0) return together(refused);
    if (!last) throw new ChainwardenError('invalid_request', 'the call names no hop');
    // In one order on every replica, so two calls racing for the same approvals do not each win some and both wait.
    used.sort((a, b) => (a.approval.metadata.name ?? '').localeCompare(b.approval.metadata.name ?? ''));
    const claimed: Claim[] = [];
    for (const { approval, hop, verdict } of used) {
      const by = this.claimant(who);
      if (await this.claim(approval, by, claimed)) {
        claimed.push({ approval, by });
        continue;
      }
      // The call does not go through: what it claimed so far is for its next try (or another call) to use.
      await this.giveBack(claimed);
      const rules = `approval:${approval.metadata.name ?? ''}`;
      return { allowed: false, error: new ChainwardenError('approval_pending', `${hop.what} was allowed by AgentApproval ${approval.metadata.name ?? ''}, which another call used meanwhile (hop ${verdict.answer.hopId}); it needs a new approval: retry the call, and approve the hop it then waits on`), hopId: verdict.answer.hopId, decision: 'pending_approval', reasons: [{ rule: rules, effect: 'RequireApproval' }] };
    }
    return last;
  }

  /**
   * Approvals of the task's hops (of this exact call, given its digest) that no call has used
   * yet, those that lift the most first: the same call waits again with more rules once its chain
   * has grown (the approval of its first wait is then outgrown), so the newest approval of a call
   * is most often the one that lets it through. Callers forecast with each before they use it.
   */
  private unusedApprovals(task: AgentTask, digest?: string): AgentApproval[] {
    const mine = this.deps.approvals(task.metadata.namespace ?? '').filter((a) => a.spec.taskRef.name === task.metadata.name);
    const usable = mine.filter((a) => a.spec.decision === 'Approve' && (digest === undefined || a.spec.hopDigest === digest) && this.isUnused(a) && this.deps.hops.isHopOf(task, a.spec.hopId));
    if (usable.length === 0) return usable;
    // The decision of a hop is its first approval, as `resolvePending` takes it: an Approve that
    // raced a Reject past admission and came second releases nothing. (Ordered only when there is
    // one to release: most calls have none.)
    const hops = new Set(usable.map((a) => a.spec.hopId));
    const first = firstApprovals(mine.filter((a) => hops.has(a.spec.hopId)));
    return usable.filter((a) => first.get(a.spec.hopId) === a).sort(liftingMostFirst);
  }

  /**
   * An unused approval of this exact call that lets it through now, claimed for this one. Its hop
   * must be one of this task: approvals outlive their task, and one left unused by an earlier task
   * of the same name must not release the same call in a new one. An approval is claimed only if
   * the call, forecast with it, goes through on it: one the call no longer needs, or has outgrown
   * (a rule the approver was not shown holds it now), stays unused; the one outgrown is named in
   * the refusal. The chain may still change between forecast and decision: a call the decision
   * does not let through on the approval gives it back (`decideOne`), never stretches it.
   */
  private async approvalFor(who: AgentPrincipal, hop: HopRequest, digest: string): Promise<{ approval?: HopApproval; outgrown?: AgentApproval; claim?: Claim }> {
    let outgrown: AgentApproval | undefined;
    for (const candidate of this.unusedApprovals(who.task, digest)) {
      const approval = approvalOf(candidate);
      const [forecast] = this.deps.hops.preview(who, [{ request: hop, approval }]);
      if (!forecast?.rules.includes(`approval:${approval.name}`)) {
        if (forecast?.decision === 'pending_approval') outgrown ??= candidate;
        continue;
      }
      const by = this.claimant(who);
      if (await this.claim(candidate, by)) return { approval, claim: { approval: candidate, by } };
    }
    return outgrown ? { outgrown } : {};
  }

  /** Who claims an approval: the pod and the moment, as the approval's mark shows them. */
  private claimant(who: AgentPrincipal): string {
    return `${who.podName}@${new Date(this.deps.clock.now()).toISOString()}`;
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

/** How many given-back approvals a replica remembers until its watch shows them unmarked. */
const GIVEN_BACK_REMEMBERED = 1_000;
/** How long a refused call's answer waits for its approvals to be given back. */
const GIVE_BACK_WAIT_MS = 1_000;
/** How many approvals a refused call gives back at once (a bulk delete may hold hundreds). */
const RELEASES_AT_ONCE = 8;

/** An approval claimed for a call, and the mark the claim set. */
interface Claim {
  approval: AgentApproval;
  by: string;
}

const keyOf = (approval: AgentApproval) => `${approval.metadata.namespace ?? ''}/${approval.metadata.name ?? ''}`;

/** A call decides up to this many hops that need approval in one try, then waits on them. */
const MAX_WAITING_A_CALL = 20;
/** How many times a call tries another approval for a hop whose approval is too narrow, each a forecast. */
const MAX_APPROVAL_SWAPS = 8;

/**
 * Moves an approval from a hop the forecast leaves undecided (it follows one not allowed) to a
 * later hop of the same digest that the forecast holds for want of one. False when there is none.
 */
function passIdleApproval(hops: readonly CallHop[], forecast: readonly (Forecast | undefined)[], released: (AgentApproval | undefined)[]): boolean {
  for (const [i, f] of forecast.entries()) {
    if (f?.decision !== 'pending_approval' || released[i] !== undefined) continue;
    const digest = hopDigest((hops[i] as CallHop).request);
    const idle = released.findIndex((a, k) => a !== undefined && k < forecast.length && forecast[k] === undefined && hopDigest((hops[k] as CallHop).request) === digest);
    if (idle < 0) continue;
    released[i] = released[idle];
    released[idle] = undefined;
    return true;
  }
  return false;
}
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

/** Whether a hop would be decided alike: the same decision, for the same rules. */
function sameForecast(a: Forecast | undefined, b: Forecast | undefined): boolean {
  return a !== undefined && b !== undefined && a.decision === b.decision && a.rules.join(',') === b.rules.join(',');
}

/** The first wait of a call, saying how many more of its hops wait with it. */
function together(refused: readonly Refused[]): Refused {
  const [first] = refused;
  if (!first) throw new Error('no refusal to answer');
  const more = refused.length - 1;
  if (more === 0) return first;
  return { ...first, error: new ChainwardenError(first.error.code, `${first.error.message}; ${more} more of its hops ${more === 1 ? 'waits' : 'wait'} for approval too (the task's status.pendingHops), and the call goes through once all are approved`) };
}

/** Whether an approval can bind what the call sends: not when its body is sent unhashed (`unhashedBody`). */
export const approvable = (hop: HopRequest): boolean => unhashedBody(hop.attributes) === undefined;

/** What a call no approval can release is told instead of "retry once approved". */
const unbound = (hop: HopRequest) =>
  `no AgentApproval can release it: an approval binds the call's body, and this one is not hashed (x-amz-content-sha256 ${unhashedBody(hop.attributes) ?? ''}); send it with the body's SHA-256 signed (a body the SDK holds whole, such as a Buffer or a string, is hashed)`;

const pendingError = (what: string, hopId: string, rules: string, retry: string, why?: string) => new ChainwardenError('approval_pending', `${what} waits for approval (hop ${hopId}, rule ${rules})${why ? `; ${why}` : ''}; ${retry}`);

/** Why an approval of the call did not let it through, when it was given for fewer rules than hold the call now. */
function outgrownBy(approval: AgentApproval, reasons: readonly Reason[]): string | undefined {
  const given = approval.spec.hopRules;
  const added = reasons.filter((r) => r.effect === 'RequireApproval' && !given?.includes(r.rule)).map((r) => r.rule);
  if (!given || added.length === 0) return undefined;
  return `AgentApproval ${approval.metadata.name ?? ''} approved it while ${given.join(', ') || 'no rule'} held it, and ${added.join(', ')} ${added.length === 1 ? 'holds' : 'hold'} it now too, so it needs a new approval`;
}

/** An approval admitted before rules were recorded lifts any; then more rules before fewer, newer before older. */
function liftingMostFirst(a: AgentApproval, b: AgentApproval): number {
  const lifts = (x: AgentApproval) => x.spec.hopRules?.length ?? Infinity;
  return lifts(b) - lifts(a) || (b.metadata.creationTimestamp ?? '').localeCompare(a.metadata.creationTimestamp ?? '') || (a.metadata.name ?? '').localeCompare(b.metadata.name ?? '');
}
