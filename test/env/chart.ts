import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { parseAllDocuments } from 'yaml';
import { ensureHelm } from '../../src/controlplane/assets.js';
import { KUBERNETES_VERSION } from '../../src/controlplane/versions.js';
import { serverSideApply } from '../../src/kube/raw.js';

export const CHART = path.resolve(import.meta.dirname, '../../charts/chainwarden');
export const RELEASE_NAMESPACE = 'chainwarden-system';

export interface Rendered {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
  [key: string]: unknown;
}

export async function helm(args: string[]): Promise<string> {
  const { stdout } = await promisify(execFile)(await ensureHelm(), args, { maxBuffer: 16 * 1024 * 1024 });
  return stdout;
}

/** `helm template` of the chart, as objects. */
export async function renderChart(set: Record<string, string> = {}): Promise<Rendered[]> {
  const args = ['template', 'chainwarden', CHART, '--namespace', RELEASE_NAMESPACE, '--kube-version', KUBERNETES_VERSION];
  for (const [k, v] of Object.entries(set)) args.push('--set', `${k}=${v}`);
  return parseAllDocuments(await helm(args))
    .map((d) => d.toJS() as Rendered | null)
    .filter((o): o is Rendered => o !== null);
}

const PLURAL: Record<string, string> = {
  ServiceAccount: 'serviceaccounts',
  ClusterRole: 'clusterroles',
  ClusterRoleBinding: 'clusterrolebindings',
  Role: 'roles',
  RoleBinding: 'rolebindings',
  ValidatingAdmissionPolicy: 'validatingadmissionpolicies',
  ValidatingAdmissionPolicyBinding: 'validatingadmissionpolicybindings',
};

/** The REST path of a rendered object, for the kinds the chart renders. */
export function objectPath(o: Rendered, plural: string): string {
  const [group, version] = o.apiVersion.includes('/') ? o.apiVersion.split('/') : ['', o.apiVersion];
  const base = group ? `/apis/${group}/${version}` : `/api/${version}`;
  return `${base}${o.metadata.namespace ? `/namespaces/${o.metadata.namespace}` : ''}/${plural}/${o.metadata.name}`;
}

/**
 * Applies the chart's ServiceAccount, RBAC and status guard, exactly as rendered. Tests that run
 * an operator of their own run it as the admin, so the admin's group may also write status.
 */
export async function applyChartRbac(admin: KubeConfig): Promise<Rendered[]> {
  // Tests make a namespace each, so the MCP gateway is granted get on Secrets everywhere ("*").
  const objects = (await renderChart({ 'statusGuard.allowGroups': '{system:masters}', 'mcpGateway.secretNamespaces': '{*}' })).filter((o) => PLURAL[o.kind]);
  for (const o of objects) await serverSideApply(admin, objectPath(o, PLURAL[o.kind] ?? ''), o, 'chainwarden-test');
  return objects;
}

/** A kubeconfig that authenticates as the chart's service account with a real token. */
export async function chartServiceAccountKubeConfig(admin: KubeConfig, name = 'chainwarden'): Promise<KubeConfig> {
  const token = await admin.makeApiClient(CoreV1Api).createNamespacedServiceAccountToken({ name, namespace: RELEASE_NAMESPACE, body: { spec: { audiences: [], expirationSeconds: 24 * 3600 } } });
  const cluster = admin.getCurrentCluster();
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: 'local', server: cluster?.server ?? '', caData: cluster?.caData }],
    users: [{ name, token: token.status?.token }],
    contexts: [{ name, cluster: 'local', user: name }],
    currentContext: name,
  });
  return kc;
}
