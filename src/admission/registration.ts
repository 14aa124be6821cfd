import { serverSideApply } from '../kube/raw.js';
import type { V1MutatingWebhookConfiguration, V1ValidatingWebhookConfiguration, AdmissionregistrationV1WebhookClientConfig } from '@kubernetes/client-node';
import type { KubeAccess } from '../kube/access.js';
import { GROUP, VERSION } from '../api/schema.js';
import { TASK_LABEL } from '../api/task.js';

/** Where the API server reaches the webhooks: a URL (local runs) or a Service (in cluster). */
export interface WebhookEndpoint {
  url?: string;
  service?: { namespace: string; name: string; port: number };
  caBundlePem: string;
}

export const WEBHOOK_CONFIGURATION_NAME = 'chainwarden';

function clientConfig(endpoint: WebhookEndpoint, path: string): AdmissionregistrationV1WebhookClientConfig {
  const caBundle = Buffer.from(endpoint.caBundlePem).toString('base64');
  if (endpoint.service) return { service: { ...endpoint.service, path }, caBundle };
  return { url: `${endpoint.url ?? ''}${path}`, caBundle };
}

const common = () => ({
  admissionReviewVersions: ['v1'],
  sideEffects: 'None',
  failurePolicy: 'Fail',
  matchPolicy: 'Equivalent',
  timeoutSeconds: 5,
});

/**
 * Our resources' webhooks are called for a CREATE and for an UPDATE that changes the spec, never
 * for one that changes only metadata: their plugins allow those anyway, and without the call an
 * engineer can still remove a finalizer or edit a label while the operator is down. It also
 * spares a round trip on every finalizer the controller adds or removes and every approval the
 * gateway claims. An object without a spec is left to the webhook to refuse.
 */
const SPEC_CHANGED = [
  {
    name: 'create-or-spec-changed',
    expression: "request.operation != 'UPDATE' || !has(object.spec) || !has(oldObject.spec) || object.spec != oldObject.spec",
  },
];

const HAS_TASK = (o: string) => `(has(${o}.metadata.labels) && '${TASK_LABEL}' in ${o}.metadata.labels)`;

/**
 * An agent pod's webhook is called for a CREATE, for its ephemeral containers, and for an UPDATE
 * that changes the spec or the task label: what its plugin checks. An UPDATE of other metadata
 * (the Job controller's or the garbage collector's finalizers, an annotation, another label) is
 * not sent, so it goes through while the operator is down, and an agent pod's Job still finishes.
 */
const POD_CHECKED = [
  {
    name: 'create-spec-or-task-label-changed',
    expression: [
      "request.operation != 'UPDATE'",
      "(has(request.subResource) && request.subResource != '')",
      'object.spec != oldObject.spec',
      `${HAS_TASK('object')} != ${HAS_TASK('oldObject')}`,
      `(${HAS_TASK('object')} && ${HAS_TASK('oldObject')} && object.metadata.labels['${TASK_LABEL}'] != oldObject.metadata.labels['${TASK_LABEL}'])`,
    ].join(' || '),
  },
];

/** The webhook configurations, scoped to exactly the resources and operations each plugin handles. */
export function webhookConfigurations(endpoint: WebhookEndpoint): [V1ValidatingWebhookConfiguration, V1MutatingWebhookConfiguration] {
  const labels = { 'app.kubernetes.io/part-of': 'chainwarden' };
  return [
    {
      apiVersion: 'admissionregistration.k8s.io/v1',
      kind: 'ValidatingWebhookConfiguration',
      metadata: { name: WEBHOOK_CONFIGURATION_NAME, labels },
      webhooks: [
        {
          name: 'resources.validate.chainwarden.io',
          clientConfig: clientConfig(endpoint, '/validate'),
          rules: [{ apiGroups: [GROUP], apiVersions: [VERSION], operations: ['CREATE', 'UPDATE'], resources: ['agenttasks', 'agentpolicies', 'agentapprovals'], scope: 'Namespaced' }],
          matchConditions: SPEC_CHANGED,
          ...common(),
        },
      ],
    },
    {
      apiVersion: 'admissionregistration.k8s.io/v1',
      kind: 'MutatingWebhookConfiguration',
      metadata: { name: WEBHOOK_CONFIGURATION_NAME, labels },
      webhooks: [
        {
          // CREATE only: the controller's finalizer is on a task from its first write.
          name: 'tasks.mutate.chainwarden.io',
          clientConfig: clientConfig(endpoint, '/mutate'),
          rules: [{ apiGroups: [GROUP], apiVersions: [VERSION], operations: ['CREATE'], resources: ['agenttasks'], scope: 'Namespaced' }],
          reinvocationPolicy: 'Never',
          ...common(),
        },
        {
          name: 'approvers.mutate.chainwarden.io',
          clientConfig: clientConfig(endpoint, '/mutate'),
          rules: [{ apiGroups: [GROUP], apiVersions: [VERSION], operations: ['CREATE', 'UPDATE'], resources: ['agentapprovals'], scope: 'Namespaced' }],
          matchConditions: SPEC_CHANGED,
          reinvocationPolicy: 'Never',
          ...common(),
        },
        {
          name: 'pods.mutate.chainwarden.io',
          clientConfig: clientConfig(endpoint, '/mutate'),
          // UPDATE too: the task label is immutable and ephemeral containers are refused, so a
          // pod cannot join a task, or gain a debugging container, after it was admitted.
          rules: [{ apiGroups: [''], apiVersions: ['v1'], operations: ['CREATE', 'UPDATE'], resources: ['pods', 'pods/ephemeralcontainers'], scope: 'Namespaced' }],
          // Only agent pods: everything else in the cluster never waits on chainwarden. The API
          // server evaluates objectSelector against both oldObject and newObject and calls the
          // webhook if either matches (admissionregistration/v1 MutatingWebhook.objectSelector;
          // k8s.io/apiserver .../webhook/predicates/object), so an UPDATE that adds the label
          // (new matches) or removes it (old matches) still reaches the webhook.
          objectSelector: { matchExpressions: [{ key: TASK_LABEL, operator: 'Exists' }] },
          matchConditions: POD_CHECKED,
          reinvocationPolicy: 'IfNeeded',
          ...common(),
        },
      ],
    },
  ];
}

/** Server-side applies both configurations; the API server calls the webhooks from then on. */
export async function registerWebhooks(kc: KubeAccess, endpoint: WebhookEndpoint): Promise<void> {
  const [validating, mutating] = webhookConfigurations(endpoint);
  const base = '/apis/admissionregistration.k8s.io/v1';
  await serverSideApply(kc, `${base}/validatingwebhookconfigurations/${WEBHOOK_CONFIGURATION_NAME}`, validating);
  await serverSideApply(kc, `${base}/mutatingwebhookconfigurations/${WEBHOOK_CONFIGURATION_NAME}`, mutating);
}
