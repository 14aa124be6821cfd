import { KubernetesObjectApi, RbacAuthorizationV1Api, type KubeConfig, type KubernetesObject } from '@kubernetes/client-node';
import { kubeErrorMessage } from '../../src/kube/errors.js';

export const objectsApi = (kc: KubeConfig) => KubernetesObjectApi.makeApiClient(kc);

// Our API types carry timestamps as the strings the API server sends; client-node's generic
// KubernetesObject types them as Date. The objects are the same JSON either way.
const asObject = (obj: object) => obj as KubernetesObject;

export async function create<T extends object>(kc: KubeConfig, obj: T): Promise<T> {
  return (await objectsApi(kc).create(asObject(obj))) as unknown as T;
}

/** Creates `obj` and returns the API server's refusal message, or throws if it was accepted. */
export async function rejection(kc: KubeConfig, obj: object, op: 'create' | 'replace' = 'create'): Promise<string> {
  const o = asObject(obj);
  try {
    if (op === 'create') await objectsApi(kc).create(o);
    else await objectsApi(kc).replace(o);
  } catch (err) {
    return kubeErrorMessage(err);
  }
  throw new Error(`${o.kind} ${o.metadata?.name ?? ''} was accepted, but should have been rejected`);
}

export async function read<T extends object>(kc: KubeConfig, obj: T): Promise<T> {
  return (await objectsApi(kc).read(asObject(obj) as KubernetesObject & { metadata: { name: string; namespace: string } })) as unknown as T;
}

/** Lets `users` do `verbs` on `resources` of the chainwarden API group in one namespace. */
export async function grant(admin: KubeConfig, namespace: string, users: string[], resources: string[], verbs: string[], apiGroup = 'chainwarden.io'): Promise<void> {
  const rbac = admin.makeApiClient(RbacAuthorizationV1Api);
  const name = `grant-${resources.join('-').replaceAll('/', '.')}`;
  await rbac.createNamespacedRole({ namespace, body: { metadata: { name }, rules: [{ apiGroups: [apiGroup], resources, verbs }] } });
  await rbac.createNamespacedRoleBinding({
    namespace,
    body: {
      metadata: { name },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name },
      subjects: users.map((u) => ({ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: u })),
    },
  });
}
