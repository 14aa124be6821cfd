import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseAgentApproval } from '../../../src/api/parse.js';
import type { AgentApproval, AgentPolicy } from '../../../src/api/schema.js';
import { APPROVAL_USED_BY, GatewayHops, type CallHop } from '../../../src/broker/gateway-hops.js';
import { type HopApproval, type HopDecision, type HopRequest } from '../../../src/broker/hops.js';
import { NOW, serviceFor, type ServiceOptions } from '../../builders/hop-service.js';

/**
 * A gateway call of several hops (an S3 copy: the read, then the write; a bulk delete: each
 * object), decided by the real HopService over the support policy: what a try records, counts
 * and spends when some of its hops must wait for a person.
 */

const hop = (tool: string, action: string, resource: string): HopRequest => ({ tool, action, resource, intent: '', attributes: {} });
const refund = (order: number) => hop('payments', 'refund', `order/${order}`);
const readTicket = (n: number) => hop('tickets', 'read', `ticket/${n}`);
const comment = (n: number) => hop('tickets', 'comment', `ticket/${n}`);
const email = hop('email', 'send', 'mailto:someone@example.com');
const call = (...hops: (HopRequest | [HopRequest, number])[]): CallHop[] =>
  hops.map((h) => (Array.isArray(h) ? { request: h[0], what: `${h[0].action} ${h[0].resource}`, after: h[1] } : { request: h, what: `${h.action} ${h.resource}` }));

/** Writes to the outbox need a person; writes after payment or customer data need one too, for that reason. */
const withOutboxRules = (p: AgentPolicy) => {
  (p.spec.rules ??= []).push(
    { name: 'write-out', effect: 'Allow', tools: ['aws:s3'], actions: ['s3:PutObject', 's3:DeleteObject'] },
    { name: 'outbox-needs-a-person', effect: 'RequireApproval', tools: ['aws:s3'], actions: ['s3:PutObject', 's3:DeleteObject'], resources: ['arn:aws:s3:::outbox/*'] },
    { name: 'payment-data-leaves-with-a-person', effect: 'RequireApproval', tools: ['aws:s3'], actions: ['s3:PutObject', 's3:DeleteObject'], when: { afterDataClasses: ['payment', 'pii'] } },
  );
};

interface WorldOptions {
  adjust?: (policy: AgentPolicy) => void;
  taskLimits?: ServiceOptions['taskLimits'];
  /** Approvals another call claims first: this one's claim of them fails. */
  stolen?: Set<string>;
  /** Approvals whose claim lands but whose answer is lost: the claim throws after marking. */
  lostAnswers?: Set<string>;
  /** An API server that holds every release: none ever answers. */
  releasesHang?: boolean;
}

function world({ adjust, taskLimits, stolen = new Set(), lostAnswers = new Set(), releasesHang = false }: WorldOptions = {}) {
  const approvals: AgentApproval[] = [];
  const { service, twin, who } = serviceFor({ approvals: () => approvals, ...(adjust ? { adjust } : {}), ...(taskLimits ? { taskLimits } : {}) });
  const claimed: string[] = [];
  const released: string[] = [];
  const gateway = new GatewayHops({
    hops: service,
    approvals: () => approvals,
    // As the operator's conditional patch does: the first claim wins, every later one loses.
    claim: (approval, by) => {
      if (approval.metadata.annotations?.[APPROVAL_USED_BY] || stolen.has(approval.metadata.name ?? '')) return Promise.resolve(false);
      approval.metadata.annotations = { ...approval.metadata.annotations, [APPROVAL_USED_BY]: by };
      claimed.push(approval.metadata.name ?? '');
      if (lostAnswers.has(approval.metadata.name ?? '')) return Promise.reject(new Error('the API server closed the connection before answering'));
      return Promise.resolve(true);
    },
    // As the operator's conditional patch does: only a mark this call set is removed.
    release: (approval, by) => {
      if (releasesHang) return new Promise<boolean>(() => undefined);
      if (approval.metadata.annotations?.[APPROVAL_USED_BY] !== by) return Promise.resolve(false);
      delete approval.metadata.annotations[APPROVAL_USED_BY];
      claimed.splice(claimed.indexOf(approval.metadata.name ?? ''), 1);
      released.push(approval.metadata.name ?? '');
      return Promise.resolve(true);
    },
    issuer: { mintTxnToken: (input) => `txn.${input.tctx.hopId}` },
    trustDomain: 'cluster.local',
    marker: () => 'cw-marker',
    spiffeId: () => who.spiffeId,
    clock: { now: () => NOW },
  });
  const task = () => twin.task ?? who.task;
  const status = () => task().status;
  /** The agent's next try, with the task as the watch now shows it. */
  const attempt = (hops: CallHop[]) => gateway.decideCall({ ...who, task: task() }, hops, 'retry once approved');
  /** A person approves every hop that waits, as `chainwarden approve` does (admission stamps the hop's digest and rules); the operator resolves them. */
  const approveAll = async () => {
    const waiting = status()?.pendingHops ?? [];
    for (const [i, p] of waiting.entries()) {
      approvals.push(parseAgentApproval({ apiVersion: 'chainwarden.io/v1alpha1', kind: 'AgentApproval', metadata: { name: `ok-${approvals.length + i}`, namespace: 'support', creationTimestamp: new Date(NOW).toISOString() }, spec: { taskRef: { name: task().metadata.name }, hopId: p.hopId, hopDigest: p.digest, hopRules: p.rules, decision: 'Approve', reason: 'checked' } }));
    }
    await service.resolvePending(task());
    await expect.poll(() => status()?.pendingHops ?? []).toEqual([]);
    return waiting.length;
  };
  return { service, gateway, who, task, status, attempt, approveAll, approvals, claimed, released };
}

