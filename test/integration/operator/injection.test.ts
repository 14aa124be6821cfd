import { CoreV1Api, type V1Container, type V1Pod } from '@kubernetes/client-node';
import { webhookConfigurations } from '../../../src/admission/registration.js';
import { rawRequest } from '../../../src/kube/raw.js';
import { examplePolicy, exampleTask } from '../../builders/examples.js';
import { readFile } from 'node:fs/promises';
import { createAgentPod, createServiceAccount, podToken, startAgentProcess } from '../../env/agents.js';
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
    expect(sidecar?.args).toEqual(['agent', '--broker', env.brokerUrl, '--token-file', '/var/run/secrets/chainwarden/token', '--local-token-file', '/var/run/secrets/chainwarden-local/token', '--listen', '127.0.0.1:15080', '--aws-listen', '127.0.0.1:15081']);
    expect(sidecar?.securityContext).toMatchObject({ runAsNonRoot: true, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false });
    expect(sidecar?.env?.find((e) => e.name === 'CHAINWARDEN_BROKER_CA')?.value).toContain('BEGIN CERTIFICATE');
    // App containers start once the sidecar has written the local token.
    expect(sidecar?.startupProbe?.exec?.command).toEqual(['/bin/sh', '-c', 'test -s /var/run/secrets/chainwarden-local/token']);
    expect(sidecar?.volumeMounts).toEqual([
      { name: 'chainwarden-token', mountPath: '/var/run/secrets/chainwarden', readOnly: true },
      { name: 'chainwarden-local', mountPath: '/var/run/secrets/chainwarden-local' },
    ]);
    const volume = stored.spec?.volumes?.find((v) => v.name === 'chainwarden-token');
    expect(volume?.projected?.sources?.[0]?.serviceAccountToken).toEqual({ audience: 'chainwarden', expirationSeconds: 600, path: 'token' });
    expect(stored.spec?.volumes?.find((v) => v.name === 'chainwarden-local')?.emptyDir).toEqual({ medium: 'Memory', sizeLimit: '1Mi' });
    const app = stored.spec?.containers[0];
    expect(app?.env).toEqual(
      expect.arrayContaining([
        { name: 'AWS_CONTAINER_CREDENTIALS_FULL_URI', value: 'http://127.0.0.1:15080/v1/credentials' },
        { name: 'AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE', value: '/var/run/secrets/chainwarden-local/token' },
        { name: 'CHAINWARDEN_URL', value: 'http://127.0.0.1:15080' },
        // Gateway delivery, the default: the SDK's calls go to the sidecar's AWS listener.
        { name: 'AWS_ENDPOINT_URL', value: 'http://127.0.0.1:15081' },
      ]),
    );
    // The local token, read-only; never the broker token, nor the Kubernetes API token.
    expect(app?.volumeMounts).toEqual([{ name: 'chainwarden-local', mountPath: '/var/run/secrets/chainwarden-local', readOnly: true }]);
    // Without raw sockets: a root agent could otherwise capture what the sidecar sends on the pod's network.
    expect(app?.securityContext?.capabilities?.drop).toEqual(['NET_RAW']);
  });

  test('the sidecar asks the scheduler for the memory it uses: the real sidecar, started, stays within its request', async ({ admin, env, namespace }) => {
    await create(admin, examplePolicy(namespace));
    await createServiceAccount(admin, namespace, 'support-agent');
    await create(admin, exampleTask(namespace));
    const pod = await createAgentPod(admin, namespace, { name: 'agent-0', task: 'ticket-4711', serviceAccount: 'support-agent' });
    const resources = pod.spec?.initContainers?.find((c) => c.name === 'chainwarden-agent')?.resources;
    const mebibytes = (quantity: unknown) => Number(/^(\d+)Mi$/.exec(String(quantity))?.[1]);
    const request = mebibytes(resources?.requests?.memory);
    const limit = mebibytes(resources?.limits?.memory);
    const agent = await startAgentProcess(env, await podToken(admin, pod));
    try {
      const status = await readFile(`/proc/${agent.child.pid ?? 0}/status`, 'utf8');
      const rss = Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1]) / 1024;
      expect(rss).toBeGreaterThan(10);
      expect(rss).toBeLessThanOrEqual(request);
      // Room above the request for a burst of large bodies in flight.
      expect(limit).toBeGreaterThanOrEqual(2 * request);
    } finally {
      await agent.stop();
    }
  });

  test('an agent pod holds no Kubernetes API token unless it asks for one explicitly', async ({ admin, namespace }) => {
    await createServiceAccount(admin, namespace, 'support-agent');
    const core = admin.makeApiClient(CoreV1Api);
    // The API server's ServiceAccount admission mounts the token before any webhook runs; injection takes it out again.
    const plain = await core.createNamespacedPod({ namespace, body: agentPod(namespace, 'agent-0') });
    expect(plain.spec?.automountServiceAccountToken).toBe(false);
    const apiMounts = (p: V1Pod) => [...(p.spec?.initContainers ?? []), ...p.spec!.containers].flatMap((c) => c.volumeMounts ?? []).filter((m) => m.mountPath === '/var/run/secrets/kubernetes.io/serviceaccount');
    expect(apiMounts(plain)).toEqual([]);
    expect(plain.spec?.volumes?.map((v) => v.name)).toEqual(['chainwarden-token', 'chainwarden-local']);
    const optedIn = await core.createNamespacedPod({ namespace, body: agentPod(namespace, 'agent-1', { automountServiceAccountToken: true }) });
    expect(optedIn.spec?.automountServiceAccountToken).toBe(true);
    expect(apiMounts(optedIn).length).toBeGreaterThan(0);
  });

  test('the broker token reaches the sidecar alone, even when the pod asks to mount it elsewhere', async ({ admin, namespace }) => {
    await createServiceAccount(admin, namespace, 'support-agent');
    const steal = [{ name: 'chainwarden-token', mountPath: '/var/run/secrets/chainwarden' }];
    const stored = await admin.makeApiClient(CoreV1Api).createNamespacedPod({
      namespace,
      body: agentPod(namespace, 'agent-0', { containers: [{ name: 'agent', image: 'x', volumeMounts: steal }], initContainers: [{ name: 'setup', image: 'x', volumeMounts: steal }] }),
    });
    const mountsToken = (c: V1Container) => (c.volumeMounts ?? []).some((m) => m.name === 'chainwarden-token');
    const all = [...(stored.spec?.initContainers ?? []), ...(stored.spec?.containers ?? [])];
    expect(all.filter(mountsToken).map((c) => c.name)).toEqual(['chainwarden-agent']);
    const tokenVolumes = (stored.spec?.volumes ?? []).filter((v) => v.projected?.sources?.some((s) => s.serviceAccountToken?.audience === 'chainwarden'));
    expect(tokenVolumes.map((v) => v.name)).toEqual(['chainwarden-token']);
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

  test('refuses every other way to AWS credentials, naming the field and the fix', async ({ admin, namespace }) => {
    await createServiceAccount(admin, namespace, 'support-agent');
    const refused = async (name: string, spec: Partial<V1Pod['spec']>) => rejection(admin, agentPod(namespace, name, spec));
    const withEnv = (env: string) => ({ containers: [{ name: 'agent', image: 'x', env: [{ name: env, value: 'x' }] }] });
    for (const env of ['AWS_PROFILE', 'AWS_CONFIG_FILE', 'AWS_ROLE_ARN', 'AWS_WEB_IDENTITY_TOKEN_FILE', 'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI', 'AWS_CONTAINER_AUTHORIZATION_TOKEN']) {
      expect(await refused(`env-${env.toLowerCase().replaceAll('_', '-')}`, withEnv(env))).toMatch(new RegExp(`spec.containers\\[0\\].env\\[0\\]: ${env} would give the agent .*; remove it`));
    }
    expect(await refused('cm', { containers: [{ name: 'agent', image: 'x', envFrom: [{ configMapRef: { name: 'aws' } }] }] })).toMatch(/spec.containers\[0\].envFrom\[0\].configMapRef: agent pods may not load a whole ConfigMap aws .*configMapKeyRef/);
    expect(await refused('dotaws', { containers: [{ name: 'agent', image: 'x', volumeMounts: [{ name: 'aws', mountPath: '/home/agent/.aws' }] }], volumes: [{ name: 'aws', secret: { secretName: 'aws' } }] })).toMatch(
      /spec.containers\[0\].volumeMounts\[0\].mountPath: \/home\/agent\/.aws is an AWS config directory/,
    );
    expect(await refused('init', { containers: [{ name: 'agent', image: 'x' }], initContainers: [{ name: 'setup', image: 'x', volumeMounts: [{ name: 'aws', mountPath: '/root/.aws/credentials', subPath: 'c' }] }], volumes: [{ name: 'aws', secret: { secretName: 'aws' } }] })).toMatch(
      /spec.initContainers\[0\].volumeMounts\[0\].mountPath/,
    );
    expect(await refused('own-token', { volumes: [{ name: 'mine', projected: { sources: [{ serviceAccountToken: { audience: 'chainwarden', path: 't' } }] } }] })).toMatch(/spec.volumes\[0\].projected.sources\[0\].serviceAccountToken.audience: a token for audience chainwarden is the sidecar's alone/);
    expect(await refused('hostnet', { hostNetwork: true })).toMatch(/spec.hostNetwork: agent pods may not use the node's network: the sidecar's loopback listener would be reachable/);
    expect(await refused('sharedpid', { shareProcessNamespace: true })).toMatch(/spec.shareProcessNamespace: agent pods may not share a process namespace/);
    expect(await refused('netadmin', { containers: [{ name: 'agent', image: 'x', securityContext: { capabilities: { add: ['NET_ADMIN'] } } }] })).toMatch(/spec.containers\[0\].securityContext.capabilities.add\[0\]: agent pods may not add NET_ADMIN/);
    expect(await refused('sysadmin', { containers: [{ name: 'agent', image: 'x', securityContext: { capabilities: { add: ['SYS_ADMIN'] }, seccompProfile: { type: 'Unconfined' } } }], hostIPC: true })).toMatch(
      /spec.hostIPC: agent pods may not use the node's IPC namespace.*spec.containers\[0\].securityContext.capabilities.add\[0\]: agent pods may not add SYS_ADMIN: beyond the Pod Security baseline's capabilities.*spec.containers\[0\].securityContext.seccompProfile.type/,
    );
  });

  test('a pod cannot join, leave or switch tasks after admission', async ({ admin, namespace }) => {
    await createServiceAccount(admin, namespace, 'support-agent');
    const core = admin.makeApiClient(CoreV1Api);
    await core.createNamespacedPod({ namespace, body: { metadata: { name: 'plain' }, spec: { serviceAccountName: 'support-agent', containers: [{ name: 'agent', image: 'x' }] } } });
    await core.createNamespacedPod({ namespace, body: agentPod(namespace, 'agent-0') });
    const relabel = (name: string, labels: Record<string, string | null>) => rawRequest(admin, 'PATCH', `/api/v1/namespaces/${namespace}/pods/${name}`, { metadata: { labels } }, 'application/merge-patch+json');
    const field = 'metadata.labels[\\"chainwarden.io/task\\"]';

    // Adding the label to a pod admitted without it: the objectSelector matches the new object.
    const join = await relabel('plain', { 'chainwarden.io/task': 'ticket-4711' });
    expect(join.status).toBe(422);
    expect(JSON.stringify(join.body)).toContain(`${field}: the task label is immutable (adding chainwarden.io/task=ticket-4711 to a running pod is refused)`);
    // Removing it: the objectSelector matches the old object.
    const leave = await relabel('agent-0', { 'chainwarden.io/task': null });
    expect(leave.status).toBe(422);
    expect(JSON.stringify(leave.body)).toContain('removing chainwarden.io/task=ticket-4711');
    const move = await relabel('agent-0', { 'chainwarden.io/task': 'other-task' });
    expect(move.status).toBe(422);
    expect(JSON.stringify(move.body)).toContain('changing chainwarden.io/task from ticket-4711 to other-task');
    // Other labels stay editable.
    expect((await relabel('agent-0', { team: 'support' })).status).toBe(200);
    expect((await core.readNamespacedPod({ name: 'plain', namespace })).metadata?.labels?.['chainwarden.io/task']).toBeUndefined();
  });

  test('an ephemeral container cannot be added to an agent pod', async ({ admin, namespace }) => {
    await createServiceAccount(admin, namespace, 'support-agent');
    const core = admin.makeApiClient(CoreV1Api);
    await core.createNamespacedPod({ namespace, body: agentPod(namespace, 'agent-0') });
    const pod = (await rawRequest(admin, 'GET', `/api/v1/namespaces/${namespace}/pods/agent-0`)).body as V1Pod;
    const debug = { ...pod, spec: { ...pod.spec, ephemeralContainers: [{ name: 'debugger', image: 'busybox', targetContainerName: 'chainwarden-agent', volumeMounts: [{ name: 'chainwarden-token', mountPath: '/stolen' }] }] } };
    const answer = await rawRequest(admin, 'PUT', `/api/v1/namespaces/${namespace}/pods/agent-0/ephemeralcontainers`, debug);
    expect(answer.status).toBe(422);
    expect(JSON.stringify(answer.body)).toContain('spec.ephemeralContainers[0]: ephemeral container debugger cannot be added to an agent pod');
    expect((await core.readNamespacedPod({ name: 'agent-0', namespace })).spec?.ephemeralContainers ?? []).toEqual([]);
  });

  test('with the webhook unreachable, an agent pod\'s finalizers, annotations and other labels still change; its spec and task label do not', async ({ admin, namespace }) => {
    await createServiceAccount(admin, namespace, 'support-agent');
    const core = admin.makeApiClient(CoreV1Api);
    await core.createNamespacedPod({ namespace, body: agentPod(namespace, 'agent-0') });
    // The pod webhook as registered, pointed at an address nothing listens on, for this namespace alone.
    const hook = webhookConfigurations({ url: 'https://127.0.0.1:1', caBundlePem: 'unused' })[1].webhooks?.find((w) => w.name === 'pods.mutate.chainwarden.io');
    const name = `unreachable-${namespace}`;
    const body = { apiVersion: 'admissionregistration.k8s.io/v1', kind: 'MutatingWebhookConfiguration', metadata: { name }, webhooks: [{ ...hook, name: 'pods.unreachable.chainwarden.io', namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': namespace } } }] };
    const hooks = '/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations';
    expect((await rawRequest(admin, 'POST', hooks, body)).status).toBe(201);
    const patch = (change: object) => rawRequest(admin, 'PATCH', `/api/v1/namespaces/${namespace}/pods/agent-0`, change, 'application/merge-patch+json');
    try {
      // A spec change still waits on the webhook, and fails closed without it.
      await expect.poll(async () => JSON.stringify((await patch({ spec: { containers: [{ name: 'agent', image: 'example.invalid/agent:2' }] } })).body), { timeout: 10_000 }).toContain('failed calling webhook \\"pods.unreachable.chainwarden.io\\"');
      expect(JSON.stringify((await patch({ metadata: { labels: { 'chainwarden.io/task': 'other-task' } } })).body)).toContain('chainwarden.io');
      // What a Job's controller, the garbage collector or a person labelling pods does goes through.
      expect((await patch({ metadata: { finalizers: ['batch.kubernetes.io/job-tracking'] } })).status).toBe(200);
      expect((await patch({ metadata: { annotations: { note: 'on call looked' }, labels: { team: 'support' } } })).status).toBe(200);
      expect((await patch({ metadata: { finalizers: null } })).status).toBe(200);
      const stored = await core.readNamespacedPod({ name: 'agent-0', namespace });
      expect(stored.metadata?.labels).toMatchObject({ 'chainwarden.io/task': 'ticket-4711', team: 'support' });
      expect(stored.spec?.containers.find((c) => c.name === 'agent')?.image).toBe('example.invalid/agent:1');
    } finally {
      await rawRequest(admin, 'DELETE', `${hooks}/${name}`);
    }
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
