import { isDeepStrictEqual } from 'node:util';
import { parseAgentApproval } from '../../api/parse.js';
import type { AgentApprovalSpec, AgentTask } from '../../api/schema.js';
import type { ObjectReader } from '../../kube/readers.js';
import { allow, deny, parseForAdmission, type AdmissionPlugin, type AdmissionRequest } from '../review.js';

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
 * action, resource, attributes), so it can never approve a different hop.
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
      return hop ? allow([{ op: 'add', path: '/spec/hopDigest', value: hop.digest }]) : allow();
    },
  };
}

/** Validating: the approval names an existing task, carries the stamped approver, and never changes. */
export function approvalValidationPlugin(tasks: ObjectReader<AgentTask>): AdmissionPlugin {
  return {
    name: 'agentapproval-valid',
    resources: ['agentapprovals'],
    operations: ['CREATE', 'UPDATE'],
    async admit(request) {
      const approval = parseForAdmission(parseAgentApproval, request.object);
      if (!approval) return allow();
      if (request.operation === 'UPDATE') {
        const old = request.oldObject as { spec?: unknown } | undefined;
        if (!isDeepStrictEqual(old?.spec, approval.spec)) {
          return deny('AgentApproval', [{ field: 'spec', message: 'an AgentApproval is immutable once created; create a new one to change a decision' }]);
        }
        return allow();
      }
      const expected = approverFrom(request.userInfo);
      if (!isDeepStrictEqual(approval.spec.approver, expected)) {
        return deny('AgentApproval', [
          { field: 'spec.approver', message: `must be the requesting user (${expected.username}); it is set by admission and cannot be chosen` },
        ]);
      }
      const namespace = request.namespace ?? approval.metadata.namespace ?? '';
      const task = await tasks.get(namespace, approval.spec.taskRef.name);
      if (!task) {
        return deny('AgentApproval', [
          { field: 'spec.taskRef.name', message: `AgentTask "${approval.spec.taskRef.name}" does not exist in namespace ${namespace}; approve a hop of an existing task` },
        ]);
      }
      const hop = (task.status?.pendingHops ?? []).find((h) => h.hopId === approval.spec.hopId);
      if (!hop) {
        return deny('AgentApproval', [
          { field: 'spec.hopId', message: `hop ${approval.spec.hopId} is not waiting for approval in AgentTask ${approval.spec.taskRef.name} (it may have been decided or timed out); see kubectl get at ${approval.spec.taskRef.name} -o jsonpath='{.status.pendingHops}'` },
        ]);
      }
      if (approval.spec.hopDigest !== hop.digest) {
        return deny('AgentApproval', [{ field: 'spec.hopDigest', message: 'is set by admission from the pending hop and cannot be chosen' }]);
      }
      return allow();
    },
  };
}
