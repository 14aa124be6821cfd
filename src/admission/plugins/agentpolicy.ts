import { parseAgentPolicy, type FieldViolation } from '../../api/parse.js';
import type { AgentPolicy } from '../../api/schema.js';
import { validateCedar } from '../../policy/cedar-validate.js';
import { allow, deny, parseForAdmission, type AdmissionPlugin } from '../review.js';

/** Rules must refer only to systems and data classes the policy declares; raw Cedar must validate. */
export function checkPolicy(policy: AgentPolicy): FieldViolation[] {
  const violations: FieldViolation[] = [];
  const systems = new Set((policy.spec.systems ?? []).map((s) => s.name));
  const dataClasses = new Set((policy.spec.systems ?? []).flatMap((s) => s.dataClasses ?? []));

  (policy.spec.rules ?? []).forEach((rule, i) => {
    rule.when?.afterDataClasses?.forEach((dc, j) => {
      if (!dataClasses.has(dc)) {
        violations.push({
          field: `spec.rules[${i}].when.afterDataClasses[${j}]`,
          message: `data class "${dc}" is not declared by any system; add it to a system's dataClasses in spec.systems or fix the name`,
        });
      }
    });
    rule.when?.afterSystems?.forEach((name, j) => {
      if (!systems.has(name)) {
        violations.push({ field: `spec.rules[${i}].when.afterSystems[${j}]`, message: `system "${name}" is not declared in spec.systems; declare it or fix the name` });
      }
    });
  });

  if (policy.spec.cedar !== undefined && policy.spec.cedar.trim() !== '') {
    for (const d of validateCedar(policy.spec.cedar)) {
      violations.push({ field: 'spec.cedar', message: `line ${d.line}, column ${d.column}: ${d.message}` });
    }
  }
  return violations;
}

export function agentPolicyPlugin(): AdmissionPlugin {
  return {
    name: 'agentpolicy-well-formed',
    resources: ['agentpolicies'],
    operations: ['CREATE', 'UPDATE'],
    admit(request) {
      const policy = parseForAdmission(parseAgentPolicy, request.object);
      if (!policy || policy.metadata.deletionTimestamp) return Promise.resolve(allow());
      const violations = checkPolicy(policy);
      return Promise.resolve(violations.length > 0 ? deny('AgentPolicy', violations) : allow());
    },
  };
}
