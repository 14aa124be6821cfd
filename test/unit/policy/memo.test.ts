import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { AgentPolicy, PolicyRule } from '../../../src/api/schema.js';
import { PolicyEngine, type HopContext, type HopSubject } from '../../../src/policy/engine.js';

const TOOLS = ['crm', 'email', 'aws:s3', 'payments', 'tickets'];
const ACTIONS = ['read', 'send', 'refund', 'admin.freeze', 'GetObject'];
const SYSTEMS = ['crm', 'email', 'payments', 'warehouse'];
const CLASSES = ['pii', 'finance', 'public', 'secret'];

const pattern = (names: string[]) => fc.oneof(fc.constantFrom(...names), fc.constant('*'), fc.constantFrom(...names).map((n) => `${n.slice(0, 2)}*`));
const rule = (name: string): fc.Arbitrary<PolicyRule> =>
  fc.record(
    {
      name: fc.constant(name),
      effect: fc.constantFrom('Allow', 'Deny', 'RequireApproval'),
      tools: fc.array(pattern(TOOLS), { minLength: 1, maxLength: 2 }),
      actions: fc.array(pattern(ACTIONS), { minLength: 1, maxLength: 2 }),
      resources: fc.array(fc.constantFrom('order/*', 'arn:aws:s3:::customers/*', 'ticket/1', '*'), { minLength: 1, maxLength: 2 }),
      when: fc.record(
        {
          afterDataClasses: fc.subarray(CLASSES, { minLength: 1 }),
          afterSystems: fc.subarray(SYSTEMS, { minLength: 1 }),
          crossesTrustBoundary: fc.boolean(),
          minDepth: fc.integer({ min: 0, max: 4 }),
        },
        { requiredKeys: [] },
      ),
    },
    { requiredKeys: ['name', 'effect', 'tools', 'actions'] },
  );

let generated = 0;
const policyArb = fc.integer({ min: 1, max: 5 }).chain((n) =>
  fc.tuple(...Array.from({ length: n }, (_, i) => rule(`rule-${i}`))).map(
    (rules): AgentPolicy => ({ apiVersion: 'chainwarden.io/v1alpha1', kind: 'AgentPolicy', metadata: { namespace: 'ns', name: 'p', uid: `p-${++generated}`, generation: 1 }, spec: { rules } }),
  ),
);

const contextArb: fc.Arbitrary<HopContext> = fc.record({
  tool: fc.oneof(fc.constantFrom(...TOOLS), fc.string({ maxLength: 6 })),
  action: fc.oneof(fc.constantFrom(...ACTIONS), fc.string({ maxLength: 6 })),
  resource: fc.constantFrom('order/1', 'arn:aws:s3:::customers/a', 'ticket/1', 'x', ''),
  intent: fc.string({ maxLength: 8 }),
  depth: fc.integer({ min: 0, max: 6 }),
  hopCount: fc.integer({ min: 0, max: 1000 }),
  secondsSinceStart: fc.integer({ min: 0, max: 100_000 }),
  systemsTouched: fc.subarray([...SYSTEMS, 'other', 'tickets']),
  dataClassesTouched: fc.subarray([...CLASSES, 'internal-only']),
  trustBoundary: fc.constantFrom('internal', 'external'),
  crossesTrustBoundary: fc.boolean(),
  priorDenials: fc.integer({ min: 0, max: 50 }),
});
const subjectArb: fc.Arbitrary<HopSubject> = fc.record({
  namespace: fc.constant('ns'),
  task: fc.constantFrom('t1', 't2'),
  serviceAccount: fc.constantFrom('sa', 'other'),
  intent: fc.string({ maxLength: 8 }),
  toolDataClasses: fc.subarray(CLASSES),
  attributes: fc.dictionary(fc.constantFrom('amount', 'to'), fc.string({ maxLength: 6 })),
});

/**
 * Hops that share most of what they carry: a base hop and variants that each change one part,
 * so a remembered answer that ignores something the policy reads is given where it is wrong.
 */
