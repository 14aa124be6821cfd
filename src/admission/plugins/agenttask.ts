import { parseDuration } from '../../api/duration.js';
import { parseAgentTask, type FieldViolation } from '../../api/parse.js';
import type { AgentPolicy, AgentTask } from '../../api/schema.js';
import { FINALIZER, POLICY_DEFAULTS } from '../../api/task.js';
import { PermittedRoles } from '../../credentials/permitted.js';
import type { ObjectReader } from '../../kube/readers.js';
import { globMatches } from '../../policy/glob.js';
import { allow, deny, keepsSpec, parseToJudge, type AdmissionPlugin } from '../review.js';


/** Problems with an inline session policy that CEL cannot see: it must be an IAM policy document. */
export function checkSessionPolicy(text: string, field: string): FieldViolation[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    return [{ field, message: `is not valid JSON (${(err as Error).message}); write an IAM policy document such as {"Version":"2012-10-17","Statement":[...]}` }];
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    return [{ field, message: 'must be a JSON object: an IAM policy document with a Statement' }];
  }
  const statement = (doc as { Statement?: unknown }).Statement;
  if (statement === undefined || (typeof statement !== 'object' && !Array.isArray(statement))) {
    return [{ field, message: 'has no Statement; an IAM policy document needs "Statement": [...]' }];
  }
  return [];
}

/** a > b for two duration strings; false when either does not parse (the schema reports that). */
function longer(a: string, b: string): boolean {
  try {
    return parseDuration(a) > parseDuration(b);
  } catch {
    return false;
  }
}

/**
 * Everything that keeps a task inside its policy, each violation with its field path. Pure,
 * so the same check serves admission and the controller (which re-checks when a policy changes).
 */
export function checkTaskAgainstPolicy(task: AgentTask, policy: AgentPolicy): FieldViolation[] {
  const violations: FieldViolation[] = [];
  const p = policy.spec;
  const policyName = policy.metadata.name ?? task.spec.policyRef.name;

  const maxTtl = p.maxTaskTTL ?? POLICY_DEFAULTS.maxTaskTTL;
  if (longer(task.spec.ttl, maxTtl)) {
    violations.push({ field: 'spec.ttl', message: `${task.spec.ttl} is longer than AgentPolicy ${policyName}'s maxTaskTTL of ${maxTtl}; ask for ${maxTtl} or less` });
  }

  const limits = { maxHops: p.limits?.maxHops ?? POLICY_DEFAULTS.maxHops, maxDepth: p.limits?.maxDepth ?? POLICY_DEFAULTS.maxDepth };
  for (const key of ['maxHops', 'maxDepth'] as const) {
    const asked = task.spec.limits?.[key];
    if (asked !== undefined && asked > limits[key]) {
      violations.push({ field: `spec.limits.${key}`, message: `${asked} is above AgentPolicy ${policyName}'s ${key} of ${limits[key]}; ask for ${limits[key]} or less` });
    }
  }

  const allowed = p.aws?.allowedRoleArns ?? [];
  const maxDuration = p.aws?.maxDuration ?? POLICY_DEFAULTS.maxDuration;
  (task.spec.credentials ?? []).forEach((cred, i) => {
    const at = `spec.credentials[${i}].aws`;
    if (!allowed.some((glob) => globMatches(glob, cred.aws.roleArn))) {
      violations.push({
        field: `${at}.roleArn`,
        message:
          allowed.length === 0
            ? `AgentPolicy ${policyName} allows no AWS roles; add ${cred.aws.roleArn} (or a glob) to its spec.aws.allowedRoleArns`
            : `${cred.aws.roleArn} is not allowed by AgentPolicy ${policyName} (allowed: ${allowed.join(', ')})`,
      });
    }
    if (cred.aws.duration && longer(cred.aws.duration, maxDuration)) {
      violations.push({ field: `${at}.duration`, message: `${cred.aws.duration} is longer than AgentPolicy ${policyName}'s aws.maxDuration of ${maxDuration}` });
    }
    if (cred.aws.sessionPolicy !== undefined) violations.push(...checkSessionPolicy(cred.aws.sessionPolicy, `${at}.sessionPolicy`));
    if (cred.aws.delivery === 'Direct' && policy.spec.aws?.allowDirect !== true) {
      violations.push({
        field: `${at}.delivery`,
        message: `Direct hands the agent the STS session itself, and AgentPolicy ${policyName} does not set spec.aws.allowDirect: true; use delivery: Gateway (the default), or set spec.aws.allowDirect: true in the policy`,
      });
    }
  });
  return violations;
}