/**
 * The reference both properties hold the code to: each hop decided in order (as `decide` decides
 * it, given its parent's hop id), a hop after one not allowed left undecided, up to the first deny.
 */
async function decidedInOrder(planned: readonly { request: HopRequest; after?: number }[], decide: (request: HopRequest, i: number) => Promise<{ decision: HopDecision; hopId: string }>): Promise<(HopDecision | undefined)[]> {
  const ids: (string | undefined)[] = [];
  const decided: (HopDecision | undefined)[] = [];
  for (const [i, p] of planned.entries()) {
    const parentHop = p.after === undefined ? undefined : ids[p.after];
    if (p.after !== undefined && parentHop === undefined) {
      ids.push(undefined);
      decided.push(undefined);
      continue;
    }
    const { decision, hopId } = await decide(parentHop ? { ...p.request, parentHop } : p.request, i);
    ids.push(decision === 'allow' ? hopId : undefined);
    decided.push(decision);
    if (decision === 'deny') break;
  }
  return decided;
}

describe('a gateway call of several hops, some of which need approval', () => {
  it('a copy whose read and write both need approval: the read waits, then the write after it; each approval is used once, none spent on a try that waits', async () => {
    const w = world();
    const copy = call(refund(1), [refund(2), 0]);
    const first = await w.attempt(copy);
    expect(first).toMatchObject({ allowed: false, decision: 'pending_approval' });
    await expect.poll(() => w.status()?.pendingHops?.map((p) => p.resource)).toEqual(['order/1']);
    const read = w.status()?.pendingHops?.[0]?.hopId;

    // Retried before anyone decides: the same waiting hop, nothing decided again.
    const again = await w.attempt(copy);
    expect(again).toMatchObject({ allowed: false, hopId: read });
    expect(w.status()?.chain?.hopCount).toBe(1);

    expect(await w.approveAll()).toBe(1);
    const second = await w.attempt(copy);
    expect(second).toMatchObject({ allowed: false, decision: 'pending_approval' });
    // The write waits after the approved read, which is in the chain; the read's approval is still unused.
    await expect.poll(() => w.status()?.pendingHops?.map((p) => [p.resource, p.parentHop])).toEqual([['order/2', read]]);
    expect(w.claimed).toEqual([]);

    expect(await w.approveAll()).toBe(1);
    expect(await w.attempt(copy)).toMatchObject({ allowed: true });
    expect(w.claimed.sort()).toEqual(w.approvals.map((a) => a.metadata.name).sort());
    // Spent: the same copy again waits for a person.
    expect(await w.attempt(copy)).toMatchObject({ allowed: false, decision: 'pending_approval' });
  });

  it('a copy whose write alone needs approval: the write waits in its place, after the read, and one approval releases the copy', async () => {
    const w = world();
    const copy = call(readTicket(1), [refund(3), 0]);
    expect(await w.attempt(copy)).toMatchObject({ allowed: false, decision: 'pending_approval' });
    await expect.poll(() => w.status()?.pendingHops?.map((p) => p.resource)).toEqual(['order/3']);
    const read = w.status()?.recentHops?.find((h) => h.resource === 'ticket/1');
    expect(w.status()?.pendingHops?.[0]?.parentHop).toBe(read?.hopId);
    expect(await w.approveAll()).toBe(1);
    expect(await w.attempt(copy)).toMatchObject({ allowed: true });
    expect(w.claimed).toHaveLength(1);
  });

  it('the approver sees every rule that holds a write: one that holds it only after its read is in the chain too, and the read\'s approval is not spent while it waits', async () => {
    // A write to the outbox needs a person; one after payment data also needs one, for that reason.
    const w = world({ adjust: withOutboxRules });
    const copy = call(refund(7), [hop('aws:s3', 's3:PutObject', 'arn:aws:s3:::outbox/7'), 0]);
    expect(await w.attempt(copy)).toMatchObject({ allowed: false, decision: 'pending_approval' });
    await expect.poll(() => w.status()?.pendingHops?.map((p) => p.resource)).toEqual(['order/7']);
    const refundHop = w.status()?.pendingHops?.[0]?.hopId;
    expect(await w.approveAll()).toBe(1);

    expect(await w.attempt(copy)).toMatchObject({ allowed: false, decision: 'pending_approval' });
    await expect.poll(() => w.status()?.pendingHops?.map((p) => [p.resource, p.parentHop, [...p.rules].sort()])).toEqual([['arn:aws:s3:::outbox/7', refundHop, ['outbox-needs-a-person', 'payment-data-leaves-with-a-person']]]);
    expect(w.claimed).toEqual([]);
    expect(await w.approveAll()).toBe(1);

    expect(await w.attempt(copy)).toMatchObject({ allowed: true });
    expect(w.claimed).toHaveLength(2);
  });

  it('a bulk delete with some objects held: only the held ones are decided while they wait; the others are counted once, when the call goes through', async () => {
    const w = world();
    const bulk = call(readTicket(1), refund(4), comment(2), refund(5));
    const first = await w.attempt(bulk);
    expect(first).toMatchObject({ allowed: false, decision: 'pending_approval' });
    await expect.poll(() => w.status()?.pendingHops?.map((p) => p.resource)).toEqual(['order/4', 'order/5']);
    expect(w.status()?.chain?.hopCount).toBe(2);
    expect(await w.approveAll()).toBe(2);
    expect(await w.attempt(bulk)).toMatchObject({ allowed: true });
    // Two waits, then the four decided: not the eight a try that records everything would count against maxHops.
    await expect.poll(() => w.status()?.chain?.hopCount).toBe(6);
    expect(w.claimed).toHaveLength(2);
  });

  it('a call with a hop that would be denied is decided in order, waits and all: the deny is recorded on the chain it would have in order', async () => {
    const w = world({ adjust: (p) => (p.spec.onViolation = 'Deny') });
    const verdict = await w.attempt(call(refund(6), readTicket(1), email));
    expect(verdict).toMatchObject({ allowed: false, decision: 'deny', reasons: [{ rule: 'no-exfiltration' }] });
    await expect.poll(() => w.status()?.hops).toMatchObject({ denied: 1, allowed: 1, pending: 1 });
    expect(w.status()?.chain?.priorDenials).toBe(1);
  });

  it('a bulk delete of twenty held objects and a forbidden one: the forbidden one is decided and recorded, however many wait before it', async () => {
    const w = world({ adjust: (p) => (p.spec.onViolation = 'Deny') });
    const verdict = await w.attempt(call(...Array.from({ length: 20 }, (_, i) => refund(100 + i)), hop('payments', 'admin.freeze', 'account/1')));
    expect(verdict).toMatchObject({ allowed: false, decision: 'deny', reasons: [{ rule: 'never-admin-payments' }] });
    await expect.poll(() => w.status()?.chain?.priorDenials).toBe(1);
  });

  it('a call that reaches the task\'s maxHops: the hop past it is denied as deciding in order denies it, and an approval that allowed a hop before it is not used up', async () => {
    const w = world({ adjust: (p) => (p.spec.onViolation = 'Deny'), taskLimits: { maxHops: 5, maxDepth: 4 } });
    expect(await w.attempt(call(refund(1), readTicket(1)))).toMatchObject({ decision: 'pending_approval' });
    await w.approveAll();
    expect(await w.attempt(call(readTicket(2), comment(2)))).toMatchObject({ allowed: true });
    await expect.poll(() => w.status()?.chain?.hopCount).toBe(3);
    // The approved refund is hop 4, the read hop 5, the comment would be hop 6.
    const verdict = await w.attempt(call(refund(1), readTicket(9), comment(9)));
    expect(verdict).toMatchObject({ allowed: false, decision: 'deny', reasons: [{ rule: 'limit:maxHops' }] });
    expect(w.claimed).toEqual([]);
  });

  it('the approver sees every rule that holds an object of a bulk delete, one another object of the same call brings in too; the call is then decided in order', async () => {
    const w = world({ adjust: withOutboxRules });
    const bulk = call(hop('aws:s3', 's3:GetObject', 'arn:aws:s3:::support-customers/c1'), hop('aws:s3', 's3:DeleteObject', 'arn:aws:s3:::outbox/7'));
    expect(await w.attempt(bulk)).toMatchObject({ allowed: false, decision: 'pending_approval' });
    await expect.poll(() => w.status()?.pendingHops?.map((p) => [p.resource, [...p.rules].sort()])).toEqual([['arn:aws:s3:::outbox/7', ['outbox-needs-a-person', 'payment-data-leaves-with-a-person']]]);
    await w.approveAll();
    expect(await w.attempt(bulk)).toMatchObject({ allowed: true });
    expect(w.claimed).toHaveLength(1);
  });

  it('an approval another call used meanwhile: the call is refused, waiting for a new one, and says so', async () => {
    const stolen = new Set<string>();
    const w = world({ stolen });
    const copy = call(readTicket(1), [refund(3), 0]);
    expect(await w.attempt(copy)).toMatchObject({ decision: 'pending_approval' });
    await w.approveAll();
    for (const a of w.approvals) stolen.add(a.metadata.name ?? '');
    const verdict = await w.attempt(copy);
    expect(verdict).toMatchObject({ allowed: false, decision: 'pending_approval' });
    expect(verdict.allowed ? '' : verdict.error.message).toMatch(/was allowed by AgentApproval ok-0, which another call used meanwhile/);
  });

  it('a call that loses the race for its second approval gives back the first it claimed, so its next try (or the other call) can use it', async () => {
    const stolen = new Set<string>();
    const w = world({ stolen });
    expect(await w.attempt(call(refund(1), refund(2)))).toMatchObject({ decision: 'pending_approval' });
    expect(await w.approveAll()).toBe(2);
    const [first = '', second = ''] = w.approvals.map((a) => a.metadata.name ?? '').sort();
    stolen.add(second);
    const verdict = await w.attempt(call(refund(1), refund(2)));
    expect(verdict.allowed ? '' : verdict.error.message).toMatch(new RegExp(`was allowed by AgentApproval ${second}, which another call used meanwhile`));
    expect(w.released).toEqual([first]);
    expect(w.claimed).toEqual([]);
    expect(w.approvals.find((a) => a.metadata.name === first)?.metadata.annotations?.[APPROVAL_USED_BY]).toBeUndefined();
    // The other call's claim of the second came to nothing after all: the next try takes both.
    stolen.clear();
    expect(await w.attempt(call(refund(1), refund(2)))).toMatchObject({ allowed: true });
    expect(w.claimed.sort()).toEqual([first, second]);
  });

  it('a claim whose answer is lost (it may have landed) gives back that approval and those claimed before it, and the failure is the call\'s', async () => {
    const lostAnswers = new Set<string>();
    const w = world({ lostAnswers });
    expect(await w.attempt(call(refund(1), refund(2)))).toMatchObject({ decision: 'pending_approval' });
    expect(await w.approveAll()).toBe(2);
    const names = w.approvals.map((a) => a.metadata.name ?? '').sort();
    lostAnswers.add(names[1] ?? '');
    await expect(w.attempt(call(refund(1), refund(2)))).rejects.toThrow(/closed the connection/);
    expect(w.released.sort()).toEqual(names);
    expect(w.approvals.map((a) => a.metadata.annotations?.[APPROVAL_USED_BY])).toEqual([undefined, undefined]);
    // A call of one hop alike.
    const single = world({ lostAnswers });
    expect(await single.attempt(call(refund(3)))).toMatchObject({ decision: 'pending_approval' });
    await single.approveAll();
    lostAnswers.add(single.approvals[0]?.metadata.name ?? '');
    await expect(single.attempt(call(refund(3)))).rejects.toThrow(/closed the connection/);
    expect(single.approvals[0]?.metadata.annotations?.[APPROVAL_USED_BY]).toBeUndefined();
  });

  it('gives back what it claimed all at once: a refusal waits about a second for its releases however many there are', async () => {
    const stolen = new Set<string>();
    const w = world({ stolen, releasesHang: true });
    const bulk = call(refund(1), refund(2), refund(3), refund(4));
    expect(await w.attempt(bulk)).toMatchObject({ decision: 'pending_approval' });
    expect(await w.approveAll()).toBe(4);
    stolen.add(w.approvals.map((a) => a.metadata.name ?? '').sort()[3] ?? '');
    const started = performance.now();
    expect(await w.attempt(bulk)).toMatchObject({ allowed: false, decision: 'pending_approval' });
    expect(performance.now() - started).toBeLessThan(2_500);
  });

  it('approvals are claimed in one order, whatever order the call names their hops in, so two calls racing for them do not each win half', async () => {
    const w = world();
    expect(await w.attempt(call(refund(2), refund(1)))).toMatchObject({ decision: 'pending_approval' });
    expect(await w.approveAll()).toBe(2);
    const names = w.approvals.map((a) => a.metadata.name ?? '');
    expect(await w.attempt(call(refund(1), refund(2)))).toMatchObject({ allowed: true });
    expect(w.claimed).toEqual([...names].sort());
  });

  it('a copy whose approved read leads to a denied write: the deny is recorded and the read\'s approval is not spent on it', async () => {
    const w = world({ adjust: (p) => (p.spec.onViolation = 'Deny') });
    expect(await w.attempt(call(refund(9), [readTicket(9), 0]))).toMatchObject({ allowed: false, decision: 'pending_approval' });
    await expect.poll(() => w.status()?.pendingHops?.length).toBe(1);
    await w.approveAll();
    const verdict = await w.attempt(call(refund(9), [hop('payments', 'admin.freeze', 'account/9'), 0]));
    expect(verdict).toMatchObject({ allowed: false, decision: 'deny', reasons: [{ rule: 'never-admin-payments' }] });
    await expect.poll(() => w.status()?.chain?.priorDenials).toBe(1);
    expect(w.claimed).toEqual([]);
  });

  it('a hop that follows one the call could not decide is not decided either', async () => {
    const w = world({ adjust: (p) => (p.spec.onViolation = 'Deny') });
    const verdict = await w.attempt(call(hop('payments', 'admin.freeze', 'account/1'), [readTicket(1), 0]));
    expect(verdict).toMatchObject({ allowed: false, decision: 'deny', reasons: [{ rule: 'never-admin-payments' }] });
    await expect.poll(() => w.status()?.hops?.denied).toBe(1);
    expect(w.status()?.chain?.hopCount).toBe(1);
  });

  it('an approval that would go to a hop the call cannot decide (it follows one that waits) goes to a later hop of the same request: the approver is asked only about the hop that needs them', async () => {
    const w = world({ adjust: (p) => (p.spec.onViolation = 'Deny') });
    // Two refunds of order 1, approved: two approvals of the same request.
    await w.attempt(call(refund(1), refund(1)));
    await expect.poll(() => w.status()?.pendingHops?.length).toBe(2);
    expect(await w.approveAll()).toBe(2);
    w.claimed.length = 0;
    // The third hop follows the second, which waits, so it is not decided; the fourth is the same refund and has an approval.
    const verdict = await w.attempt(call(refund(1), refund(2), [refund(1), 1], refund(1)));
    expect(verdict).toMatchObject({ allowed: false, decision: 'pending_approval' });
    await expect.poll(() => w.status()?.pendingHops?.map((p) => p.resource)).toEqual(['order/2']);
    // Nothing was spent on a try that waits.
    expect(w.claimed).toEqual([]);
  });
});