const chainArb = fc
  .tuple(contextArb, fc.array(contextArb, { minLength: 1, maxLength: 10 }), fc.array(fc.constantFrom<keyof HopContext>('tool', 'action', 'resource', 'depth', 'crossesTrustBoundary', 'systemsTouched', 'dataClassesTouched', 'hopCount', 'trustBoundary'), { minLength: 10, maxLength: 10 }))
  .map(([base, others, fields]) => [base, ...others.map((other, i) => ({ ...base, [fields[i] ?? 'tool']: other[fields[i] ?? 'tool'] }))]);

describe('remembered decisions', () => {
  it('agree with Cedar asked afresh, for generated policies and chains, in any order and on repeats', () => {
    const memo = new PolicyEngine();
    const cedar = new PolicyEngine({ memoize: false });
    fc.assert(
      fc.property(policyArb, subjectArb, chainArb, (policy, subject, hops) => {
        // Every hop twice, and the second time after all the others: a remembered answer is given where it could be wrong.
        for (const context of [...hops, ...hops.slice().reverse()]) {
          const expected = cedar.evaluate(policy, subject, context, context.trustBoundary);
          expect(memo.evaluate(policy, subject, context, context.trustBoundary)).toEqual(expected);
        }
      }),
      { numRuns: 600 },
    );
    // Some 26,000 Cedar evaluations: seconds on a busy two-core machine, not a hang.
  }, 60_000);

  it('are not used for raw Cedar, which may read anything the hop carries', () => {
    const engine = new PolicyEngine();
    const policy = { apiVersion: 'chainwarden.io/v1alpha1', kind: 'AgentPolicy', metadata: { namespace: 'ns', name: 'p', uid: 'raw', generation: 1 }, spec: { rules: [{ name: 'all', effect: 'Allow', tools: ['*'], actions: ['*'] }], cedar: '@id("slow-down")\nforbid (principal, action, resource) when { context.hopCount > 10 };' } } as AgentPolicy;
    const hop = (hopCount: number): HopContext => ({ tool: 'crm', action: 'read', resource: 'x', intent: '', depth: 0, hopCount, secondsSinceStart: 1, systemsTouched: [], dataClassesTouched: [], trustBoundary: 'internal', crossesTrustBoundary: false, priorDenials: 0 });
    const subject: HopSubject = { namespace: 'ns', task: 't', serviceAccount: 'sa', intent: '', toolDataClasses: [], attributes: {} };
    expect(engine.evaluate(policy, subject, hop(1), 'internal').decision).toBe('Allow');
    expect(engine.evaluate(policy, subject, hop(11), 'internal')).toMatchObject({ decision: 'Deny', reasons: [{ rule: 'slow-down' }] });
  });

  it('follow the policy: a new generation is decided anew', () => {
    const engine = new PolicyEngine();
    const make = (generation: number, effect: PolicyRule['effect']) => ({ apiVersion: 'chainwarden.io/v1alpha1', kind: 'AgentPolicy', metadata: { namespace: 'ns', name: 'p', uid: 'gen', generation }, spec: { rules: [{ name: 'crm', effect, tools: ['crm'], actions: ['*'] }] } }) as AgentPolicy;
    const hop: HopContext = { tool: 'crm', action: 'read', resource: 'x', intent: '', depth: 0, hopCount: 0, secondsSinceStart: 1, systemsTouched: [], dataClassesTouched: [], trustBoundary: 'internal', crossesTrustBoundary: false, priorDenials: 0 };
    const subject: HopSubject = { namespace: 'ns', task: 't', serviceAccount: 'sa', intent: '', toolDataClasses: [], attributes: {} };
    expect(engine.evaluate(make(1, 'Allow'), subject, hop, 'internal').decision).toBe('Allow');
    expect(engine.evaluate(make(2, 'Deny'), subject, hop, 'internal').decision).toBe('Deny');
  });
});
