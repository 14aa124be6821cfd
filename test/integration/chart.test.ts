import { CoreV1Api, CustomObjectsApi, type KubeConfig } from '@kubernetes/client-node';
import { guardPolicies } from '../../src/admission/guards.js';
import { webhookConfigurations } from '../../src/admission/registration.js';
import { rawRequest } from '../../src/kube/raw.js';
import { applyChartRbac, chartServiceAccountKubeConfig, CHART, helm, objectPath, renderChart, RELEASE_NAMESPACE, type Rendered } from './../env/chart.js';
import { describe, expect, test } from '../env/fixtures.js';
import { examplePolicy, exampleTask } from '../builders/examples.js';
import { create } from '../env/kube.js';

const PLURALS: Record<string, string> = {
  ServiceAccount: 'serviceaccounts',
  ClusterRole: 'clusterroles',
  ClusterRoleBinding: 'clusterrolebindings',
  Role: 'roles',
  RoleBinding: 'rolebindings',
  Deployment: 'deployments',
  Service: 'services',
  Secret: 'secrets',
  ConfigMap: 'configmaps',
  PodDisruptionBudget: 'poddisruptionbudgets',
  NetworkPolicy: 'networkpolicies',
  ValidatingWebhookConfiguration: 'validatingwebhookconfigurations',
  MutatingWebhookConfiguration: 'mutatingwebhookconfigurations',
  ValidatingAdmissionPolicy: 'validatingadmissionpolicies',
  ValidatingAdmissionPolicyBinding: 'validatingadmissionpolicybindings',
};

async function dryRunApply(admin: KubeConfig, objects: Rendered[]): Promise<{ kind: string; status: number; message?: string }[]> {
  const results = [];
  for (const o of objects) {
    const plural = PLURALS[o.kind];
    if (!plural) throw new Error(`no REST mapping for ${o.kind} in this test`);
    // The webhook configurations are renamed so the dry run cannot collide with the ones in use.
    const obj = o.kind.endsWith('WebhookConfiguration') || o.kind.startsWith('ValidatingAdmissionPolicy') ? { ...o, metadata: { ...o.metadata, name: `${o.metadata.name}-dryrun` } } : o;
    const res = await rawRequest(admin, 'PATCH', `${objectPath(obj, plural)}?fieldManager=helm-dryrun&dryRun=All&force=true`, obj, 'application/apply-patch+yaml');
    results.push({ kind: o.kind, status: res.status, message: (res.body as { message?: string }).message });
  }
  return results;
}

