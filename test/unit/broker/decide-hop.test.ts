import { describe, expect, it } from 'vitest';
import { parseAgentPolicy, parseAgentTask } from '../../../src/api/parse.js';
import type { TaskDelta } from '../../../src/audit/journal.js';
import { MAX_PENDING_HOP_BYTES, STATUS_CAPS } from '../../../src/api/task.js';
import { chainView, decideHop, depthOf, type ChainView, type HopApproval, type HopInput } from '../../../src/broker/decide-hop.js';
import { parseHopRequest } from '../../../src/broker/hops.js';
import { PolicyEngine } from '../../../src/policy/engine.js';
import { examplePolicy, exampleTask } from '../../builders/examples.js';
import { scenarios, type Scenario } from '../../builders/hop-scenarios.js';

const engine = new PolicyEngine();
const evaluate: Parameters<typeof decideHop>[1] = (...args) => engine.evaluate(...args);
const created = Date.parse('2026-11-21T10:00:00Z');
let generation = 0;

function objects(s: Pick<Scenario, 'policy' | 'task'>) {
  const policy = examplePolicy('support');
  // Every scenario's policy is a new generation, as an edited AgentPolicy would be.
  policy.metadata = { ...policy.metadata, uid: 'p-uid', generation: ++generation };
  s.policy?.(policy);
  const task = exampleTask('support');
  task.metadata = { ...task.metadata, uid: 't-uid', creationTimestamp: new Date(created).toISOString() };
  s.task?.(task);
  return { policy: parseAgentPolicy(policy), task: parseAgentTask(task) };
}

/** The chain after a hop's delta, as the journal would record it. */
function advance(chain: ChainView, delta: Partial<TaskDelta>): ChainView {
  return chainView(
    { version: 0, hopCount: chain.hopCount, deepest: chain.deepest, priorDenials: chain.priorDenials, systemsTouched: [...chain.systems], dataClassesTouched: [...chain.dataClasses] },
    { hopCount: delta.hopCount ?? 0, deepest: delta.deepest ?? 0, priorDenials: delta.priorDenials ?? 0, systems: delta.systems ?? new Set(), dataClasses: delta.dataClasses ?? new Set(), addPending: delta.addPending ?? [] } as TaskDelta,
    chain.pending,
  );
}

/** Walks a scenario's hops through decideHop, carrying the chain and depths along. */
function walk(s: Scenario) {
  const { policy, task } = objects(s);
  let chain = chainView(undefined, undefined);
  let previousDepth: number | undefined;
  let last: ReturnType<typeof decideHop> | undefined;
  let depth = 1;
  for (const [i, step] of [...(s.before ?? []), s.hop].entries()) {
    const { parent, ...body } = step;
    depth = depthOf(parent ? previousDepth : undefined, chain);
    const input: HopInput = { task, policy, request: parseHopRequest(body), hopId: `h${depth}_${i}`, depth, chain, now: created + 60_000 + i, pod: 'agent-0' };
    last = decideHop(input, evaluate);
    chain = advance(chain, last.delta);
    previousDepth = depth;
  }
  return { outcome: last as ReturnType<typeof decideHop>, depth };
}

describe('decideHop: the policy scenarios', () => {
  it.each(scenarios)('$name → $decision', (s) => {
    const { outcome, depth } = walk(s);
    expect(outcome.decision).toBe(s.decision);
    expect(outcome.reasons.map((r) => r.rule).sort()).toEqual([...s.rules].sort());
    if (s.depth) expect(depth).toBe(s.depth);
  });

  it('covers every decision and enough of the chain context to matter', () => {
    expect(scenarios.length).toBeGreaterThanOrEqual(25);
    expect(new Set(scenarios.map((s) => s.decision))).toEqual(new Set(['allow', 'deny', 'pending_approval']));
  });
});

describe('depthOf: an agent cannot climb back up the tree', () => {
  it.each([
    { parent: undefined, deepest: 0, depth: 1, why: 'the first hop is a root' },
    { parent: 2, deepest: 2, depth: 3, why: 'a child is one deeper than its parent' },
    { parent: undefined, deepest: 4, depth: 4, why: 'leaving parentHop out does not start over at 1' },
    { parent: 1, deepest: 4, depth: 4, why: 'naming an early, shallow hop does not either' },
  ])('$why', ({ parent, deepest, depth }) => {
    expect(depthOf(parent, { deepest })).toBe(depth);
  });
});

