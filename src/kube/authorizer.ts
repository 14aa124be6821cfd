import { ChainwardenError } from '../errors.js';
import type { KubeAccess } from './access.js';
import { rawRequest } from './raw.js';

/** Someone the API server authenticated: an admission request's userInfo, or a service account. */
export interface Subject {
  username?: string;
  uid?: string;
  groups?: string[];
  extra?: Record<string, string[]>;
}

export interface ResourceAttributes {
  namespace: string;
  verb: string;
  group?: string;
  resource: string;
  name?: string;
}

/**
 * Whether `subject` may do what `attributes` name, as the API server's authorizer answers a
 * SubjectAccessReview; undefined when the operator may not ask (it is not granted create on
 * subjectaccessreviews), for the caller to refuse naming that.
 */
export async function mayDo(kc: KubeAccess, subject: Subject, attributes: ResourceAttributes): Promise<boolean | undefined> {
  const res = await rawRequest(kc, 'POST', '/apis/authorization.k8s.io/v1/subjectaccessreviews', {
    apiVersion: 'authorization.k8s.io/v1',
    kind: 'SubjectAccessReview',
    spec: { user: subject.username, uid: subject.uid, groups: subject.groups, extra: subject.extra, resourceAttributes: attributes },
  });
  if (res.status === 403) return undefined;
  if (res.status >= 300) throw new ChainwardenError('api_error', `asking whether ${subject.username ?? 'the user'} may ${attributes.verb} ${attributes.resource} in ${attributes.namespace}: the API server answered ${res.status}`);
  return (res.body as { status?: { allowed?: boolean } }).status?.allowed === true;
}

/** What creates pods in a namespace: a pod itself, or a workload whose controller makes them. */
const POD_MAKERS = [
  { group: '', resource: 'pods' },
  { group: 'apps', resource: 'deployments' },
  { group: 'apps', resource: 'replicasets' },
  { group: 'apps', resource: 'statefulsets' },
  { group: 'apps', resource: 'daemonsets' },
  { group: 'batch', resource: 'jobs' },
  { group: 'batch', resource: 'cronjobs' },
  { group: '', resource: 'replicationcontrollers' },
] as const;

/**
 * What of the pod makers `subject` may create in `namespace` (empty: nothing), or undefined when
 * the operator may not ask. Whoever may create a pod in a namespace may run it as any of the
 * namespace's service accounts: RBAC does not check the one a pod names.
 */
export async function podsMadeBy(kc: KubeAccess, subject: Subject, namespace: string): Promise<string[] | undefined> {
  const answers = await Promise.all(POD_MAKERS.map((m) => mayDo(kc, subject, { namespace, verb: 'create', group: m.group, resource: m.resource })));
  if (answers.includes(undefined)) return undefined;
  return POD_MAKERS.filter((_, i) => answers[i]).map((m) => m.resource);
}

/** A service account as the API server authenticates it: its username and groups. */
export function serviceAccountSubject(namespace: string, name: string): Subject {
  return { username: `system:serviceaccount:${namespace}:${name}`, groups: ['system:serviceaccounts', `system:serviceaccounts:${namespace}`, 'system:authenticated'] };
}
