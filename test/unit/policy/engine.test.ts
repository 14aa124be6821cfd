import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import { describe, expect, it } from 'vitest';
import { parseAgentPolicy } from '../../../src/api/parse.js';
import { compilePolicy, compileRule } from '../../../src/policy/compile.js';
import { checkPolicy } from '../../../src/admission/plugins/agentpolicy.js';
import { keyOf, MAX_PREPARED_POLICIES, PolicyEngine, type HopContext } from '../../../src/policy/engine.js';

const policy = parseAgentPolicy(parse(readFileSync(path.resolve(import.meta.dirname, '../../../examples/support-policy.yaml'), 'utf8')));
const engine = new PolicyEngine();
const subject = { namespace: 'support', task: 't', serviceAccount: 'sa', intent: '', toolDataClasses: [], attributes: {} };
const context = (c: Partial<HopContext>): HopContext => ({
  tool: 'tickets', action: 'read', resource: 'ticket/1', intent: '', depth: 1, hopCount: 0, secondsSinceStart: 1,
  systemsTouched: [], dataClassesTouched: [], trustBoundary: 'internal', crossesTrustBoundary: false, priorDenials: 0, ...c,
});
const decide = (c: Partial<HopContext>) => engine.evaluate(policy, subject, context(c), c.trustBoundary ?? 'internal');

describe('PolicyEngine', () => {
  it('allows what a rule allows and names the rule', () => {
    expect(decide({})).toMatchObject({ decision: 'Allow', reasons: [{ rule: 'read-and-comment', effect: 'Allow' }] });
  });
  it('denies by default', () => {
    expect(decide({ tool: 'crm', action: 'export' })).toMatchObject({ decision: 'Deny', reasons: [] });
  });
  it('lets Deny win over Allow, and sees the chain', () => {
    expect(decide({ tool: 'email', action: 'send', resource: 'x' })).toMatchObject({ decision: 'Allow' });
    expect(decide({ tool: 'email', action: 'send', resource: 'x', dataClassesTouched: ['pii'] })).toMatchObject({ decision: 'Deny', reasons: [{ rule: 'no-exfiltration', effect: 'Deny' }] });
  });
  it('reports RequireApproval rules as such', () => {
    expect(decide({ tool: 'payments', action: 'refund', resource: 'order/1' })).toMatchObject({ decision: 'Allow', reasons: [{ rule: 'refunds-need-a-human', effect: 'RequireApproval' }] });
  });
  it('applies raw Cedar from the policy', () => {
    expect(decide({ depth: 6 })).toMatchObject({ decision: 'Deny', reasons: [{ rule: 'no-deep-chains', effect: 'Deny' }] });
  });
  it('denies, naming why, what Cedar cannot take (a lone surrogate), and keeps deciding afterwards', () => {
    for (const c of [{ resource: 'ticket/\ud800' }, { intent: 'x\udfff' }]) {
      const out = decide(c);
      expect(out).toMatchObject({ decision: 'Deny', reasons: [{ rule: 'evaluation-error', effect: 'Deny' }] });
      expect(out.reasons[0]?.message).toContain('the request could not be given to Cedar');
    }
    expect(decide({})).toMatchObject({ decision: 'Allow' });
  });
  it('compiles globs to like and exact names to equality', () => {
    expect(compileRule({ name: 'r', effect: 'Deny', tools: ['payments'], actions: ['admin.*', 'wipe'] })).toBe(
      '@id("r")\nforbid (principal, action == Chainwarden::Action::"hop", resource)\nwhen { context.tool == "payments" && (context.action like "admin.*" || context.action == "wipe") };',
    );
  });
});

const withCedar = (cedar: string, generation: number) => {
  const p = structuredClone(policy);
  p.spec.cedar = cedar;
  p.metadata.generation = generation;
  p.metadata.uid = `fail-closed-${generation}`;
  return p;
};

describe('PolicyEngine fails closed', () => {
  // Meant as "forbid below depth 2"; at depth 2 the product overflows a Cedar Long and Cedar
  // skips the policy, which used to let the hop through on read-and-comment.
  const overflowing = withCedar('@id("deep-multiplier")\nforbid (principal, action, resource) when { context.depth * 4611686018427387904 > 4611686018427387904 };', 1);

  it('denies a hop when a policy errors during evaluation, naming the policy and the error', () => {
    expect(engine.evaluate(overflowing, subject, context({ depth: 1 }), 'internal')).toMatchObject({ decision: 'Allow' });
    const answer = engine.evaluate(overflowing, subject, context({ depth: 2 }), 'internal');
    expect(answer.decision).toBe('Deny');
    expect(answer.reasons).toMatchObject([{ rule: 'evaluation-error', effect: 'Deny' }]);
    expect(answer.reasons[0]?.message).toMatch(/^policy deep-multiplier: .*overflow/);
  });

  it('denies when the policy does not compile, instead of throwing', () => {
    const broken = withCedar('permit (principal, action, resource) when { ', 2);
    expect(engine.evaluate(broken, subject, context({}), 'internal')).toMatchObject({ decision: 'Deny', reasons: [{ rule: 'evaluation-error' }] });
  });
});

