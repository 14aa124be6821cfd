import { createLocalJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';
import { describe, expect, it } from 'vitest';
import type { AgentApproval, AgentTask } from '../../../src/api/schema.js';
import { GatewayHops } from '../../../src/broker/gateway-hops.js';
import { HopIds } from '../../../src/broker/hopids.js';
import { hopDigest, type GatewayHopFacts, type HopAnswer, type HopRequest } from '../../../src/broker/hops.js';
import { InMemoryKeyStore, KeyRing } from '../../../src/identity/keyring.js';
import { SvidIssuer } from '../../../src/identity/svid.js';
import { ChainwardenError } from '../../../src/errors.js';

const now = Date.parse('2026-11-21T10:00:00Z');
const clock = { now: () => now };
const hop: HopRequest = { tool: 'tickets', action: 'refund', resource: 'order/9', intent: '', attributes: { amount: '20' } };
const task = (status: AgentTask['status'] = {}) => ({ metadata: { namespace: 'support', name: 't', uid: 'u' }, spec: { policyRef: { name: 'support' }, serviceAccountName: 'sa', ttl: '1h' }, status }) as AgentTask;
const principal = (t: AgentTask) => ({ namespace: 'support', podName: 'agent-0', podUid: 'pu', serviceAccount: 'sa', task: t, spiffeId: 'spiffe://cluster.local/ns/support/sa/sa/task/t' });
const ids = new HopIds(Buffer.alloc(32, 7));
/** A hop of the task `t` now is (uid `u`); one of an earlier task of the same name is not. */
const approval = (name: string, digest: string, used?: string, hopId = ids.mint('u', 1)) =>
  ({ metadata: { namespace: 'support', name, annotations: used ? { 'chainwarden.io/used-by': used } : {} }, spec: { taskRef: { name: 't' }, hopId, hopDigest: digest, decision: 'Approve', reason: 'ok' } }) as unknown as AgentApproval;

/** `decide` answers both the forecast and the decision, unless `decision` answers the decision (and may throw, as a refused write does). */
async function setup(decide: (approvedBy: string | undefined) => HopAnswer, approvals: AgentApproval[] = [], decision: (approvedBy: string | undefined) => HopAnswer = decide, stuck = false) {
  const ring = new KeyRing(new InMemoryKeyStore(), clock, { rotateAfterMs: 86_400_000, activationDelayMs: 0, overlapMs: 3_600_000 });
  await ring.refresh();
  const issuer = new SvidIssuer(ring, 'https://chainwarden.example', clock);
  const claimed: string[] = [];
  const released: string[] = [];
  /** The mark each claim set, as the watch would bring it into the cache. */
  const marks = new Map<string, string>();
  const gateway = new GatewayHops({
    hops: {
      decideForGateway: async (_who, _hop, approval, mint) => {
        await Promise.resolve();
        const answer = decision(approval?.name);
        if (answer.decision !== 'allow') return { answer };
        const facts: GatewayHopFacts = { hopId: answer.hopId, depth: answer.depth, parentHop: 'h1_parent', policy: 'support', dataClassesTouched: ['pii'] };
        return { answer, txnToken: mint(facts) };
      },
      isHopOf: (t, hopId) => ids.depthOf(t.metadata.uid ?? '', hopId) !== undefined,
      // A call of one hop is decided, never forecast in full (gateway-calls.test.ts has calls of several)...
      mayWait: () => {
        throw new Error('a single hop was forecast');
      },
      // ...only with each unused approval of it, by the same stubbed decision, before one is claimed.
      preview: function* (_who, planned) {
        for (const p of planned) {
          const answer = decide(p.approval?.name);
          yield { decision: answer.decision, rules: answer.reasons.map((r) => r.rule) };
        }
      },
    },
    approvals: () => approvals,
    claim: (a, by) => Promise.resolve(claimed.includes(a.metadata.name ?? '') ? false : (claimed.push(a.metadata.name ?? ''), marks.set(a.metadata.name ?? '', by), true)),
    release: (a) => {
      // An API server that holds the write (etcd frozen): the release never answers.
      if (stuck) return new Promise<boolean>(() => undefined);
      const at = claimed.indexOf(a.metadata.name ?? '');
      if (at < 0) return Promise.resolve(false);
      claimed.splice(at, 1);
      released.push(a.metadata.name ?? '');
      return Promise.resolve(true);
    },
    issuer,
    trustDomain: 'cluster.local',
    marker: () => 'cw-7f3a',
    spiffeId: () => 'spiffe://cluster.local/ns/support/sa/sa/task/t',
    clock,
  });
  return { gateway, issuer, claimed, released, marks };
}

describe('a gateway hop', () => {
  it('carries a transaction token that verifies against /keys with the chain in its claims', async () => {
    const { gateway, issuer } = await setup(() => ({ hopId: 'h1_a', decision: 'allow', reasons: [], depth: 2 }));
    const verdict = await gateway.decide(principal(task()), hop, 'refund', 'retry');
    if (!verdict.allowed) throw new Error('expected allow');
    expect(decodeProtectedHeader(verdict.txnToken)).toMatchObject({ typ: 'txntoken+jwt', alg: 'ES256' });
    const { payload } = await jwtVerify(verdict.txnToken, createLocalJWKSet(issuer.jwks() as Parameters<typeof createLocalJWKSet>[0]), { audience: 'cluster.local', issuer: 'https://chainwarden.example', currentDate: new Date(now), typ: 'txntoken+jwt' });
    expect(payload).toMatchObject({
      txn: 'cw-7f3a',
      sub: 'spiffe://cluster.local/ns/support/sa/sa/task/t',
      req_wl: 'spiffe://cluster.local/ns/support/sa/sa/task/t',
      scope: 'tickets:refund',
      tctx: { task: 't', namespace: 'support', policy: 'support', hopId: 'h1_a', parentHop: 'h1_parent', depth: 2, dataClassesTouched: ['pii'] },
    });
    expect((payload.exp ?? 0) - (payload.iat ?? 0)).toBeLessThanOrEqual(300);
  });

  it('is the waiting hop again while it waits, and goes through once an approval of the identical call exists, once', async () => {
    const digest = hopDigest(hop);
    const waiting = task({ pendingHops: [{ hopId: 'h1_p', digest, tool: 'tickets', action: 'refund', resource: 'order/9', depth: 1, rules: ['refunds'], requestedAt: '2026-11-21T10:00:00Z', timeoutAt: '2026-11-21T10:15:00Z' }] });
    let decisions = 0;
    const { gateway, claimed } = await setup((approvedBy) => ((decisions += 1), approvedBy ? { hopId: 'h1_ok', decision: 'allow', reasons: [{ rule: `approval:${approvedBy}`, effect: 'Allow' }], depth: 1 } : { hopId: 'h1_new', decision: 'pending_approval', reasons: [{ rule: 'refunds', effect: 'RequireApproval' }], depth: 1 }), [approval('used', digest, 'agent-0@earlier'), approval('other-call', 'sha256:else'), approval('yes', digest)]);
    await expect(gateway.decide(principal(waiting), hop, 'refund', 'retry')).resolves.toMatchObject({ allowed: false, hopId: 'h1_p', decision: 'pending_approval' });
    expect(decisions).toBe(0);
    await expect(gateway.decide(principal(task()), hop, 'refund', 'retry')).resolves.toMatchObject({ allowed: true, answer: { hopId: 'h1_ok' } });
    expect(claimed).toEqual(['yes']);
    await expect(gateway.decide(principal(task()), hop, 'refund', 'retry')).resolves.toMatchObject({ allowed: false, hopId: 'h1_new', decision: 'pending_approval' });
  });

  it('is refused, deciding nothing, when its resource is longer than a hop takes (an MCP argument or an S3 key would make a record the status refuses)', async () => {
    let decisions = 0;
    const { gateway } = await setup(() => ((decisions += 1), { hopId: 'h1_a', decision: 'allow', reasons: [], depth: 1 }));
    await expect(gateway.decide(principal(task()), { ...hop, resource: `ticket/${'9'.repeat(1_020)}` }, 'refund', 'retry')).rejects.toMatchObject({ code: 'invalid_request', field: 'resource', message: expect.stringContaining('is 1027 characters, more than the 1024 a hop takes') as unknown });
    expect(decisions).toBe(0);
    await expect(gateway.decide(principal(task()), { ...hop, resource: `ticket/${'9'.repeat(1_017)}` }, 'refund', 'retry')).resolves.toMatchObject({ allowed: true });
  });

  it('leaves an approval of the call unused when the call no longer needs one (the policy now allows it outright)', async () => {
    const { gateway, claimed } = await setup(() => ({ hopId: 'h1_free', decision: 'allow', reasons: [{ rule: 'refunds-allowed-now', effect: 'Allow' }], depth: 1 }), [approval('yes', hopDigest(hop))]);
    await expect(gateway.decide(principal(task()), hop, 'refund', 'retry')).resolves.toMatchObject({ allowed: true, answer: { hopId: 'h1_free' } });
    expect(claimed).toEqual([]);
  });

  it('gives its approval back when it is refused before it goes through (its record not written yet), and the retry goes through on it', async () => {
    const approved = (by: string | undefined): HopAnswer => (by ? { hopId: 'h1_ok', decision: 'allow', reasons: [{ rule: `approval:${by}`, effect: 'Allow' }], depth: 1 } : { hopId: 'h1_new', decision: 'pending_approval', reasons: [{ rule: 'refunds', effect: 'RequireApproval' }], depth: 1 });
    let writes = 0;
    const { gateway, claimed, released } = await setup(approved, [approval('yes', hopDigest(hop))], (by) => {
      if (++writes === 1) throw new ChainwardenError('journal_behind', 'hop h1_ok adds to what AgentTask support/t has touched, and its record was not written within 5 s; retry shortly');
      return approved(by);
    });
    await expect(gateway.decide(principal(task()), hop, 'refund', 'retry')).rejects.toMatchObject({ code: 'journal_behind' });
    expect(released).toEqual(['yes']);
    expect(claimed).toEqual([]);
    await expect(gateway.decide(principal(task()), hop, 'refund', 'retry')).resolves.toMatchObject({ allowed: true, answer: { hopId: 'h1_ok' } });
    expect(claimed).toEqual(['yes']);
  });

  it('answers its refusal within a second even when giving the approval back hangs on the API server', async () => {
    const approved = (by: string | undefined): HopAnswer => (by ? { hopId: 'h1_ok', decision: 'allow', reasons: [{ rule: `approval:${by}`, effect: 'Allow' }], depth: 1 } : { hopId: 'h1_new', decision: 'pending_approval', reasons: [{ rule: 'refunds', effect: 'RequireApproval' }], depth: 1 });
    const { gateway } = await setup(
      approved,
      [approval('yes', hopDigest(hop))],
      () => {
        throw new ChainwardenError('journal_behind', 'not written within 5 s; retry shortly');
      },
      true,
    );
    const started = performance.now();
    await expect(gateway.decide(principal(task()), hop, 'refund', 'retry')).rejects.toMatchObject({ code: 'journal_behind' });
    expect(performance.now() - started).toBeGreaterThanOrEqual(900);
    expect(performance.now() - started).toBeLessThan(3_000);
  });

  it('a retry finds the approval it gave back while the cache still shows the claim, and not one another call holds', async () => {
    const approved = (by: string | undefined): HopAnswer => (by ? { hopId: 'h1_ok', decision: 'allow', reasons: [{ rule: `approval:${by}`, effect: 'Allow' }], depth: 1 } : { hopId: 'h1_new', decision: 'pending_approval', reasons: [{ rule: 'refunds', effect: 'RequireApproval' }], depth: 1 });
    let writes = 0;
    const cached = [approval('yes', hopDigest(hop))];
    const { gateway, claimed, marks } = await setup(approved, cached, (by) => {
      if (++writes === 1) throw new ChainwardenError('journal_behind', 'not written within 5 s; retry shortly');
      return approved(by);
    });
    await expect(gateway.decide(principal(task()), hop, 'refund', 'retry')).rejects.toMatchObject({ code: 'journal_behind' });
    // The watch has brought the claim, not yet its release.
    const [yes] = cached;
    if (!yes) throw new Error('no approval');
    yes.metadata.annotations = { 'chainwarden.io/used-by': marks.get('yes') ?? '' };
    await expect(gateway.decide(principal(task()), hop, 'refund', 'retry')).resolves.toMatchObject({ allowed: true, answer: { hopId: 'h1_ok' } });
    expect(claimed).toEqual(['yes']);
    // Marked by another call: not a candidate, whatever this replica gave back before.
    yes.metadata.annotations = { 'chainwarden.io/used-by': 'agent-1@2026-11-21T10:00:00.000Z' };
    claimed.length = 0;
    await expect(gateway.decide(principal(task()), hop, 'refund', 'retry')).resolves.toMatchObject({ allowed: false, hopId: 'h1_new', decision: 'pending_approval' });
    expect(claimed).toEqual([]);
  });

  it('gives its approval back when the decision does not bear out the forecast it was claimed on (the chain grew in between)', async () => {
    const forecast = (by: string | undefined): HopAnswer => (by ? { hopId: 'h1_ok', decision: 'allow', reasons: [{ rule: `approval:${by}`, effect: 'Allow' }], depth: 1 } : { hopId: 'h1_new', decision: 'pending_approval', reasons: [{ rule: 'refunds', effect: 'RequireApproval' }], depth: 1 });
    const grown = (): HopAnswer => ({ hopId: 'h1_held', decision: 'pending_approval', reasons: [{ rule: 'refunds', effect: 'RequireApproval' }, { rule: 'refunds-after-pii', effect: 'RequireApproval' }], depth: 1 });
    const { gateway, claimed, released } = await setup(forecast, [approval('yes', hopDigest(hop))], grown);
    await expect(gateway.decide(principal(task()), hop, 'refund', 'retry')).resolves.toMatchObject({ allowed: false, hopId: 'h1_held', decision: 'pending_approval' });
    expect(released).toEqual(['yes']);
    expect(claimed).toEqual([]);
  });

  it('refuses a parent that is no hop of the task before it claims any approval, so a bad parent cannot churn an approval\'s mark', async () => {
    let decisions = 0;
    const { gateway, claimed, released } = await setup((by) => ((decisions += 1), by ? { hopId: 'h1_ok', decision: 'allow', reasons: [{ rule: `approval:${by}`, effect: 'Allow' }], depth: 1 } : { hopId: 'h1_new', decision: 'pending_approval', reasons: [{ rule: 'refunds', effect: 'RequireApproval' }], depth: 1 }), [approval('yes', hopDigest(hop))]);
    for (const parentHop of ['h1_AAAAAAAAAAAA_AAAAAAAAAAAAAAAA', ids.mint('uid-of-another-task', 1)]) {
      await expect(gateway.decide(principal(task()), { ...hop, parentHop }, 'refund', 'retry')).rejects.toMatchObject({ code: 'invalid_hop', field: 'parentHop' });
    }
    expect({ decisions, claimed, released }).toEqual({ decisions: 0, claimed: [], released: [] });
  });

  it('is not released by an approval left from an earlier task of the same name', async () => {
    // Approvals outlive their task; the task made again under its name asks for the identical call.
    const { gateway, claimed } = await setup((approvedBy) => (approvedBy ? { hopId: 'h1_ok', decision: 'allow', reasons: [], depth: 1 } : { hopId: 'h1_new', decision: 'pending_approval', reasons: [{ rule: 'refunds', effect: 'RequireApproval' }], depth: 1 }), [approval('earlier', hopDigest(hop), undefined, ids.mint('uid-of-the-earlier-task', 1))]);
    await expect(gateway.decide(principal(task()), hop, 'refund', 'retry')).resolves.toMatchObject({ allowed: false, hopId: 'h1_new', decision: 'pending_approval' });
    expect(claimed).toEqual([]);
  });
});