describe('Helm chart', () => {
  test('passes helm lint', async () => {
    const out = await helm(['lint', CHART, '--kube-version', '1.35.4']);
    expect(out).toMatch(/1 chart\(s\) linted, 0 chart\(s\) failed/);
  });

  test('renders objects the real API server accepts (server-side dry run), also with a NetworkPolicy', async ({ admin }) => {
    const variants: Record<string, string>[] = [{}, { 'networkPolicy.enabled': 'true', replicaCount: '3', 'networkPolicy.webhookFrom[0].ipBlock.cidr': '10.0.0.0/24' }];
    for (const set of variants) {
      const objects = await renderChart(set);
      const results = await dryRunApply(admin, objects);
      expect(results.filter((r) => r.status >= 300)).toEqual([]);
      expect(results.map((r) => r.kind)).toEqual(expect.arrayContaining(['Deployment', 'PodDisruptionBudget', 'ValidatingWebhookConfiguration', 'MutatingWebhookConfiguration']));
    }
  });

  test('refuses wrong values at install with the path of the value', async () => {
    await expect(renderChart({ replicaCount: '0' })).rejects.toThrow(/\/replicaCount.*minimum/);
    await expect(renderChart({ trustDomain: 'Not_A_Domain!' })).rejects.toThrow(/\/trustDomain.*does not match pattern/);
    await expect(renderChart({ replicas: '3' })).rejects.toThrow(/additional properties 'replicas' not allowed/);
    await expect(renderChart({ 'aws.region': 'moon' })).rejects.toThrow(/\/aws\/region/);
  });

  test('tracing and the Grafana dashboard: off by default; on, the operator gets the OTLP endpoint and the header Secret, and Grafana a dashboard of valid JSON', async ({ admin }) => {
    const plain = await renderChart({});
    const container = (objects: Rendered[]) => (objects.find((o) => o.kind === 'Deployment') as unknown as { spec: { template: { spec: { containers: { env: { name: string; value?: string; valueFrom?: unknown }[] }[] } } } }).spec.template.spec.containers[0];
    expect(container(plain)?.env.map((e) => e.name)).not.toContain('OTEL_EXPORTER_OTLP_TRACES_ENDPOINT');
    expect(plain.map((o) => o.kind)).not.toContain('ConfigMap');

    const on = await renderChart({ 'tracing.enabled': 'true', 'tracing.endpoint': 'http://otel-collector.observability:4318/v1/traces', 'tracing.headersSecretRef.name': 'otlp', 'tracing.headersSecretRef.key': 'headers', 'grafanaDashboard.enabled': 'true' });
    expect(container(on)?.env).toEqual(
      expect.arrayContaining([
        { name: 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', value: 'http://otel-collector.observability:4318/v1/traces' },
        { name: 'OTEL_SERVICE_NAME', value: 'chainwarden' },
        { name: 'OTEL_EXPORTER_OTLP_TRACES_HEADERS', valueFrom: { secretKeyRef: { name: 'otlp', key: 'headers' } } },
      ]),
    );
    const dashboard = on.find((o) => o.kind === 'ConfigMap') as unknown as { metadata: { labels: Record<string, string> }; data: Record<string, string> };
    expect(dashboard.metadata.labels.grafana_dashboard).toBe('1');
    expect(JSON.parse(dashboard.data['chainwarden.json'] ?? '')).toMatchObject({ uid: 'chainwarden', panels: expect.arrayContaining([expect.objectContaining({ type: 'timeseries' })]) as unknown });
    const results = await dryRunApply(admin, on);
    expect(results.filter((r) => r.status >= 300)).toEqual([]);

    await expect(renderChart({ 'tracing.enabled': 'true' })).rejects.toThrow(/tracing.endpoint: set the OTLP\/HTTP traces URL/);
    await expect(renderChart({ 'tracing.endpoint': 'otel-collector:4318' })).rejects.toThrow(/\/tracing\/endpoint.*does not match pattern/);
  });

  test('runs 2 replicas, non-root with a read-only root filesystem and no capabilities, behind a PodDisruptionBudget', async () => {
    const objects = await renderChart();
    const deployment = objects.find((o) => o.kind === 'Deployment') as unknown as { spec: { replicas: number; template: { spec: { securityContext: object; containers: { securityContext: object; readinessProbe: object; resources: object }[] } } } };
    expect(deployment.spec.replicas).toBe(2);
    expect(deployment.spec.template.spec.securityContext).toMatchObject({ runAsNonRoot: true });
    expect(deployment.spec.template.spec.containers[0]?.securityContext).toEqual({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, runAsNonRoot: true, capabilities: { drop: ['ALL'] } });
    expect(deployment.spec.template.spec.containers[0]?.readinessProbe).toMatchObject({ httpGet: { path: '/readyz', scheme: 'HTTPS' } });
    expect(deployment.spec.template.spec.containers[0]?.resources).toMatchObject({ requests: { cpu: '100m', memory: '128Mi' } });
    expect(objects.find((o) => o.kind === 'PodDisruptionBudget')).toMatchObject({ spec: { minAvailable: 1 } });
  });

  test('names each replica in the Lease by its pod, so a restarted container takes its own lease back rather than waiting it out', async () => {
    const deployment = (await renderChart()).find((o) => o.kind === 'Deployment') as unknown as { spec: { template: { spec: { containers: { env: { name: string; valueFrom?: object }[] }[] } } } };
    expect(deployment.spec.template.spec.containers[0]?.env).toContainEqual({ name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } });
  });

  test('its webhook configurations match the ones the operator registers (same rules, selectors, failure policy)', async () => {
    const objects = await renderChart();
    const [validating, mutating] = webhookConfigurations({ service: { namespace: RELEASE_NAMESPACE, name: 'chainwarden', port: 9443 }, caBundlePem: 'x' });
    const strip = (hooks: unknown) => (hooks as { clientConfig: { caBundle?: string } }[]).map(({ clientConfig, ...rest }) => ({ ...rest, clientConfig: { ...clientConfig, caBundle: undefined } }));
    expect(strip(objects.find((o) => o.kind === 'ValidatingWebhookConfiguration')?.webhooks)).toEqual(strip(validating.webhooks));
    expect(strip(objects.find((o) => o.kind === 'MutatingWebhookConfiguration')?.webhooks)).toEqual(strip(mutating.webhooks));
  });

  test("its admission guards are the ones an operator that registers its own webhooks applies (devenv, the demo)", async () => {
    const writer = `system:serviceaccount:${RELEASE_NAMESPACE}:chainwarden`;
    for (const allowGroups of [[], ['oncall', 'platform-leads']]) {
      const objects = await renderChart(allowGroups.length > 0 ? { 'statusGuard.allowGroups': `{${allowGroups.join(',')}}` } : {});
      const rendered = objects.filter((o) => o.kind.startsWith('ValidatingAdmissionPolicy')).map((o) => ({ kind: o.kind, name: o.metadata.name, spec: o.spec }));
      const applied = guardPolicies({ writer, allowGroups }).map((o) => ({ kind: String(o.kind), name: (o.metadata as { name: string }).name, spec: o.spec }));
      const byName = (a: { kind: string; name: string }, b: { kind: string; name: string }) => `${a.kind}/${a.name}`.localeCompare(`${b.kind}/${b.name}`);
      expect(applied.sort(byName)).toEqual(rendered.sort(byName));
    }
  });

  test('serves the webhooks on a port of their own: container port, --webhook-listen, Service and clientConfig agree', async () => {
    const objects = await renderChart({ 'webhook.port': '9555', 'networkPolicy.enabled': 'true', 'networkPolicy.webhookFrom[0].ipBlock.cidr': '10.0.0.0/24' });
    const container = (objects.find((o) => o.kind === 'Deployment') as unknown as { spec: { template: { spec: { containers: { args: string[]; ports: { name: string; containerPort: number }[] }[] } } } }).spec.template.spec.containers[0];
    expect(container?.args).toEqual(expect.arrayContaining(['--listen=0.0.0.0:8443', '--webhook-listen=0.0.0.0:9555']));
    expect(container?.ports).toEqual([expect.objectContaining({ name: 'https', containerPort: 8443 }), expect.objectContaining({ name: 'webhook', containerPort: 9555 })]);
    const service = objects.find((o) => o.kind === 'Service') as unknown as { spec: { ports: { name: string; port: number; targetPort: string }[] } };
    expect(service.spec.ports).toEqual([expect.objectContaining({ name: 'https', port: 443, targetPort: 'https' }), expect.objectContaining({ name: 'webhook', port: 9555, targetPort: 'webhook' })]);
    const hooks = objects.filter((o) => o.kind.endsWith('WebhookConfiguration')).flatMap((o) => o.webhooks as { clientConfig: { service: { port: number } } }[]);
    expect(hooks.map((h) => h.clientConfig.service.port)).toEqual([9555, 9555, 9555, 9555]);
    const policy = objects.find((o) => o.kind === 'NetworkPolicy') as unknown as { spec: { ingress: { ports: { port: number }[]; from?: unknown[] }[] } };
    expect(policy.spec.ingress).toEqual([{ ports: [{ port: 8443, protocol: 'TCP' }] }, { ports: [{ port: 9555, protocol: 'TCP' }], from: [{ ipBlock: { cidr: '10.0.0.0/24' } }] }]);
    await expect(renderChart({ 'webhook.port': '8443' })).rejects.toThrow(/\/webhook\/port/);
  });

  test('passes the journal\'s write rate to the operator, and refuses one that is not a positive number', async () => {
    const args = async (values: Record<string, string> = {}) =>
      ((await renderChart(values)).find((o) => o.kind === 'Deployment') as unknown as { spec: { template: { spec: { containers: { args: string[] }[] } } } }).spec.template.spec.containers[0]?.args;
    expect(await args()).toContain('--journal-writes-per-second=20');
    expect(await args({ journalWritesPerSecond: '5' })).toContain('--journal-writes-per-second=5');
    await expect(renderChart({ journalWritesPerSecond: '0' })).rejects.toThrow(/journalWritesPerSecond/);
  });

  test('passes the roles each namespace may name to the operator, one flag a glob, and refuses a glob that is not over role ARNs', async () => {
    const args = async (values: Record<string, string> = {}) =>
      ((await renderChart(values)).find((o) => o.kind === 'Deployment') as unknown as { spec: { template: { spec: { containers: { args: string[] }[] } } } }).spec.template.spec.containers[0]?.args ?? [];
    expect((await args()).filter((a) => a.startsWith('--permitted-role-arn'))).toEqual([]);
    const globs = { 'aws.permittedRoleArns[0]': 'arn:aws:iam::111122223333:role/{namespace}-*', 'aws.permittedRoleArns[1]': 'arn:aws:iam::111122223333:role/shared-reader' };
    expect((await args(globs)).filter((a) => a.startsWith('--permitted-role-arn'))).toEqual(['--permitted-role-arn=arn:aws:iam::111122223333:role/{namespace}-*', '--permitted-role-arn=arn:aws:iam::111122223333:role/shared-reader']);
    await expect(renderChart({ 'aws.permittedRoleArns[0]': 'team-a-*' })).rejects.toThrow(/permittedRoleArns/);
  });

  test('reads tenants\' Secrets only where it is told: none by default, named namespaces, or "*"', async () => {
    const secretRules = (objects: Rendered[]) =>
      objects.flatMap((o) => ((o as { rules?: { resources?: string[]; verbs?: string[]; resourceNames?: string[] }[] }).rules ?? []).filter((r) => r.resources?.includes('secrets') && r.verbs?.includes('get') && !r.resourceNames).map(() => `${o.kind}/${o.metadata?.namespace ?? '-'}`));
    expect(secretRules(await renderChart())).toEqual([]);
    expect(secretRules(await renderChart({ 'mcpGateway.secretNamespaces': '{support,billing}' })).sort()).toEqual(['Role/billing', 'Role/support']);
    expect(secretRules(await renderChart({ 'mcpGateway.secretNamespaces': '{*}' }))).toEqual(['ClusterRole/-']);
    expect(secretRules(await renderChart({ 'mcpGateway.enabled': 'false', 'mcpGateway.secretNamespaces': '{*}' }))).toEqual([]);
    await expect(renderChart({ 'mcpGateway.secretNamespaces': '{Not_A_Namespace}' })).rejects.toThrow(/secretNamespaces/);
  });

  test('with cert-manager, a CA of the release\'s own that lasts issues the serving certificate, so a renewal changes nothing sidecars or the API server trust', async () => {
    const objects = await renderChart({ 'certManager.enabled': 'true' });
    const named = (kind: string, name: string) => objects.find((o) => o.kind === kind && o.metadata?.name === name) as unknown as { spec: Record<string, unknown> } | undefined;
    expect(named('Issuer', 'chainwarden-selfsigned')?.spec).toEqual({ selfSigned: {} });
    expect(named('Certificate', 'chainwarden-ca')?.spec).toMatchObject({ isCA: true, secretName: 'chainwarden-ca', duration: '87600h', issuerRef: { name: 'chainwarden-selfsigned', kind: 'Issuer' } });
    expect(named('Issuer', 'chainwarden-ca')?.spec).toEqual({ ca: { secretName: 'chainwarden-ca' } });
    // The serving certificate comes from the CA, not from the self-signed issuer: its ca.crt is the CA.
    expect(named('Certificate', 'chainwarden')?.spec).toMatchObject({ secretName: 'chainwarden-tls', issuerRef: { name: 'chainwarden-ca', kind: 'Issuer' } });
    for (const kind of ['ValidatingWebhookConfiguration', 'MutatingWebhookConfiguration']) {
      expect(objects.find((o) => o.kind === kind)?.metadata).toMatchObject({ annotations: { 'cert-manager.io/inject-ca-from': `${RELEASE_NAMESPACE}/chainwarden` } });
    }
    // An issuer of the cluster's is used as named, and a kind without a name is refused rather than quietly replaced.
    const own = await renderChart({ 'certManager.enabled': 'true', 'certManager.issuerRef.name': 'internal-ca', 'certManager.issuerRef.kind': 'ClusterIssuer' });
    expect(own.filter((o) => o.kind === 'Issuer')).toEqual([]);
    expect((own.find((o) => o.kind === 'Certificate') as unknown as { spec: { issuerRef: object } }).spec.issuerRef).toEqual({ name: 'internal-ca', kind: 'ClusterIssuer' });
    await expect(renderChart({ 'certManager.enabled': 'true', 'certManager.issuerRef.kind': 'ClusterIssuer' })).rejects.toThrow(/\/certManager\/issuerRef.*'name' required/);
  });

  test('refuses values that would let every tenant write what only the operator writes, or that could not install', async () => {
    for (const group of ['system:authenticated', 'system:unauthenticated', 'system:serviceaccounts', 'system:serviceaccounts:team-a']) {
      await expect(renderChart({ 'statusGuard.allowGroups[0]': group }), group).rejects.toThrow(`statusGuard.allowGroups: ${group} is a group every tenant`);
    }
    const guards = (await renderChart({ 'statusGuard.allowGroups[0]': 'oncall' })).filter((o) => o.kind === 'ValidatingAdmissionPolicy');
    expect(JSON.stringify(guards)).toContain('\\"oncall\\" in request.userInfo.groups');
    await expect(renderChart({ 'tracing.headersSecretRef.name': 'otlp' })).rejects.toThrow(/\/tracing\/headersSecretRef.*'key' required/);
    await expect(renderChart({ 'mcpGateway.secretNamespaces': '{support,support}' })).rejects.toThrow(/\/mcpGateway\/secretNamespaces.*equal/);
  });

  test('a single replica gets no disruption budget that would stop every node drain; liveness asks the port agents cannot crowd', async () => {
    expect((await renderChart({ replicaCount: '1' })).map((o) => o.kind)).not.toContain('PodDisruptionBudget');
    expect((await renderChart({ replicaCount: '1', 'podDisruptionBudget.minAvailable': '100%' })).map((o) => o.kind)).not.toContain('PodDisruptionBudget');
    expect((await renderChart({ replicaCount: '2', 'podDisruptionBudget.minAvailable': '2' })).map((o) => o.kind)).not.toContain('PodDisruptionBudget');
    expect((await renderChart({ replicaCount: '3', 'podDisruptionBudget.minAvailable': '2' })).find((o) => o.kind === 'PodDisruptionBudget')).toMatchObject({ spec: { minAvailable: 2 } });
    const container = ((await renderChart()).find((o) => o.kind === 'Deployment') as unknown as { spec: { template: { spec: { containers: { livenessProbe: object; readinessProbe: object }[] } } } }).spec.template.spec.containers[0];
    expect(container?.livenessProbe).toMatchObject({ httpGet: { path: '/healthz', port: 'webhook', scheme: 'HTTPS' }, timeoutSeconds: 5 });
    expect(container?.readinessProbe).toMatchObject({ httpGet: { path: '/readyz', port: 'https' }, timeoutSeconds: 3 });
  });

  test('its service account can do the operator\'s work and nothing more', async ({ admin, namespace }) => {
    await applyChartRbac(admin);
    const sa = await chartServiceAccountKubeConfig(admin);
    await create(admin, examplePolicy(namespace));
    await create(admin, exampleTask(namespace));
    const core = sa.makeApiClient(CoreV1Api);
    // What it needs: agent pods and its resources everywhere, Secrets only in its own namespace.
    await expect(core.listPodForAllNamespaces({ labelSelector: 'chainwarden.io/task' })).resolves.toBeTruthy();
    await expect(sa.makeApiClient(CustomObjectsApi).listClusterCustomObject({ group: 'chainwarden.io', version: 'v1alpha1', plural: 'agenttasks' })).resolves.toBeTruthy();
    await expect(core.readNamespacedSecret({ name: 'chainwarden-svid-keys', namespace: RELEASE_NAMESPACE })).resolves.toBeTruthy();
    // What it may not do.
    // Tenants' Secrets: one GET at a time for the MCP gateway (granted everywhere here, "*"), never a list.
    await admin.makeApiClient(CoreV1Api).createNamespacedSecret({ namespace, body: { metadata: { name: 'app-secret' }, stringData: { password: 'x' } } });
    await expect(core.readNamespacedSecret({ name: 'app-secret', namespace })).resolves.toBeTruthy();
    await expect(core.listNamespacedSecret({ namespace })).rejects.toMatchObject({ code: 403 });
    await expect(core.listSecretForAllNamespaces()).rejects.toMatchObject({ code: 403 });
    await expect(core.listNamespacedSecret({ namespace: RELEASE_NAMESPACE })).rejects.toMatchObject({ code: 403 });
    await expect(sa.makeApiClient(CustomObjectsApi).deleteNamespacedCustomObject({ group: 'chainwarden.io', version: 'v1alpha1', namespace, plural: 'agenttasks', name: 'ticket-4711' })).rejects.toMatchObject({ code: 403 });
    // A task is never replaced whole, its status neither: a finalizer is patched, status applied.
    const task = (await rawRequest(admin, 'GET', `/apis/chainwarden.io/v1alpha1/namespaces/${namespace}/agenttasks/ticket-4711`)).body as object;
    expect((await rawRequest(sa, 'PUT', `/apis/chainwarden.io/v1alpha1/namespaces/${namespace}/agenttasks/ticket-4711`, task)).status).toBe(403);
    expect((await rawRequest(sa, 'PUT', `/apis/chainwarden.io/v1alpha1/namespaces/${namespace}/agenttasks/ticket-4711/status`, task)).status).toBe(403);
    const webhook = await rawRequest(sa, 'POST', '/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations', { apiVersion: 'admissionregistration.k8s.io/v1', kind: 'ValidatingWebhookConfiguration', metadata: { name: 'sneaky' }, webhooks: [] });
    expect(webhook.status).toBe(403);
    const escalate = await rawRequest(sa, 'POST', '/apis/rbac.authorization.k8s.io/v1/clusterrolebindings', { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRoleBinding', metadata: { name: 'sneaky' }, roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'cluster-admin' }, subjects: [] });
    expect(escalate.status).toBe(403);
  });
});
