import { isDeepStrictEqual } from 'node:util';
import { parseAgentApproval } from '../../api/parse.js';
import type { AgentApproval, AgentApprovalSpec, AgentPolicy, AgentTask } from '../../api/schema.js';
import { unhashedBody } from '../../api/task.js';
import type { ObjectReader } from '../../kube/readers.js';
import { allow, deny, keepsSpec, parseToJudge, type AdmissionPlugin, type AdmissionRequest } from '../review.js';

type Approver = NonNullable<AgentApprovalSpec['approver']>;

/** The approver as the API server authenticated the request; never what the body says. */
export function approverFrom(user: AdmissionRequest['userInfo']): Approver {
  const approver: Approver = { username: user.username ?? '' };
  if (user.uid) approver.uid = user.uid;
  approver.groups = [...(user.groups ?? [])];
  return approver;
}

/**
 * Mutating: on CREATE the approver is stamped from the requesting user; on UPDATE it is put
 * back to what was stamped, so a body claiming another approver is overwritten either way.
 */
export function approverStampPlugin(): AdmissionPlugin {
  return {
    name: 'agentapproval-stamp-approver',
    resources: ['agentapprovals'],
    operations: ['CREATE', 'UPDATE'],
    admit(request) {
      const body = request.object as { spec?: unknown } | undefined;
      if (typeof body?.spec !== 'object' || body.spec === null) return Promise.resolve(allow());
      const stamped =
        request.operation === 'CREATE'
          ? approverFrom(request.userInfo)
          : (request.oldObject as { spec?: { approver?: Approver } } | undefined)?.spec?.approver;
      if (!stamped) return Promise.resolve(allow());
      return Promise.resolve(allow([{ op: 'add', path: '/spec/approver', value: stamped }]));
    },
  };
}

/**
 * Mutating: binds the approval to the exact hop it names by stamping the hop's digest (tool,
 * action, resource, attributes), so it can never approve a different hop, and the rules the hop
 * waits for, so that the same call comes through on it only while no other rule holds it.
 */
export function approvalHopDigestPlugin(tasks: ObjectReader<AgentTask>): AdmissionPlugin {
  return {
    name: 'agentapproval-bind-hop',
    resources: ['agentapprovals'],
    operations: ['CREATE'],
    async admit(request) {
      const body = request.object as { spec?: { taskRef?: { name?: string }; hopId?: string } } | undefined;
      const taskName = body?.spec?.taskRef?.name;
      if (!taskName || !body?.spec?.hopId) return allow();
      const task = await tasks.get(request.namespace ?? '', taskName);
      const hop = (task?.status?.pendingHops ?? []).find((h) => h.hopId === body.spec?.hopId);
      // The rules are stamped even when the hop is not found (as none), so that on this CRD an
      // approval never reaches validation without them: absent there means an earlier CRD pruned them.
      if (!hop) return allow([{ op: 'add', path: '/spec/hopRules', value: [] }]);
      return allow([
        { op: 'add', path: '/spec/hopDigest', value: hop.digest },
        { op: 'add', path: '/spec/hopRules', value: hop.rules },
      ]);
    },
  };
}

const SERVICE_ACCOUNT = 'system:serviceaccount:';

/**
 * Whether `approver` may decide the hops of `task` under `policy`; the refusal, if not. An agent
 * never decides its own hops; a service account decides only when the policy names it; when the
 * policy names approvers, only they decide.
 */
export function approverRefusal(approver: Approver, task: AgentTask, policy: AgentPolicy | undefined): string | undefined {
  const policyName = task.spec.policyRef.name;
  if (!policy) return `AgentPolicy ${policyName} does not exist, so nobody may decide the hops of AgentTask ${task.metadata.name ?? ''}`;
  const own = `${SERVICE_ACCOUNT}${task.metadata.namespace ?? ''}:${task.spec.serviceAccountName}`;
  if (approver.username === own) return `${own} is the task's own service account: an agent never decides its own hops`;
  const approvers = policy.spec.approval?.approvers;
  const users = approvers?.users ?? [];
  const groups = approvers?.groups ?? [];
  if (approver.username.startsWith(SERVICE_ACCOUNT)) {
    return users.includes(approver.username) ? undefined : `${approver.username} is a service account, and service accounts decide hops only when AgentPolicy ${policyName} names them in spec.approval.approvers.users`;
  }
  if (!approvers || users.includes(approver.username) || (approver.groups ?? []).some((g) => groups.includes(g))) return undefined;
  return `${approver.username} is not an approver under AgentPolicy ${policyName}: spec.approval.approvers names users [${users.join(', ')}] and groups [${groups.join(', ')}]; ask one of them to decide, or add the user to the policy`;
}

/**
 * The approvals the broker honours: those whose stamped approver may decide their task's hops
 * under its policy now. Admission refuses the others; this keeps an approval that got past it
 * (or whose approver the policy has since dropped) from releasing anything. `refused` hears of
 * each one left out.
 */
export function honoredApprovals(approvals: readonly AgentApproval[], task: (name: string) => AgentTask | undefined, policy: (task: AgentTask) => AgentPolicy | undefined, refused: (approval: AgentApproval, why: string) => void): AgentApproval[] {
  return approvals.filter((approval) => {
    const decided = task(approval.spec.taskRef.name);
    if (!decided) return true;
    const why = approval.spec.approver ? approverRefusal(approval.spec.approver, decided, policy(decided)) : 'it names no approver, which admission stamps on every approval';
    if (why !== undefined) refused(approval, why);
    return why === undefined;
  });
}

