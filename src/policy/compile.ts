import * as cedar from '@cedar-policy/cedar-wasm/nodejs';
import type { AgentPolicy, PolicyRule } from '../api/schema.js';
import { CEDAR_NAMESPACE } from './cedar-schema.js';

export type RuleEffect = PolicyRule['effect'];

/** A policy's Cedar: one entry per rule (keyed by the rule's name) plus the raw Cedar's policies. */
export interface CompiledPolicy {
  policies: Record<string, string>;
  effects: Map<string, RuleEffect>;
}

const literal = (s: string) => JSON.stringify(s);

/** `tickets` → equality; `admin.*` → Cedar `like` (its only wildcard is `*`). */
function matchAny(attribute: string, patterns: readonly string[]): string {
  const parts = patterns.map((p) => (p === '*' ? 'true' : p.includes('*') ? `${attribute} like ${literal(p)}` : `${attribute} == ${literal(p)}`));
  return parts.length === 1 ? (parts[0] ?? 'false') : `(${parts.join(' || ')})`;
}

function conditions(rule: PolicyRule): string[] {
  const out = [matchAny('context.tool', rule.tools), matchAny('context.action', rule.actions)];
  if (rule.resources && rule.resources.length > 0) out.push(matchAny('context.resource', rule.resources));
  const when = rule.when;
  if (when?.afterDataClasses?.length) out.push(`context.dataClassesTouched.containsAny([${when.afterDataClasses.map(literal).join(', ')}])`);
  if (when?.afterSystems?.length) out.push(`context.systemsTouched.containsAny([${when.afterSystems.map(literal).join(', ')}])`);
  if (when?.crossesTrustBoundary !== undefined) out.push(when.crossesTrustBoundary ? 'context.crossesTrustBoundary' : '!context.crossesTrustBoundary');
  if (when?.minDepth !== undefined) out.push(`context.depth >= ${when.minDepth}`);
  return out.filter((c) => c !== 'true');
}

/** One AgentPolicy rule as a Cedar policy; Deny is `forbid`, Allow and RequireApproval are `permit`. */
export function compileRule(rule: PolicyRule): string {
  const head = `${rule.effect === 'Deny' ? 'forbid' : 'permit'} (principal, action == ${CEDAR_NAMESPACE}::Action::"hop", resource)`;
  const body = conditions(rule);
  return `@id(${literal(rule.name)})\n${head}${body.length > 0 ? `\nwhen { ${body.join(' && ')} }` : ''};`;
}

/** Splits raw Cedar into policies named by their @id annotation, else cedar-1, cedar-2, … */
function rawPolicies(text: string): [string, string][] {
  if (!text.trim()) return [];
  const parts = cedar.policySetTextToParts(text);
  if (parts.type === 'failure') throw new Error(`raw Cedar does not parse: ${parts.errors.map((e) => e.message).join('; ')}`);
  return parts.policies.map((p, i) => [/@id\("([^"]+)"\)/.exec(p)?.[1] ?? `cedar-${i + 1}`, p]);
}

export function compilePolicy(policy: AgentPolicy): CompiledPolicy {
  const policies: Record<string, string> = {};
  const effects = new Map<string, RuleEffect>();
  for (const rule of policy.spec.rules ?? []) {
    policies[rule.name] = compileRule(rule);
    effects.set(rule.name, rule.effect);
  }
  for (const [id, text] of rawPolicies(policy.spec.cedar ?? '')) {
    // A raw policy whose @id collides with a rule name is kept under a distinct id.
    const key = policies[id] === undefined ? id : `cedar:${id}`;
    policies[key] = text;
    effects.set(key, /^\s*(@[^\n]*\n\s*)*forbid\b/.test(text) ? 'Deny' : 'Allow');
  }
  return { policies, effects };
}