describe('decideHop: what the journal records', () => {
  const input = (body: Record<string, unknown>, s: Pick<Scenario, 'policy' | 'task'> = {}): HopInput => ({ ...objects(s), request: parseHopRequest(body), hopId: 'h1_x', depth: 1, chain: chainView(undefined, undefined), now: created + 1000, pod: 'agent-0' });

  it('is pure: the same input gives the same decision and the same delta', () => {
    const i = input({ tool: 'tickets', action: 'read', resource: 'ticket/1' });
    expect(decideHop(i, evaluate)).toEqual(decideHop(i, evaluate));
  });

  it('an allowed hop touches its system and data classes, and is answered before it is written', () => {
    const out = decideHop(input({ tool: 'tickets', action: 'read', resource: 'ticket/1' }), evaluate);
    expect(out.commit).toBe(false);
    expect(out.delta).toMatchObject({ hopCount: 1, allowed: 1, systems: new Set(['tickets']), dataClasses: new Set(['pii']) });
    expect(out.delta.events?.[0]).toMatchObject({ type: 'hop_decided', data: { hopId: 'h1_x', decision: 'allow', pod: 'agent-0' } });
  });

  it('a hop that waits is written before it is answered, with its digest and timeout', () => {
    const out = decideHop(input({ tool: 'payments', action: 'refund', resource: 'order/1' }), evaluate);
    expect(out).toMatchObject({ decision: 'pending_approval', commit: true });
    expect(out.delta.addPending?.[0]).toMatchObject({ hopId: 'h1_x', rules: ['refunds-need-a-human'], timeoutAt: out.timeoutAt });
    expect(Date.parse(out.timeoutAt ?? '') - (created + 1000)).toBe(15 * 60_000);
  });

  it('a denial under onViolation Revoke records the violation fact and is written before it is answered', () => {
    const out = decideHop(input({ tool: 'payments', action: 'admin.freeze', resource: 'account/1' }), evaluate);
    expect(out).toMatchObject({ decision: 'deny', commit: true, delta: { violation: { hopId: 'h1_x', rule: 'never-admin-payments' } } });
    expect(out.delta.events?.map((e) => e.type)).toEqual(['hop_decided', 'violation']);
  });

  it('a denial under onViolation Deny only counts', () => {
    const out = decideHop(input({ tool: 'payments', action: 'admin.freeze', resource: 'account/1' }, { policy: (p) => void (p.spec.onViolation = 'Deny') }), evaluate);
    expect(out).toMatchObject({ decision: 'deny', commit: false, delta: { denied: 1, priorDenials: 1 } });
    expect(out.delta.violation).toBeUndefined();
  });
});