describe('an approval binds the body of the call it releases', () => {
  const put = (payloadSha256: string): CallHop[] => call({ ...hop('aws:s3', 's3:PutObject', 'arn:aws:s3:::outbox/report.csv'), attributes: { payloadSha256 } });
  const HASH = 'a'.repeat(64);

  it('a write whose body is not hashed (UNSIGNED-PAYLOAD) that would wait for a person is refused before anything is decided: no approval could bind its body', async () => {
    const w = world({ adjust: withOutboxRules });
    await expect(w.attempt(put('UNSIGNED-PAYLOAD'))).rejects.toMatchObject({
      code: 'aws_request_invalid',
      field: 'x-amz-content-sha256',
      message: expect.stringMatching(/needs approval \(rule [^)]*outbox-needs-a-person[^)]*\), and no AgentApproval can release it: an approval binds the call's body, and this one is not hashed \(x-amz-content-sha256 UNSIGNED-PAYLOAD\)/) as unknown,
    });
    // Nothing waits, so no approver is asked for what they could not give; nothing is counted.
    expect(w.status()?.pendingHops ?? []).toEqual([]);
    expect(w.status()?.chain?.hopCount ?? 0).toBe(0);
    // In a call of several hops, before its first hop is decided.
    const copy = call(readTicket(1), [{ ...hop('aws:s3', 's3:PutObject', 'arn:aws:s3:::outbox/copy.csv'), attributes: { payloadSha256: 'STREAMING-UNSIGNED-PAYLOAD-TRAILER' } }, 0]);
    await expect(w.attempt(copy)).rejects.toMatchObject({ code: 'aws_request_invalid' });
    expect(w.status()?.chain?.hopCount ?? 0).toBe(0);
    // One that needs no person goes through, unhashed or not.
    expect(await w.attempt(call({ ...hop('aws:s3', 's3:PutObject', 'arn:aws:s3:::scratch/a'), attributes: { payloadSha256: 'UNSIGNED-PAYLOAD' } }))).toMatchObject({ allowed: true });
    expect(w.claimed).toEqual([]);
  });

  it('an Approve that raced a Reject of the same hop past admission and came second releases nothing: the hop was rejected', async () => {
    const w = world({ adjust: withOutboxRules });
    expect(await w.attempt(put(HASH))).toMatchObject({ allowed: false, decision: 'pending_approval' });
    const waiting = w.status()?.pendingHops?.[0];
    const decide = (name: string, decision: 'Approve' | 'Reject') =>
      parseAgentApproval({ apiVersion: 'chainwarden.io/v1alpha1', kind: 'AgentApproval', metadata: { name, namespace: 'support', creationTimestamp: new Date(NOW).toISOString() }, spec: { taskRef: { name: w.task().metadata.name }, hopId: waiting?.hopId, hopDigest: waiting?.digest, hopRules: waiting?.rules, decision, reason: 'raced' } });
    // Created in the same instant: the first by name decides, on every replica.
    w.approvals.push(decide('a-reject', 'Reject'), decide('b-approve', 'Approve'));
    await w.service.resolvePending(w.task());
    await expect.poll(() => w.status()?.recentHops?.find((h) => h.hopId === waiting?.hopId)?.decision).toBe('deny');
    expect(await w.attempt(put(HASH))).toMatchObject({ allowed: false, decision: 'pending_approval' });
    expect(w.claimed).toEqual([]);
  });

  it('the same write with its body hashed is released once by its approval, as any call is', async () => {
    const w = world({ adjust: withOutboxRules });
    expect(await w.attempt(put(HASH))).toMatchObject({ allowed: false, decision: 'pending_approval' });
    expect(await w.approveAll()).toBe(1);
    expect(await w.attempt(put(HASH))).toMatchObject({ allowed: true });
    expect(w.claimed).toHaveLength(1);
  });
});