describe('raw Cedar ids', () => {
  const twoWithOneId = '@id("x")\nforbid (principal, action, resource) when { context.tool == "tickets" };\n@id("x")\npermit (principal, action, resource);';

  it('keeps every raw policy, even two with one @id: a second never replaces a forbid', () => {
    const p = withCedar(twoWithOneId, 3);
    const compiled = compilePolicy(p);
    expect(Object.values(compiled.policies).filter((t) => t.includes('forbid (principal, action, resource) when { context.tool == "tickets" }'))).toHaveLength(1);
    expect(engine.evaluate(p, subject, context({}), 'internal')).toMatchObject({ decision: 'Deny', reasons: [{ rule: 'x', effect: 'Deny' }] });
  });

  it('reads @id and the effect from Cedar, not from comments or the layout', () => {
    const compiled = compilePolicy(withCedar('// @id("decoy")\n@id("one-line") forbid (principal, action, resource) when { context.depth > 3 };', 4));
    expect(compiled.effects.get('one-line')).toBe('Deny');
    expect(compiled.effects.has('decoy')).toBe(false);
  });

  it('refuses duplicate @ids and @ids that are rule names at admission, with the field and the fix', () => {
    expect(checkPolicy(withCedar(twoWithOneId, 5))).toEqual([
      { field: 'spec.cedar', message: 'policy 2 has @id("x"), which policy 1 already has; give each raw Cedar policy its own @id' },
    ]);
    expect(checkPolicy(withCedar('@id("read-and-comment")\nforbid (principal, action, resource);', 6))).toEqual([
      { field: 'spec.cedar', message: 'policy 1 has @id("read-and-comment"), which is the name of a rule in spec.rules; rename the @id or the rule' },
    ]);
    expect(checkPolicy(policy)).toEqual([]);
  });
});

describe('compiled policies are bounded', () => {
  /** A policy of its own uid allowing one tool, `generation` as given. */
  const allowing = (uid: string, tool: string, generation = 1) => ({ ...policy, metadata: { ...policy.metadata, uid, generation }, spec: { ...policy.spec, cedar: undefined, rules: [{ name: `allow-${tool}`, effect: 'Allow' as const, tools: [tool], actions: ['*'] }] } });
  const bounded = new PolicyEngine();
  const on = (p: ReturnType<typeof allowing>, tool: string) => bounded.evaluate(p, subject, context({ tool }), 'internal').decision;

  it('a policy edited hundreds of times keeps one compiled copy: the process does not grow with its generations', () => {
    // Before, Cedar kept every generation: about 0.3 MB each for this policy of ten rules with long globs.
    const rules = Array.from({ length: 10 }, (_, r) => ({ name: `rule-${r}`, effect: 'Allow' as const, tools: Array.from({ length: 10 }, (_, i) => `tool${i}-${'x'.repeat(40)}*`), actions: Array.from({ length: 10 }, (_, i) => `act${i}.${'y'.repeat(40)}*`), resources: Array.from({ length: 10 }, (_, i) => `res/${i}/${'z'.repeat(40)}*`) }));
    const edited = (generation: number) => ({ ...policy, metadata: { ...policy.metadata, uid: 'edited', generation }, spec: { ...policy.spec, cedar: undefined, rules } });
    const engine = new PolicyEngine();
    for (let g = 1; g <= 50; g++) engine.evaluate(edited(g), subject, context({}), 'internal');
    const before = process.memoryUsage().rss;
    for (let g = 51; g <= 450; g++) expect(engine.evaluate(edited(g), subject, context({}), 'internal').errors).toEqual([]);
    expect((process.memoryUsage().rss - before) / 2 ** 20).toBeLessThan(40);
  });

  it('decides each generation by its own rules, never by the one its slot held before', () => {
    expect(on(allowing('p1', 'tickets', 1), 'tickets')).toBe('Allow');
    expect(on(allowing('p1', 'email', 2), 'tickets')).toBe('Deny');
    expect(on(allowing('p1', 'email', 2), 'email')).toBe('Allow');
  });

  it(`past ${MAX_PREPARED_POLICIES} policies the one compiled longest ago is dropped, and compiled again, with its own rules, when it is used again`, () => {
    for (let i = 0; i <= MAX_PREPARED_POLICIES + 5; i++) expect(on(allowing(`many-${i}`, `tool-${i}`), `tool-${i}`)).toBe('Allow');
    // Its slot went to a later policy; what it decides is still its own.
    expect(on(allowing('many-0', 'tool-0'), 'tool-0')).toBe('Allow');
    expect(on(allowing('many-0', 'tool-0'), `tool-${MAX_PREPARED_POLICIES + 5}`)).toBe('Deny');
    expect(on(allowing(`many-${MAX_PREPARED_POLICIES + 5}`, `tool-${MAX_PREPARED_POLICIES + 5}`), 'tool-0')).toBe('Deny');
    // A deleted policy's slot is emptied and reused.
    bounded.drop(keyOf(allowing('many-3', 'tool-3')));
    expect(on(allowing('many-new', 'tool-new'), 'tool-new')).toBe('Allow');
    expect(on(allowing('many-3', 'tool-3'), 'tool-3')).toBe('Allow');
    expect(on(allowing('many-3', 'tool-3'), 'tool-new')).toBe('Deny');
  });
});
