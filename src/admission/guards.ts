import type { KubeAccess } from '../kube/access.js';
import { rawRequest, serverSideApply } from '../kube/raw.js';
import { ChainwardenError } from '../errors.js';

/**
 * The ValidatingAdmissionPolicies that guard what only the operator may write, evaluated by the
 * API server itself (so they hold while the operator is down): AgentTask status, the revoke
 * finalizer, an approval's spent mark, and, for agent pods, the sidecar's container (exec,
 * attach) and the task label through pods/status. The Helm chart renders the same policies
 * (`templates/*-guard.yaml`, checked equal by the chart's test); an operator that registers its
 * own webhooks (`devenv`, the demo, `--webhook-url`) applies these.
 */
export interface GuardOptions {
  /** The username the operator authenticates as: the one writer. */
  writer: string;
  /** Groups whose members may write as the operator does (the on-call group). */
  allowGroups?: readonly string[];
  /** The policies' name prefix (the chart's full name). */
  prefix?: string;
}

const VAP = 'admissionregistration.k8s.io/v1';

const writes = (o: GuardOptions) => `request.userInfo.username == ${JSON.stringify(o.writer)}${(o.allowGroups ?? []).map((g) => ` || ${JSON.stringify(g)} in request.userInfo.groups`).join('')}`;

/** Each policy with its binding (Deny), as the chart renders them. */
export function guardPolicies(o: GuardOptions): Record<string, unknown>[] {
  const prefix = o.prefix ?? 'chainwarden';
  const task = { apiGroups: ['chainwarden.io'], apiVersions: ['*'] };
  const policies: [string, Record<string, unknown>][] = [
    [
      'approval-claims',
      {
        failurePolicy: 'Fail',
        matchConstraints: { resourceRules: [{ ...task, operations: ['CREATE', 'UPDATE'], resources: ['agentapprovals'] }] },
        variables: [
          { name: 'claim', expression: "has(object.metadata.annotations) && 'chainwarden.io/used-by' in object.metadata.annotations ? object.metadata.annotations['chainwarden.io/used-by'] : ''" },
          { name: 'claimBefore', expression: "oldObject != null && has(oldObject.metadata.annotations) && 'chainwarden.io/used-by' in oldObject.metadata.annotations ? oldObject.metadata.annotations['chainwarden.io/used-by'] : ''" },
        ],
        validations: [
          {
            expression: `variables.claim == variables.claimBefore || ${writes(o)}`,
            messageExpression: `'the chainwarden.io/used-by annotation marks an AgentApproval spent and is written by the chainwarden operator (${o.writer}) only; ' + request.userInfo.username + ' may not set, change or remove it'`,
            reason: 'Forbidden',
          },
        ],
      },
    ],
    [
      'sidecar-exec',
      {
        failurePolicy: 'Fail',
        matchConstraints: { resourceRules: [{ apiGroups: [''], apiVersions: ['v1'], operations: ['CONNECT'], resources: ['pods/exec', 'pods/attach'] }] },
        validations: [
          {
            expression: "!has(object.container) || object.container != 'chainwarden-agent'",
            messageExpression: `"the chainwarden-agent container of pod " + request.name + " holds the pod's chainwarden broker token and may not be entered (exec or attach); use the agent's own container, or debug a copy of the pod without the chainwarden.io/task label"`,
            reason: 'Forbidden',
          },
        ],
      },
    ],
    [
      'pod-task-label',
      {
        failurePolicy: 'Fail',
        matchConstraints: {
          resourceRules: [{ apiGroups: [''], apiVersions: ['v1'], operations: ['UPDATE'], resources: ['pods/status'] }],
          objectSelector: { matchExpressions: [{ key: 'chainwarden.io/task', operator: 'Exists' }] },
        },
        variables: [
          { name: 'before', expression: "has(oldObject.metadata.labels) && 'chainwarden.io/task' in oldObject.metadata.labels ? oldObject.metadata.labels['chainwarden.io/task'] : ''" },
          { name: 'after', expression: "has(object.metadata.labels) && 'chainwarden.io/task' in object.metadata.labels ? object.metadata.labels['chainwarden.io/task'] : ''" },
        ],
        validations: [
          {
            expression: 'variables.before == variables.after',
            messageExpression: `"the chainwarden.io/task label of pod " + request.name + " is set when the pod is created and cannot be changed, through its status or otherwise (it was '" + variables.before + "', the update makes it '" + variables.after + "'); create a new pod with the label instead"`,
            reason: 'Forbidden',
          },
        ],
      },
    ],
    [
      'status-writers',
      {
        failurePolicy: 'Fail',
        matchConstraints: { resourceRules: [{ ...task, operations: ['CREATE', 'UPDATE'], resources: ['agenttasks/status'] }] },
        validations: [{ expression: writes(o), messageExpression: `'AgentTask status is written by the chainwarden operator (${o.writer}) only; ' + request.userInfo.username + ' may not write it'`, reason: 'Forbidden' }],
      },
    ],
    [
      'task-finalizer',
      {
        failurePolicy: 'Fail',
        matchConstraints: { resourceRules: [{ ...task, operations: ['UPDATE'], resources: ['agenttasks'] }] },
        variables: [
          { name: 'held', expression: "has(oldObject.metadata.finalizers) && 'chainwarden.io/revoke' in oldObject.metadata.finalizers" },
          { name: 'kept', expression: "has(object.metadata.finalizers) && 'chainwarden.io/revoke' in object.metadata.finalizers" },
        ],
        validations: [
          {
            expression: `!variables.held || variables.kept || ${writes(o)}`,
            messageExpression: `'the chainwarden.io/revoke finalizer keeps an AgentTask until the chainwarden operator (${o.writer}) has denied its AWS sessions and sealed its audit head, and only it removes it; ' + request.userInfo.username + ' may not: delete the task, and the operator lets it go once that is done'`,
            reason: 'Forbidden',
          },
        ],
      },
    ],
  ];
  return policies.flatMap(([name, spec]) => [
    { apiVersion: VAP, kind: 'ValidatingAdmissionPolicy', metadata: { name: `${prefix}-${name}` }, spec },
    { apiVersion: VAP, kind: 'ValidatingAdmissionPolicyBinding', metadata: { name: `${prefix}-${name}` }, spec: { policyName: `${prefix}-${name}`, validationActions: ['Deny'] } },
  ]);
}

/** The username `kc` authenticates as, as the API server sees it (a SelfSubjectReview). */
export async function whoAmI(kc: KubeAccess): Promise<string> {
  const res = await rawRequest(kc, 'POST', '/apis/authentication.k8s.io/v1/selfsubjectreviews', { apiVersion: 'authentication.k8s.io/v1', kind: 'SelfSubjectReview' });
  const username = (res.body as { status?: { userInfo?: { username?: string } } } | undefined)?.status?.userInfo?.username;
  if (res.status >= 300 || !username) throw new ChainwardenError('api_error', `asking the API server who the operator is (a SelfSubjectReview): it answered ${res.status}`);
  return username;
}

/** Server-side applies the guards, `writer` being the one who may write what they guard. */
export async function applyGuards(kc: KubeAccess, options: GuardOptions): Promise<void> {
  for (const o of guardPolicies(options)) {
    const plural = o.kind === 'ValidatingAdmissionPolicy' ? 'validatingadmissionpolicies' : 'validatingadmissionpolicybindings';
    await serverSideApply(kc, `/apis/admissionregistration.k8s.io/v1/${plural}/${(o.metadata as { name: string }).name}`, o);
  }
}