describe('an approval lets the same call through only while the rules it was given for are all that hold it', () => {
  const outbox = hop('aws:s3', 's3:PutObject', 'arn:aws:s3:::outbox/r1');
  /** The call alone waits, in a chain with nothing else in it yet, and a person approves it. */
  const approvedAlone = async (w: ReturnType<typeof world>, one: HopRequest) => {
    await w.attempt(call(one));
    await expect.poll(() => w.status()?.pendingHops?.length).toBe(1);
    await w.approveAll();
  };

  it('approved for the outbox rule before customer data was read, the same write after the read waits for a new approval, naming why; the first is not spent', async () => {
    const w = world({ adjust: withOutboxRules });
    expect(await w.attempt(call(outbox))).toMatchObject({ allowed: false, decision: 'pending_approval', reasons: [{ rule: 'outbox-needs-a-person' }] });
    await expect.poll(() => w.status()?.pendingHops?.length).toBe(1);
    await w.approveAll();
    expect(w.approvals[0]?.spec.hopRules).toEqual(['outbox-needs-a-person']);

    // The agent reads customer data, then sends the approved call again.
    expect(await w.attempt(call(readTicket(1)))).toMatchObject({ allowed: true });
    const again = await w.attempt(call(outbox));
    if (again.allowed) throw new Error('the approval carried the write past a rule nobody was shown');
    expect(again.decision).toBe('pending_approval');
    expect(again.reasons.map((r) => r.rule).sort()).toEqual(['outbox-needs-a-person', 'payment-data-leaves-with-a-person']);
    expect(again.error.message).toContain('AgentApproval ok-0 approved it while outbox-needs-a-person held it, and payment-data-leaves-with-a-person holds it now too, so it needs a new approval');
    expect(w.claimed).toEqual([]);
    await expect.poll(() => w.status()?.pendingHops?.map((p) => p.rules)).toEqual([['outbox-needs-a-person', 'payment-data-leaves-with-a-person']]);

    // Approved with both rules in view: through, on the new approval; the old one stays unused.
    await w.approveAll();
    expect(await w.attempt(call(outbox))).toMatchObject({ allowed: true, answer: { reasons: [{ rule: 'approval:ok-1' }] } });
    expect(w.claimed).toEqual(['ok-1']);
  });

  it('an approval admitted before rules were recorded lifts whatever holds the call, as it did', async () => {
    const w = world({ adjust: withOutboxRules });
    await approvedAlone(w, outbox);
    delete w.approvals[0]?.spec.hopRules;
    await w.attempt(call(readTicket(1)));
    expect(await w.attempt(call(outbox))).toMatchObject({ allowed: true, answer: { reasons: [{ rule: 'approval:ok-0' }] } });
  });

  it('in a call of several hops, an approval outgrown by one hop holds that hop again and is not spent; the approval of both rules then lets the copy through', async () => {
    const w = world({ adjust: withOutboxRules });
    // A copy of customer data into the outbox: the read is allowed, the write after it needs both rules.
    const copy = call(hop('aws:s3', 's3:GetObject', 'arn:aws:s3:::support-customers/c1'), [outbox, 0]);
    await approvedAlone(w, outbox);
    const verdict = await w.attempt(copy);
    if (verdict.allowed) throw new Error('the outbox approval carried the copy of customer data');
    expect(verdict.error.message).toContain('AgentApproval ok-0 approved it while outbox-needs-a-person held it');
    expect(w.claimed).toEqual([]);
    await expect.poll(() => w.status()?.pendingHops?.map((p) => p.rules)).toEqual([['outbox-needs-a-person', 'payment-data-leaves-with-a-person']]);
    await w.approveAll();
    expect(await w.attempt(copy)).toMatchObject({ allowed: true });
    expect(w.claimed).toEqual(['ok-1']);
  });

  it('in a call of several hops, an approval for more rules that no longer covers its hop gives way to a newer one for fewer that does', async () => {
    const w = world({
      adjust: (p) => {
        (p.spec.rules ??= []).push(
          { name: 'write-out', effect: 'Allow', tools: ['aws:s3'], actions: ['s3:PutObject'] },
          { name: 'quiet-outbox-1', effect: 'RequireApproval', tools: ['aws:s3'], actions: ['s3:PutObject'], resources: ['arn:aws:s3:::outbox/*'], when: { crossesTrustBoundary: false } },
          { name: 'quiet-outbox-2', effect: 'RequireApproval', tools: ['aws:s3'], actions: ['s3:PutObject'], resources: ['arn:aws:s3:::outbox/*'], when: { crossesTrustBoundary: false } },
          { name: 'outbox-crossing', effect: 'RequireApproval', tools: ['aws:s3'], actions: ['s3:PutObject'], resources: ['arn:aws:s3:::outbox/*'], when: { crossesTrustBoundary: true } },
        );
      },
    });
    // Approved before anything internal was touched, for the two quiet rules.
    await approvedAlone(w, outbox);
    // The copy reads customer records (internal), so its write crosses the trust boundary now.
    const copy = call(hop('aws:s3', 's3:GetObject', 'arn:aws:s3:::support-customers/c1'), [outbox, 0]);
    expect(await w.attempt(copy)).toMatchObject({ allowed: false, decision: 'pending_approval' });
    await expect.poll(() => w.status()?.pendingHops?.map((p) => p.rules)).toEqual([['outbox-crossing']]);
    await w.approveAll();
    expect(await w.attempt(copy)).toMatchObject({ allowed: true });
    expect(w.claimed).toEqual(['ok-1']);
  });

  it('a bulk delete of customer objects, each waiting for a person: approved, the approvals resolve hops that read customer data, so each object waits again for the rule that follows such a read; approved again, the delete goes through', async () => {
    const w = world({
      adjust: (p) => {
        withOutboxRules(p);
        (p.spec.rules ??= []).push({ name: 'customer-deletes-need-a-person', effect: 'RequireApproval', tools: ['aws:s3'], actions: ['s3:DeleteObject'], resources: ['arn:aws:s3:::support-customers/*'] });
      },
    });
    const del = call(hop('aws:s3', 's3:DeleteObject', 'arn:aws:s3:::support-customers/c1'), hop('aws:s3', 's3:DeleteObject', 'arn:aws:s3:::support-customers/c2'));
    const rounds: string[][][] = [];
    for (let round = 0; round < 3; round++) {
      const verdict = await w.attempt(del);
      if (verdict.allowed) break;
      expect(verdict.decision).toBe('pending_approval');
      await expect.poll(() => w.status()?.pendingHops?.length).toBe(2);
      rounds.push((w.status()?.pendingHops ?? []).map((p) => [...p.rules].sort()));
      await w.approveAll();
    }
    expect(rounds).toEqual([
      [['customer-deletes-need-a-person'], ['customer-deletes-need-a-person']],
      [['customer-deletes-need-a-person', 'payment-data-leaves-with-a-person'], ['customer-deletes-need-a-person', 'payment-data-leaves-with-a-person']],
    ]);
    // The approvals of the second round, each once; those of the first stay unused.
    const second = w.approvals.filter((a) => a.spec.hopRules?.length === 2).map((a) => a.metadata.name ?? '');
    expect(second).toHaveLength(2);
    expect(w.claimed.sort()).toEqual(second.sort());
  });
});

