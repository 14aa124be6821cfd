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
      return allow();
    },
  };
}