export interface ApprovalLookups {
  tasks: ObjectReader<AgentTask>;
  policies: ObjectReader<AgentPolicy>;
  /** The namespace's AgentApprovals, read from the API server: one created a moment ago counts. */
  approvals(namespace: string): Promise<AgentApproval[]>;
  /** What of pods and the workloads that make them the service account may create in its namespace; undefined when the operator may not ask. */
  podsMadeBy(namespace: string, serviceAccount: string): Promise<string[] | undefined>;
}

/**
 * Why a service account of the task's own namespace may not decide its hops, if it may not: the
 * task's service account can create pods there (itself or through a workload), and a pod runs as
 * any service account of its namespace it names, so the agent would approve its own hops.
 */
async function sameNamespaceRefusal(approver: string, task: AgentTask, namespace: string, lookups: ApprovalLookups): Promise<string | undefined> {
  if (!approver.startsWith(`${SERVICE_ACCOUNT}${namespace}:`)) return undefined;
  const own = `${SERVICE_ACCOUNT}${namespace}:${task.spec.serviceAccountName}`;
  const made = await lookups.podsMadeBy(namespace, task.spec.serviceAccountName);
  if (made === undefined) {
    return `${approver} is a service account of the task's own namespace, and the operator may not ask whether the task's service account can run pods as it (grant the operator create on subjectaccessreviews, as the Helm chart does); name an approver outside namespace ${namespace}`;
  }
  if (made.length === 0) return undefined;
  return `${approver} is a service account of the task's own namespace, where the task's service account ${own} may create ${made.join(', ')} and so run a pod as ${approver}: the agent would decide its own hops. Name an approver outside namespace ${namespace}, or take that right from ${own}`;
}

/**
 * Validating: the approval names a hop that is waiting, carries the stamped approver, comes from
 * someone who may decide the task's hops, is the first for its hop, and never changes.
 */
export function approvalValidationPlugin(lookups: ApprovalLookups): AdmissionPlugin {
  return {
    name: 'agentapproval-valid',
    resources: ['agentapprovals'],
    operations: ['CREATE', 'UPDATE'],
    async admit(request) {
      if (keepsSpec(request)) return allow();
      const { object: approval, refusal: unread } = parseToJudge('AgentApproval', parseAgentApproval, request.object);
      if (unread) return unread;
      if (request.operation === 'UPDATE') {
        return deny('AgentApproval', [{ field: 'spec', message: 'an AgentApproval is immutable once created; create a new one to change a decision' }]);
      }
      const expected = approverFrom(request.userInfo);
      if (!isDeepStrictEqual(approval.spec.approver, expected)) {
        return deny('AgentApproval', [
          { field: 'spec.approver', message: `must be the requesting user (${expected.username}); it is set by admission and cannot be chosen` },
        ]);
      }
      const namespace = request.namespace ?? approval.metadata.namespace ?? '';
      const task = await lookups.tasks.get(namespace, approval.spec.taskRef.name);
      if (!task) {
        return deny('AgentApproval', [
          { field: 'spec.taskRef.name', message: `AgentTask "${approval.spec.taskRef.name}" does not exist in namespace ${namespace}; approve a hop of an existing task` },
        ]);
      }
      const refusal = approverRefusal(expected, task, await lookups.policies.get(namespace, task.spec.policyRef.name)) ?? (await sameNamespaceRefusal(expected.username, task, namespace, lookups));
      if (refusal) return deny('AgentApproval', [{ field: 'spec.approver', message: refusal }]);
      const first = (await lookups.approvals(namespace)).find((a) => a.spec.taskRef.name === approval.spec.taskRef.name && a.spec.hopId === approval.spec.hopId && a.metadata.name !== approval.metadata.name);
      if (first) {
        return deny('AgentApproval', [
          { field: 'spec.hopId', message: `hop ${approval.spec.hopId} is already decided by AgentApproval ${first.metadata.name ?? ''} (${first.spec.decision} by ${first.spec.approver?.username ?? 'unknown'}); a hop takes one decision` },
        ]);
      }
      const hop = (task.status?.pendingHops ?? []).find((h) => h.hopId === approval.spec.hopId);
      if (!hop) {
        return deny('AgentApproval', [
          { field: 'spec.hopId', message: `hop ${approval.spec.hopId} is not waiting for approval in AgentTask ${approval.spec.taskRef.name} (it may have been decided or timed out); see kubectl get at ${approval.spec.taskRef.name} -o jsonpath='{.status.pendingHops}'` },
        ]);
      }
      const unhashed = approval.spec.decision === 'Approve' ? unhashedBody(hop.attributes) : undefined;
      if (unhashed !== undefined) {
        return deny('AgentApproval', [
          { field: 'spec.decision', message: `hop ${approval.spec.hopId} sends its body unhashed (x-amz-content-sha256 ${unhashed}), so an approval could not bind what it releases and none will: Reject it, and have the agent send the call with its body's SHA-256 signed` },
        ]);
      }
      if (approval.spec.hopDigest !== hop.digest) {
        return deny('AgentApproval', [{ field: 'spec.hopDigest', message: 'is set by admission from the pending hop and cannot be chosen' }]);
      }
      // Absent only where an AgentApproval CRD from before the field prunes it (the stamp was made):
      // the approval then lifts what holds its call, as approvals did. Present, it is the hop's.
      if (approval.spec.hopRules !== undefined && !isDeepStrictEqual(approval.spec.hopRules, hop.rules)) {
        return deny('AgentApproval', [
          { field: 'spec.hopRules', message: `is set by admission from the rules the pending hop waits for (${hop.rules.join(', ')}) and cannot be chosen; create the approval again without it` },
        ]);
      }
      return allow();
    },
  };
}