describe('decideCall against deciding every hop in order, for any call', () => {
  const pool: HopRequest[] = [readTicket(1), comment(2), refund(1), refund(2), hop('payments', 'admin.freeze', 'account/1'), email, hop('search', 'query', 'q')];
  const calls = fc.record({
    hops: fc.array(fc.record({ at: fc.nat(pool.length - 1), after: fc.option(fc.nat(), { nil: undefined }) }), { minLength: 2, maxLength: 7 }),
    // Hops approved before the call (each first waited on its own, and a person approved it).
    approvedFirst: fc.subarray([refund(1), refund(2)]),
    // The task's budget, from one that the call runs past to one it fits in.
    maxHops: fc.integer({ min: 2, max: 12 }),
    maxDepth: fc.integer({ min: 1, max: 4 }),
  });

  it('goes through exactly when every hop is allowed in order, is denied exactly when a hop is, asks a person only about hops that wait, and spends no approval on a try it refuses', async () => {
    await fc.assert(
      fc.asyncProperty(calls, async ({ hops: generated, approvedFirst, maxHops, maxDepth }) => {
        const planned = call(...generated.map((g, i): HopRequest | [HopRequest, number] => (g.after !== undefined && i > 0 ? [pool[g.at] as HopRequest, g.after % i] : (pool[g.at] as HopRequest))));
        const prepared = async () => {
          const w = world({ adjust: (p) => (p.spec.onViolation = 'Deny'), taskLimits: { maxHops, maxDepth } });
          for (const one of approvedFirst) await w.attempt(call(one, one));
          if ((w.status()?.pendingHops ?? []).length > 0) await w.approveAll();
          w.claimed.length = 0;
          return w;
        };
        // The reference: every hop decided in order, on past a wait, to the first deny; a hop after one not allowed is not decided.
        const reference = await prepared();
        // As a gateway call sees it: the task as the watch showed it when the call came.
        const asCalled = { ...reference.who, task: reference.task() };
        const decided = await decidedInOrder(planned, async (request, i) => {
          const v = await reference.gateway.decide(asCalled, request, planned[i]?.what ?? '', 'retry');
          return v.allowed ? { decision: 'allow', hopId: v.answer.hopId } : v;
        });
        const w = await prepared();
        const verdict = await w.attempt(planned);
        const allAllowed = decided.length === planned.length && decided.every((d) => d === 'allow');
        expect(verdict.allowed).toBe(allAllowed);
        expect(!verdict.allowed && verdict.decision === 'deny').toBe(decided.includes('deny'));
        if (!verdict.allowed) expect(w.claimed).toEqual([]);
        const waitingInReference = new Set(planned.filter((_, i) => decided[i] === 'pending_approval').map((h) => h.request.resource));
        for (const p of w.status()?.pendingHops ?? []) expect(waitingInReference).toContain(p.resource);
      }),
      { numRuns: 200 },
    );
  }, 60_000);
});