/** AgentTask must name an existing AgentPolicy in its namespace and stay inside it. */
export function agentTaskPlugin(policies: ObjectReader<AgentPolicy>, permitted = new PermittedRoles()): AdmissionPlugin {
  return {
    name: 'agenttask-within-policy',
    resources: ['agenttasks'],
    operations: ['CREATE', 'UPDATE'],
    async admit(request) {
      // Finalizer and label edits must go through even if the policy has tightened since.
      if (keepsSpec(request)) return allow();
      const { object: task, refusal } = parseToJudge('AgentTask', parseAgentTask, request.object);
      if (refusal) return refusal;
      // Being deleted, it is still in force (a finalizer holds it): a spec changed now would go unchecked by anything.
      if (task.metadata.deletionTimestamp) {
        return deny('AgentTask', [{ field: 'spec', message: `AgentTask ${task.metadata.name ?? ''} is being deleted and keeps its spec until it is gone; wait for it to go (or remove its finalizers), then create it again with the new spec` }]);
      }
      const namespace = request.namespace ?? task.metadata.namespace ?? '';
      const policy = await policies.get(namespace, task.spec.policyRef.name);
      if (!policy) {
        return deny('AgentTask', [
          {
            field: 'spec.policyRef.name',
            message: `AgentPolicy "${task.spec.policyRef.name}" does not exist in namespace ${namespace}; create it first or name an existing one`,
          },
        ]);
      }
      const violations = checkTaskAgainstPolicy(task, policy);
      (task.spec.credentials ?? []).forEach((cred, i) => {
        if (!permitted.permits(namespace, cred.aws.roleArn)) violations.push({ field: `spec.credentials[${i}].aws.roleArn`, message: permitted.refusal(namespace, cred.aws.roleArn) });
      });
      return violations.length > 0 ? deny('AgentTask', violations) : allow();
    },
  };
}

/**
 * Mutating: a new task carries the controller's finalizer from its first write, so the
 * controller's first reconcile converges it instead of patching the finalizer in and waiting for
 * the watch to bring the task back (one API write and one round trip fewer per task). A task
 * deleted before the controller ever saw it still goes through the controller's cleanup. The
 * controller keeps adding the finalizer to tasks without it (one that lost it, or one created
 * before this webhook).
 */
export function taskFinalizerPlugin(): AdmissionPlugin {
  return {
    name: 'agenttask-finalizer',
    resources: ['agenttasks'],
    operations: ['CREATE'],
    admit(request) {
      const metadata = (request.object as { metadata?: { finalizers?: unknown } } | undefined)?.metadata;
      if (typeof metadata !== 'object' || metadata === null) return Promise.resolve(allow());
      const finalizers = metadata.finalizers;
      if (finalizers === undefined) return Promise.resolve(allow([{ op: 'add', path: '/metadata/finalizers', value: [FINALIZER] }]));
      // Anything else is the API server's to refuse; only a well-formed list is added to.
      if (!Array.isArray(finalizers) || finalizers.includes(FINALIZER)) return Promise.resolve(allow());
      return Promise.resolve(allow([{ op: 'add', path: '/metadata/finalizers/-', value: FINALIZER }]));
    },
  };
}
