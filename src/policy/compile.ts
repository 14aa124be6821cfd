import * as cedar from '@cedar-policy/cedar-wasm/nodejs';
import type { AgentPolicy, PolicyRule } from '../api/schema.js';
import { CEDAR_NAMESPACE } from './cedar-schema.js';

export type RuleEffect = PolicyRule['effect'];

/** A policy's Cedar: one entry per rule (keyed by the rule's name) plus the raw Cedar's policies. */
export interface CompiledPolicy {
  policies: Record<string, string>;
  effects: Map<string, RuleEffect>;
  /**
   * What the policy reads of a hop, when that is known: compiled rules read the tool, action,
   * resource, depth and boundary crossing, and only whether the chain touched the systems and
   * data classes they name. Absent when the policy has raw Cedar, which may read anything.
   */
  reads?: { systems: Set<string>; dataClasses: Set<string> };
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

/** One policy of a policy's raw Cedar: its `@id` (if it has one), its effect and its text. */
export interface RawPolicy {
  id?: string;
  effect: 'permit' | 'forbid';
  text: string;
}

/**
 * Splits raw Cedar into its policies, reading `@id` and the effect from Cedar's own parse (a
 * regex over the text would be fooled by comments and escapes). Throws when the text does not
 * parse; admission refuses such a policy first.
 */
export function rawPolicies(text: string): RawPolicy[] {
  if (!text.trim()) return [];
  const parts = cedar.policySetTextToParts(text);
  if (parts.type === 'failure') throw new Error(`raw Cedar does not parse: ${parts.errors.map((e) => e.message).join('; ')}`);
  return parts.policies.map((policy) => {
    const json = cedar.policyToJson(policy);
    if (json.type === 'failure') throw new Error(`raw Cedar does not parse: ${json.errors.map((e) => e.message).join('; ')}`);
    return { id: json.json.annotations?.id || undefined, effect: json.json.effect, text: policy };
  });
}

export function compilePolicy(policy: AgentPolicy): CompiledPolicy {
  const policies: Record<string, string> = {};
  const effects = new Map<string, RuleEffect>();
  const reads = { systems: new Set<string>(), dataClasses: new Set<string>() };
  for (const rule of policy.spec.rules ?? []) {
    policies[rule.name] = compileRule(rule);
    effects.set(rule.name, rule.effect);
    for (const s of rule.when?.afterSystems ?? []) reads.systems.add(s);
    for (const c of rule.when?.afterDataClasses ?? []) reads.dataClasses.add(c);
  }
  const raws = rawPolicies(policy.spec.cedar ?? '');
  raws.forEach((raw, i) => {
    // Admission refuses duplicate ids and ids that are rule names; should one slip through (a
    // policy admitted before that check), every policy is still kept, under a distinct id: a
    // second policy must never replace the first, least of all a forbid.
    let key = raw.id ?? `cedar-${i + 1}`;
    for (let n = 2; policies[key] !== undefined; n++) key = `cedar:${raw.id ?? i + 1}#${n}`;
    policies[key] = raw.text;
    effects.set(key, raw.effect === 'forbid' ? 'Deny' : 'Allow');
  });
  return raws.length > 0 ? { policies, effects } : { policies, effects, reads };
}