describe('decideHop: a hop whose record would not fit in status is denied, never left unrecorded', () => {
  const wide = (p: ReturnType<typeof examplePolicy>) => void p.spec.rules!.push({ name: 'any-probe', effect: 'Allow', tools: ['*'], actions: ['probe'] });
  const full = (over: Partial<ChainView>): ChainView => ({ ...chainView(undefined, undefined), ...over });
  const decide = (body: Record<string, unknown>, chain: ChainView) => decideHop({ ...objects({ policy: wide }), request: parseHopRequest(body), hopId: 'h1_x', depth: 1, chain, now: created + 1000, pod: 'agent-0' }, evaluate);

  it(`a hop that would wait beyond ${STATUS_CAPS.pendingHops} waiting hops is denied by limit:pendingHops`, () => {
    expect(decide({ tool: 'payments', action: 'refund', resource: 'order/1' }, full({ pending: STATUS_CAPS.pendingHops - 1 })).decision).toBe('pending_approval');
    const out = decide({ tool: 'payments', action: 'refund', resource: 'order/1' }, full({ pending: STATUS_CAPS.pendingHops }));
    expect(out).toMatchObject({ decision: 'deny', reasons: [{ rule: 'limit:pendingHops' }] });
    expect(out.delta.addPending).toBeUndefined();
  });

  it(`a hop that would wait with more than ${MAX_PENDING_HOP_BYTES / 1024} KiB of text as the API server stores it is denied by limit:pendingHops, saying why; the same number of plain ASCII characters wait`, () => {
    // Within every field's character limit; three bytes a character, 100 such waiting hops made a status etcd does not store.
    const wide = (c: string) => ({ tool: 'payments', action: 'refund', resource: `order/${c.repeat(1000)}`, intent: c.repeat(1000), attributes: { a: c.repeat(1000), b: c.repeat(1000), c: c.repeat(1000), d: c.repeat(900) } });
    expect(decide(wide('x'), full({})).decision).toBe('pending_approval');
    const out = decide(wide('€'), full({}));
    expect(out).toMatchObject({ decision: 'deny', reasons: [{ rule: 'limit:pendingHops', message: expect.stringMatching(/waits in the task's status.* bytes of UTF-8 as the API server stores them \(<, > and & escaped in six\), over 8192: send shorter values/) as string }] });
    expect(out.delta.addPending).toBeUndefined();
    // One byte each in UTF-8, six each as stored (`\u003c`): 100 such waiting hops were a status past etcd's 1.5 MiB.
    for (const c of ['<', '>', '&']) expect(decide(wide(c), full({})), c).toMatchObject({ decision: 'deny', reasons: [{ rule: 'limit:pendingHops' }] });
  });

  it(`a new system beyond the ${STATUS_CAPS.systemsTouched} the chain records is denied; a system already touched is not`, () => {
    const systems = new Set(Array.from({ length: STATUS_CAPS.systemsTouched }, (_, i) => `tool-${i}`));
    expect(decide({ tool: 'tool-new', action: 'probe' }, full({ systems }))).toMatchObject({ decision: 'deny', reasons: [{ rule: 'limit:systemsTouched' }] });
    expect(decide({ tool: 'tool-7', action: 'probe' }, full({ systems })).decision).toBe('allow');
  });

  it('data classes the hop would add beyond the cap deny it', () => {
    const dataClasses = new Set(Array.from({ length: STATUS_CAPS.dataClassesTouched }, (_, i) => `class-${i}`));
    expect(decide({ tool: 'tickets', action: 'read', resource: 'ticket/1' }, full({ dataClasses }))).toMatchObject({ decision: 'deny', reasons: [{ rule: 'limit:dataClassesTouched' }] });
  });
});


describe('decideHop: a call approved before it was made again', () => {
  const input = (body: Record<string, unknown>, approval?: HopApproval): HopInput => ({ ...objects({ policy: (p) => void (p.spec.onViolation = 'Deny') }), request: parseHopRequest(body), hopId: 'h1_x', depth: 1, chain: chainView(undefined, undefined), now: created + 1000, pod: 'agent-0', ...(approval ? { approval } : {}) });

  it('what would wait is allowed, citing the approval; without one it waits', () => {
    const refund = { tool: 'payments', action: 'refund', resource: 'order/1' };
    expect(decideHop(input(refund), evaluate).decision).toBe('pending_approval');
    expect(decideHop(input(refund, { name: 'refund-ok' }), evaluate)).toMatchObject({ decision: 'allow', reasons: [{ rule: 'approval:refund-ok', effect: 'Allow' }] });
  });

  it('an approval never overrides a Deny', () => {
    expect(decideHop(input({ tool: 'payments', action: 'admin.freeze', resource: 'account/1' }, { name: 'refund-ok' }), evaluate)).toMatchObject({ decision: 'deny', reasons: [{ rule: 'never-admin-payments' }] });
  });

  it('an approval lifts the rules it was given for and no other: once customer data is read, a second rule holds the refund again, with both rules for the person to see', () => {
    const twoRules = (body: Record<string, unknown>, approval: HopApproval | undefined, dataClasses: string[]): HopInput => ({
      ...objects({
        policy: (p) => {
          p.spec.onViolation = 'Deny';
          (p.spec.rules ??= []).push({ name: 'refunds-after-pii-need-a-lead', effect: 'RequireApproval', tools: ['payments'], actions: ['refund'], when: { afterDataClasses: ['pii'] } });
        },
      }),
      request: parseHopRequest(body),
      hopId: 'h1_x',
      depth: 1,
      chain: chainView({ version: 1, hopCount: 1, deepest: 1, priorDenials: 0, systemsTouched: ['tickets'], dataClassesTouched: dataClasses }, undefined),
      now: created + 1000,
      pod: 'agent-0',
      ...(approval ? { approval } : {}),
    });
    const refund = { tool: 'payments', action: 'refund', resource: 'order/1' };
    const given = { name: 'refund-ok', rules: ['refunds-need-a-human'] };
    const through = decideHop(twoRules(refund, given, []), evaluate);
    expect(through).toMatchObject({ decision: 'allow', reasons: [{ rule: 'approval:refund-ok' }] });
    // Its record keeps the rules the approval was given for, for a replay to lift those alone.
    expect(through.delta.events?.[0]?.data.approvalRules).toEqual(['refunds-need-a-human']);
    const afterPii = decideHop(twoRules(refund, given, ['pii']), evaluate);
    expect(afterPii.decision).toBe('pending_approval');
    expect(afterPii.reasons.map((r) => r.rule).sort()).toEqual(['refunds-after-pii-need-a-lead', 'refunds-need-a-human']);
    // Given for both, or admitted before rules were recorded: through.
    expect(decideHop(twoRules(refund, { name: 'refund-ok', rules: ['refunds-after-pii-need-a-lead', 'refunds-need-a-human'] }, ['pii']), evaluate).decision).toBe('allow');
    const legacy = decideHop(twoRules(refund, { name: 'refund-ok' }, ['pii']), evaluate);
    expect(legacy.decision).toBe('allow');
    expect(legacy.delta.events?.[0]?.data.approvalRules).toBeUndefined();
    // Given for no rule: lifts nothing.
    expect(decideHop(twoRules(refund, { name: 'refund-ok', rules: [] }, []), evaluate).decision).toBe('pending_approval');
  });
});

describe('decideHop: a policy in Audit mode', () => {
  const audit = (p: ReturnType<typeof examplePolicy>) => void (p.spec.mode = 'Audit');
  const decide = (body: Record<string, unknown>, mode: 'Enforce' | 'Audit', chain: Partial<ChainView> = {}, depth = 1) =>
    decideHop({ ...objects({ policy: mode === 'Audit' ? audit : undefined }), request: parseHopRequest(body), hopId: 'h1_x', depth, chain: { ...chainView(undefined, undefined), ...chain }, now: created + 1000, pod: 'agent-0' }, evaluate);
  const pii = { systems: new Set(['tickets']), dataClasses: new Set(['pii']) };

  it.each([
    { why: 'a hop a Deny rule matches', body: { tool: 'payments', action: 'admin.freeze', resource: 'account/1' }, chain: {}, enforce: 'deny', audit: 'allow', wouldDeny: true, rules: ['never-admin-payments'] },
    { why: 'a hop a chain rule denies (email after pii)', body: { tool: 'email', action: 'send', resource: 'customer@example.com' }, chain: pii, enforce: 'deny', audit: 'allow', wouldDeny: true, rules: ['no-exfiltration'] },
    { why: 'a hop no rule allows', body: { tool: 'crm', action: 'export', resource: 'all' }, chain: {}, enforce: 'deny', audit: 'allow', wouldDeny: true, rules: ['default-deny'] },
    { why: 'a hop over maxHops', body: { tool: 'tickets', action: 'read', resource: 'ticket/1' }, chain: { hopCount: 100 }, enforce: 'deny', audit: 'allow', wouldDeny: true, rules: ['limit:maxHops'] },
    { why: 'a hop the policy allows', body: { tool: 'tickets', action: 'read', resource: 'ticket/1' }, chain: {}, enforce: 'allow', audit: 'allow', wouldDeny: false, rules: ['read-and-comment'] },
    { why: 'a hop that needs approval still waits', body: { tool: 'payments', action: 'refund', resource: 'order/1' }, chain: {}, enforce: 'pending_approval', audit: 'pending_approval', wouldDeny: false, rules: ['refunds-need-a-human'] },
    { why: 'a hop that needs approval still waits when a limit would deny it too', body: { tool: 'payments', action: 'refund', resource: 'order/1' }, chain: { hopCount: 100 }, enforce: 'deny', audit: 'pending_approval', wouldDeny: true, rules: ['refunds-need-a-human'] },
    { why: 'a status cap still denies: the record could not be written', body: { tool: 'tickets', action: 'read', resource: 'ticket/1' }, chain: { dataClasses: new Set(Array.from({ length: STATUS_CAPS.dataClassesTouched }, (_, i) => `class-${i}`)) }, enforce: 'deny', audit: 'deny', wouldDeny: false, rules: ['limit:dataClassesTouched'] },
  ])('$why: Enforce $enforce, Audit $audit', ({ body, chain, enforce, audit: inAudit, wouldDeny, rules }) => {
    expect(decide(body, 'Enforce', chain).decision).toBe(enforce);
    const out = decide(body, 'Audit', chain);
    expect(out.decision).toBe(inAudit);
    expect(out.reasons.map((r) => r.rule)).toEqual(rules);
    expect(Boolean(out.wouldDeny)).toBe(wouldDeny);
    expect(Boolean(out.delta.events?.[0]?.data.wouldDeny)).toBe(wouldDeny);
    // A waiting hop tells its approver whether Enforce would deny it, and by what.
    if (inAudit === 'pending_approval') expect(out.delta.addPending?.[0]?.wouldDenyBy).toEqual(wouldDeny ? ['limit:maxHops'] : undefined);
  });

  it('a hop that needs approval and that a Deny rule would refuse waits for a person, and once approved is allowed as a would-be denial', () => {
    const both = (p: ReturnType<typeof examplePolicy>) => {
      p.spec.mode = 'Audit';
      (p.spec.rules ??= []).push({ name: 'no-refunds-after-customer-data', effect: 'Deny', tools: ['payments'], actions: ['refund'], when: { afterDataClasses: ['pii'] } });
    };
    const input = (approval?: HopApproval): HopInput => ({ ...objects({ policy: both }), request: parseHopRequest({ tool: 'payments', action: 'refund', resource: 'order/1' }), hopId: 'h1_x', depth: 1, chain: { ...chainView(undefined, undefined), ...pii }, now: created + 1000, pod: 'agent-0', ...(approval ? { approval } : {}) });
    const held = decideHop(input(), evaluate);
    expect(held).toMatchObject({ decision: 'pending_approval', reasons: [{ rule: 'refunds-need-a-human', effect: 'RequireApproval' }] });
    // The approver is shown what Enforce would deny it by, in status and in the record.
    expect(held.delta.addPending?.[0]).toMatchObject({ rules: ['refunds-need-a-human'], wouldDenyBy: ['no-refunds-after-customer-data'] });
    expect(held.delta.events?.[0]?.data).toMatchObject({ wouldDeny: true, wouldDenyBy: ['no-refunds-after-customer-data'] });
    const approved = decideHop(input({ name: 'ok', rules: ['refunds-need-a-human'] }), evaluate);
    expect(approved).toMatchObject({ decision: 'allow', wouldDeny: true, reasons: [{ rule: 'approval:ok', effect: 'Allow' }, { rule: 'no-refunds-after-customer-data', effect: 'Deny' }] });
    expect(approved.delta.events?.[0]?.data).toMatchObject({ decision: 'allow', wouldDeny: true });
  });

  it('a would-be denial is counted, touches what it touched, revokes nothing and is answered before it is written', () => {
    const out = decide({ tool: 'email', action: 'send', resource: 'customer@example.com' }, 'Audit', pii);
    expect(out.commit).toBe(false);
    expect(out.delta).toMatchObject({ allowed: 1, wouldDeny: 1, systems: new Set(['email']), recent: [{ decision: 'allow', rules: ['no-exfiltration'], wouldDeny: true }] });
    expect(out.delta.violation).toBeUndefined();
    expect(out.delta.denied).toBeUndefined();
    expect(out.delta.priorDenials).toBeUndefined();
    expect(out.delta.events?.map((e) => e.type)).toEqual(['hop_decided']);
    expect(out.delta.events?.[0]?.data).toMatchObject({ decision: 'allow', wouldDeny: true, reasons: [{ rule: 'no-exfiltration', effect: 'Deny' }] });
  });

  it('a policy that leaves mode out enforces', () => {
    expect(decide({ tool: 'payments', action: 'admin.freeze', resource: 'account/1' }, 'Enforce')).toMatchObject({ decision: 'deny', commit: true });
  });
});
