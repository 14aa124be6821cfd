import { MAX_HOP_RESOURCE, type AgentApproval, type AgentTask } from '../api/schema.js';
import { ChainwardenError } from '../errors.js';
import type { SvidIssuer } from '../identity/svid.js';
import type { Reason } from '../policy/engine.js';
import type { Clock } from '../runtime/clock.js';
import type { AgentPrincipal } from './auth.js';
import { hopDigest, type GatewayHopFacts, type HopAnswer, type HopRequest, type HopService } from './hops.js';

/** Set on an AgentApproval once a gateway call has used it: who, and when. */
export const APPROVAL_USED_BY = 'chainwarden.io/used-by';

export interface GatewayHopsDeps {
  hops: Pick<HopService, 'decideForGateway' | 'isHopOf'>;
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
  async decide(who: AgentPrincipal, hop: HopRequest, what: string, retry: string): Promise<GatewayVerdict> {
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
    const { answer, txnToken } = await this.deps.hops.decideForGateway(who, hop, await this.approvalFor(task, digest, who.podName), (facts) => this.mint(task, hop, facts));
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
   * An approval of this exact call whose hop was decided and that no call has used yet, claimed
   * for this one. Its hop must be one of this task: approvals outlive their task, and one left
   * unused by an earlier task of the same name must not release the same call in a new one.
   */
  private async approvalFor(task: AgentTask, digest: string, pod: string): Promise<string | undefined> {
    const candidates = this.deps.approvals(task.metadata.namespace ?? '').filter(
      (a) =>
        a.spec.taskRef.name === task.metadata.name &&
        a.spec.decision === 'Approve' &&
        a.spec.hopDigest === digest &&
        !a.metadata.annotations?.[APPROVAL_USED_BY] &&
        this.deps.hops.isHopOf(task, a.spec.hopId),
    );
    for (const approval of candidates) if (await this.deps.claim(approval, `${pod}@${new Date(this.deps.clock.now()).toISOString()}`)) return approval.metadata.name;
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

const pendingError = (what: string, hopId: string, rules: string, retry: string) => new ChainwardenError('approval_pending', `${what} waits for approval (hop ${hopId}, rule ${rules}); ${retry}`);