describe('HopService.preview: the forecast a gateway acts on is what deciding the hops in order decides', () => {
  const pool: HopRequest[] = [readTicket(1), comment(2), refund(1), hop('payments', 'admin.freeze', 'account/1'), email, hop('aws:s3', 's3:GetObject', 'arn:aws:s3:::support-customers/c1'), hop('aws:s3', 's3:PutObject', 'arn:aws:s3:::outbox/r1'), hop('aws:sts', 'sts:GetCallerIdentity', '*'), hop('search', 'query', 'q')];
  // An approval given for some of the rules that may hold a hop, or (admitted before rules were recorded) for any.
  const approval = fc.option(
    fc.option(fc.subarray(['refunds-need-a-human', 'outbox-needs-a-person', 'payment-data-leaves-with-a-person']), { nil: undefined }).map((rules): HopApproval => (rules ? { name: 'ok', rules } : { name: 'ok' })),
    { nil: undefined },
  );
  const hops = fc.array(fc.record({ at: fc.nat(pool.length - 1), after: fc.option(fc.nat(), { nil: undefined }), approval }), { minLength: 1, maxLength: 8 });

  it('for any call of the support policy\'s tools, in Enforce or Audit, with or without approvals for some rules, up to the first deny; a hop after one not allowed is not decided', async () => {
    await fc.assert(
      fc.asyncProperty(hops, fc.constantFrom<'Enforce' | 'Audit'>('Enforce', 'Audit'), fc.integer({ min: 1, max: 9 }), fc.integer({ min: 1, max: 7 }), async (generated, mode, maxHops, maxDepth) => {
        const { service, who } = serviceFor({ mode, adjust: (p) => ((p.spec.onViolation = 'Deny'), withOutboxRules(p)), taskLimits: { maxHops, maxDepth } });
        const planned = generated.map((g, i) => ({ request: pool[g.at] as HopRequest, ...(g.after !== undefined && i > 0 ? { after: g.after % i } : {}), ...(g.approval ? { approval: g.approval } : {}) }));
        const forecast = [...service.preview(who, planned)].map((f) => f?.decision);
        const decided = await decidedInOrder(planned, async (request, i) => {
          const { answer } = await service.decideForGateway(who, request, planned[i]?.approval, () => 'txn');
          return answer;
        });
        expect(forecast.slice(0, decided.length)).toEqual(decided);
      }),
      { numRuns: 200 },
    );
  }, 60_000);

  it('records nothing: the email after a ticket read is forecast denied, and the task has no chain, no violation, nothing waiting', async () => {
    const { service, who, twin, writes } = serviceFor();
    const forecast = [...service.preview(who, [readTicket(1), email, refund(1)].map((request) => ({ request })))].map((f) => f?.decision);
    expect(forecast).toEqual(['allow', 'deny', 'pending_approval']);
    await new Promise((r) => setTimeout(r, 20));
    expect(writes()).toBe(0);
    expect(twin.task?.status?.chain).toBeUndefined();
    expect(twin.task?.status?.violation).toBeUndefined();
  });
});
