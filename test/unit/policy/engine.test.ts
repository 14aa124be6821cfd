import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import { describe, expect, it } from 'vitest';
import { parseAgentPolicy } from '../../../src/api/parse.js';
import { compileRule } from '../../../src/policy/compile.js';
import { PolicyEngine, type HopContext } from '../../../src/policy/engine.js';

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
  it('compiles globs to like and exact names to equality', () => {
    expect(compileRule({ name: 'r', effect: 'Deny', tools: ['payments'], actions: ['admin.*', 'wipe'] })).toBe(
      '@id("r")\nforbid (principal, action == Chainwarden::Action::"hop", resource)\nwhen { context.tool == "payments" && (context.action like "admin.*" || context.action == "wipe") };',
    );
  });
});
