import { CoreV1Api, type V1Pod } from '@kubernetes/client-node';
import { examplePolicy, exampleTask } from '../../builders/examples.js';
import { createAgentPod, createServiceAccount } from '../../env/agents.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { create, rejection } from '../../env/kube.js';

const agentPod = (namespace: string, name: string, spec: Partial<V1Pod['spec']> = {}): V1Pod => ({
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { name, namespace, labels: { 'chainwarden.io/task': 'ticket-4711' } },
  spec: { serviceAccountName: 'support-agent', containers: [{ name: 'agent', image: 'example.invalid/agent:1' }], ...spec },
});

describe('agent pod injection (mutating webhook)', () => {
  test('the stored pod carries the sidecar, the projected token, the SDK environment and the SPIFFE ID', async ({ admin, env, namespace }) => {
    await create(admin, examplePolicy(namespace));
    await createServiceAccount(admin, namespace, 'support-agent');
    await create(admin, exampleTask(namespace));
    await createAgentPod(admin, namespace, { name: 'agent-0', task: 'ticket-4711', serviceAccount: 'support-agent' });
    const stored = await admin.makeApiClient(CoreV1Api).readNamespacedPod({ name: 'agent-0', namespace });

    expect(stored.metadata?.annotations?.['chainwarden.io/spiffe-id']).toBe(`spiffe://cluster.local/ns/${namespace}/sa/support-agent/task/ticket-4711`);
    const sidecar = stored.spec?.initContainers?.find((c) => c.name === 'chainwarden-agent');
    expect(sidecar?.restartPolicy).toBe('Always');
    expect(sidecar?.args).toEqual(['agent', '--broker', env.brokerUrl, '--token-file', '/var/run/secrets/chainwarden/token', '--listen', '127.0.0.1:15080']);
    expect(sidecar?.securityContext).toMatchObject({ runAsNonRoot: true, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false });
    expect(sidecar?.env?.find((e) => e.name === 'CHAINWARDEN_BROKER_CA')?.value).toContain('BEGIN CERTIFICATE');
    const volume = stored.spec?.volumes?.find((v) => v.name === 'chainwarden-token');
    expect(volume?.projected?.sources?.[0]?.serviceAccountToken).toEqual({ audience: 'chainwarden', expirationSeconds: 600, path: 'token' });
    const app = stored.spec?.containers[0];
    expect(app?.env).toEqual(
      expect.arrayContaining([
        { name: 'AWS_CONTAINER_CREDENTIALS_FULL_URI', value: 'http://127.0.0.1:15080/v1/credentials' },
        { name: 'AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE', value: '/var/run/secrets/chainwarden/token' },
        { name: 'CHAINWARDEN_URL', value: 'http://127.0.0.1:15080' },
      ]),
    );
    expect(app?.volumeMounts).toEqual(expect.arrayContaining([{ name: 'chainwarden-token', mountPath: '/var/run/secrets/chainwarden', readOnly: true }]));
  });

  test('admitting an already injected pod again changes nothing', async ({ admin, namespace }) => {
    await createServiceAccount(admin, namespace, 'support-agent');
    const core = admin.makeApiClient(CoreV1Api);
    const first = await core.createNamespacedPod({ namespace, body: agentPod(namespace, 'agent-0') });
    // The injected spec, resubmitted as a new pod, comes back identical.
    const again = await core.createNamespacedPod({ namespace, body: { metadata: { ...agentPod(namespace, 'agent-1').metadata, annotations: first.metadata?.annotations }, spec: first.spec } });
    const strip = (p: V1Pod) => ({ annotations: p.metadata?.annotations, init: p.spec?.initContainers, containers: p.spec?.containers, volumes: p.spec?.volumes });
    expect(strip(again)).toEqual(strip(first));
    expect(again.spec?.initContainers?.filter((c) => c.name === 'chainwarden-agent')).toHaveLength(1);
    expect(again.spec?.containers[0]?.env?.filter((e) => e.name === 'AWS_CONTAINER_CREDENTIALS_FULL_URI')).toHaveLength(1);
  });

  test('refuses agent pods that carry static AWS keys, whole Secrets in env, or the wrong service account', async ({ admin, namespace }) => {
    await create(admin, examplePolicy(namespace));
    await createServiceAccount(admin, namespace, 'support-agent');
    await create(admin, exampleTask(namespace));
    const keys = await rejection(admin, agentPod(namespace, 'a', { containers: [{ name: 'agent', image: 'x', env: [{ name: 'AWS_SECRET_ACCESS_KEY', valueFrom: { secretKeyRef: { name: 'aws', key: 'secret' } } }] }] }));
    expect(keys).toMatch(/spec.containers\[0\].env\[0\]: AWS_SECRET_ACCESS_KEY would give the agent static AWS credentials; remove it/);
    const whole = await rejection(admin, agentPod(namespace, 'b', { containers: [{ name: 'agent', image: 'x', envFrom: [{ secretRef: { name: 'aws' } }] }] }));
    expect(whole).toMatch(/spec.containers\[0\].envFrom\[0\].secretRef: agent pods may not load a whole Secret/);
    await createServiceAccount(admin, namespace, 'other');
    const sa = await rejection(admin, agentPod(namespace, 'c', { serviceAccountName: 'other' }));
    expect(sa).toMatch(/spec.serviceAccountName: AgentTask ticket-4711 runs as service account support-agent, not other/);
  });

  test('pods without the task label are left alone', async ({ admin, namespace }) => {
    await createServiceAccount(admin, namespace, 'web');
    const pod = await admin.makeApiClient(CoreV1Api).createNamespacedPod({
      namespace,
      body: { metadata: { name: 'web' }, spec: { serviceAccountName: 'web', containers: [{ name: 'web', image: 'x', env: [{ name: 'AWS_ACCESS_KEY_ID', value: 'AKIA...' }] }] } },
    });
    expect(pod.spec?.initContainers ?? []).toEqual([]);
    expect(pod.metadata?.annotations?.['chainwarden.io/spiffe-id']).toBeUndefined();
  });
});
