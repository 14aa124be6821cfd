import type { V1Container, V1Pod } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { injectPod, podInjectionPlugin, showsInjection, staticKeyViolations, type InjectionConfig } from '../../../src/admission/plugins/pod.js';
import type { AdmissionRequest } from '../../../src/admission/review.js';
import type { AgentTask } from '../../../src/api/schema.js';
import type { ObjectReader } from '../../../src/kube/readers.js';

const config: InjectionConfig = { image: 'img', brokerUrl: 'https://broker', brokerCaPem: 'PEM', trustDomain: 'cluster.local', port: 15080, awsPort: 15081, tokenExpirationSeconds: 600 };
const pod: V1Pod = { metadata: { name: 'p', labels: { 'chainwarden.io/task': 't' } }, spec: { serviceAccountName: 'sa', containers: [{ name: 'a', image: 'x', env: [{ name: 'KEEP', value: '1' }] }, { name: 'b', image: 'y' }] } };
const withContainer = (c: Partial<V1Container>): V1Pod => ({ ...pod, spec: { ...pod.spec, containers: [{ name: 'a', image: 'x', ...c }] } });

describe('injectPod', () => {
  it('is idempotent', () => {
    const once = injectPod(pod, config, 'spiffe://id');
    expect(injectPod(once, config, 'spiffe://id')).toEqual(once);
  });

  it('drops NET_RAW from every app container, keeping the capabilities the pod set, and leaves one that drops ALL as it is', () => {
    const out = injectPod({ ...pod, spec: { ...pod.spec!, initContainers: [{ name: 'setup', image: 'z' }], containers: [{ name: 'a', image: 'x', securityContext: { runAsUser: 1000, capabilities: { add: ['NET_BIND_SERVICE'], drop: ['MKNOD'] } } }, { name: 'b', image: 'y', securityContext: { capabilities: { drop: ['ALL'] } } }, { name: 'c', image: 'w' }] } }, config, 'spiffe://id');
    expect(out.spec?.containers.map((c) => c.securityContext)).toEqual([{ runAsUser: 1000, capabilities: { add: ['NET_BIND_SERVICE'], drop: ['MKNOD', 'NET_RAW'] } }, { capabilities: { drop: ['ALL'] } }, { capabilities: { drop: ['NET_RAW'] } }]);
    expect(out.spec?.initContainers?.find((c) => c.name === 'setup')?.securityContext).toEqual({ capabilities: { drop: ['NET_RAW'] } });
    // The sidecar drops everything already.
    expect(out.spec?.initContainers?.[0]?.securityContext?.capabilities).toEqual({ drop: ['ALL'] });
  });

  it('leaves a spec that shows it was injected, and only such a spec shows it: the controller binds no other pod', () => {
    const out = injectPod(pod, config, 'spiffe://id');
    expect(showsInjection(out.spec)).toBe(true);
    expect(showsInjection(pod.spec)).toBe(false);
    expect(showsInjection(undefined)).toBe(false);
    const spec = out.spec!;
    const [sidecar, ...inits] = spec.initContainers ?? [];
    // The sidecar as an ordinary container (started in any order, stopped before the agent), or without the token.
    expect(showsInjection({ ...spec, initContainers: [{ ...sidecar!, restartPolicy: undefined }, ...inits] })).toBe(false);
    expect(showsInjection({ ...spec, initContainers: [{ ...sidecar!, volumeMounts: [] }, ...inits] })).toBe(false);
    // The token mounted into an app container too, or a second broker token of the app's own.
    const shared: V1Container = { ...spec.containers[0]!, volumeMounts: [{ name: 'chainwarden-token', mountPath: '/t' }] };
    expect(showsInjection({ ...spec, containers: [shared] })).toBe(false);
    expect(showsInjection({ ...spec, volumes: [...(spec.volumes ?? []), { name: 'mine', projected: { sources: [{ serviceAccountToken: { audience: 'chainwarden', path: 't' } }] } }] })).toBe(false);
    expect(showsInjection({ ...spec, volumes: (spec.volumes ?? []).filter((v) => v.name !== 'chainwarden-token') })).toBe(false);
  });

  it('gives every app container the SDK environment and keeps what was there', () => {
    const out = injectPod(pod, config, 'spiffe://id');
    for (const c of out.spec?.containers ?? []) {
      expect(c.env?.map((e) => e.name)).toEqual(expect.arrayContaining(['AWS_CONTAINER_CREDENTIALS_FULL_URI', 'AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE', 'CHAINWARDEN_URL']));
    }
    expect(out.spec?.containers[0]?.env?.[0]).toEqual({ name: 'KEEP', value: '1' });
    expect(out.spec?.initContainers?.map((c) => c.name)).toEqual(['chainwarden-agent']);
  });

  it('replaces an SDK variable the pod set to something else', () => {
    const sneaky: V1Pod = { ...pod, spec: { containers: [{ name: 'a', image: 'x', env: [{ name: 'AWS_CONTAINER_CREDENTIALS_FULL_URI', value: 'http://evil' }, { name: 'AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE', value: '/evil' }] }] } };
    const env = injectPod(sneaky, config, 'id').spec?.containers[0]?.env ?? [];
    expect(env.filter((e) => e.name.startsWith('AWS_CONTAINER'))).toEqual([
      { name: 'AWS_CONTAINER_CREDENTIALS_FULL_URI', value: 'http://127.0.0.1:15080/v1/credentials' },
      { name: 'AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE', value: '/var/run/secrets/chainwarden-local/token' },
    ]);
  });

  it('mounts the broker token into the sidecar alone, and the local token read-only into app containers', () => {
    const asking: V1Pod = {
      ...pod,
      spec: {
        containers: [{ name: 'a', image: 'x', volumeMounts: [{ name: 'chainwarden-token', mountPath: '/steal' }, { name: 'chainwarden-local', mountPath: '/rw' }] }],
        initContainers: [{ name: 'setup', image: 'x', volumeMounts: [{ name: 'chainwarden-token', mountPath: '/steal' }] }],
      },
    };
    const out = injectPod(asking, config, 'id');
    const mounts = (c: V1Container | undefined) => c?.volumeMounts ?? [];
    const [sidecar, setup] = out.spec?.initContainers ?? [];
    expect(mounts(sidecar)).toEqual([{ name: 'chainwarden-token', mountPath: '/var/run/secrets/chainwarden', readOnly: true }, { name: 'chainwarden-local', mountPath: '/var/run/secrets/chainwarden-local' }]);
    expect(mounts(setup)).toEqual([]);
    expect(mounts(out.spec?.containers[0])).toEqual([{ name: 'chainwarden-local', mountPath: '/var/run/secrets/chainwarden-local', readOnly: true }]);
    expect(sidecar?.args).toEqual(expect.arrayContaining(['--local-token-file', '/var/run/secrets/chainwarden-local/token']));
    expect(sidecar?.startupProbe?.exec?.command?.join(' ')).toContain('test -s /var/run/secrets/chainwarden-local/token');
    expect(out.spec?.volumes?.find((v) => v.name === 'chainwarden-local')).toEqual({ name: 'chainwarden-local', emptyDir: { medium: 'Memory', sizeLimit: '1Mi' } });
  });
  it('drops the Kubernetes API token the ServiceAccount admission mounted, unless the pod asks for it explicitly', () => {
    const apiVolume = { name: 'kube-api-access-x7k2p', projected: { sources: [{ serviceAccountToken: { path: 'token', expirationSeconds: 3607 } }, { configMap: { name: 'kube-root-ca.crt' } }] } };
    const apiMount = { name: 'kube-api-access-x7k2p', mountPath: '/var/run/secrets/kubernetes.io/serviceaccount', readOnly: true };
    const mounted: V1Pod = { ...pod, spec: { containers: [{ name: 'a', image: 'x', volumeMounts: [apiMount, { name: 'data', mountPath: '/data' }] }], volumes: [apiVolume, { name: 'data', emptyDir: {} }] } };
    const out = injectPod(mounted, config, 'id');
    expect(out.spec?.automountServiceAccountToken).toBe(false);
    expect(out.spec?.volumes?.map((v) => v.name)).toEqual(['data', 'chainwarden-token', 'chainwarden-local']);
    expect(out.spec?.containers[0]?.volumeMounts?.map((m) => m.name)).toEqual(['data', 'chainwarden-local']);
    // Opting in keeps the token where the pod's author put it.
    const optIn = injectPod({ ...mounted, spec: { ...mounted.spec!, automountServiceAccountToken: true } }, config, 'id');
    expect(optIn.spec?.automountServiceAccountToken).toBe(true);
    expect(optIn.spec?.containers[0]?.volumeMounts?.map((m) => m.name)).toEqual(['kube-api-access-x7k2p', 'data', 'chainwarden-local']);
  });
});

describe('staticKeyViolations', () => {
  it('finds AWS key variables in containers and init containers, and whole Secrets and ConfigMaps in envFrom', () => {
    const bad: V1Pod = {
      spec: {
        initContainers: [{ name: 'i', image: 'x', env: [{ name: 'AWS_ACCESS_KEY_ID', value: 'AKIA' }] }],
        containers: [{ name: 'a', image: 'x', env: [{ name: 'OK', value: '1' }, { name: 'AWS_SESSION_TOKEN', value: 't' }], envFrom: [{ configMapRef: { name: 'c' } }, { secretRef: { name: 's' } }] }],
      },
    };
    expect(staticKeyViolations(bad).map((v) => v.field)).toEqual(['spec.containers[0].env[1]', 'spec.containers[0].envFrom[0].configMapRef', 'spec.containers[0].envFrom[1].secretRef', 'spec.initContainers[0].env[0]']);
    expect(staticKeyViolations(pod)).toEqual([]);
  });

  it.each([
    'AWS_ACCESS_KEY_ID',
    'AWS_SECRET_ACCESS_KEY',
    'AWS_SESSION_TOKEN',
    'AWS_PROFILE',
    'AWS_SHARED_CREDENTIALS_FILE',
    'AWS_CONFIG_FILE',
    'AWS_ROLE_ARN',
    'AWS_WEB_IDENTITY_TOKEN_FILE',
    'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI',
    'AWS_CONTAINER_AUTHORIZATION_TOKEN',
  ])('refuses %s, naming the field and the fix', (name) => {
    expect(staticKeyViolations(withContainer({ env: [{ name, value: 'x' }] }))).toEqual([{ field: 'spec.containers[0].env[0]', message: expect.stringMatching(new RegExp(`^${name} would give the agent .*; remove it`)) as unknown }]);
  });

  it.each(['/root/.aws', '/home/app/.aws/', '/home/app/.aws/credentials'])('refuses a volume mounted at %s', (mountPath) => {
    expect(staticKeyViolations(withContainer({ volumeMounts: [{ name: 'v', mountPath }] })).map((v) => v.field)).toEqual(['spec.containers[0].volumeMounts[0].mountPath']);
  });

  it('leaves paths that only look like .aws alone', () => {
    expect(staticKeyViolations(withContainer({ volumeMounts: [{ name: 'v', mountPath: '/data/.awsome' }, { name: 'w', mountPath: '/aws' }] }))).toEqual([]);
  });

  it('checks ephemeral containers by the same rules, and refuses a projected token for the broker audience', () => {
    const bad: V1Pod = {
      ...pod,
      spec: {
        containers: [{ name: 'a', image: 'x' }],
        ephemeralContainers: [{ name: 'debug', image: 'x', env: [{ name: 'AWS_PROFILE', value: 'admin' }] }],
        volumes: [{ name: 'mine', projected: { sources: [{ serviceAccountToken: { audience: 'chainwarden', path: 'token' } }] } }],
      },
    };
    expect(staticKeyViolations(bad).map((v) => v.field)).toEqual(['spec.ephemeralContainers[0].env[0]', 'spec.volumes[0].projected.sources[0].serviceAccountToken.audience']);
  });
});

describe('podInjectionPlugin', () => {
  const tasks: ObjectReader<AgentTask> = { get: () => Promise.resolve(undefined) };
  const plugin = podInjectionPlugin(config, tasks);
  const review = (operation: AdmissionRequest['operation'], object: V1Pod, oldObject?: V1Pod, subResource?: string): AdmissionRequest => ({
    uid: 'u',
    kind: { group: '', version: 'v1', kind: 'Pod' },
    resource: { group: '', version: 'v1', resource: 'pods' },
    subResource,
    operation,
    namespace: 'ns',
    userInfo: {},
    object,
    oldObject,
  });
  const labelled = (task: string | undefined): V1Pod => ({ ...pod, metadata: { name: 'p', labels: { app: 'x', ...(task ? { 'chainwarden.io/task': task } : {}) } } });
  const refusal = async (request: AdmissionRequest) => {
    const verdict = await plugin.admit(request);
    return verdict.allowed ? undefined : verdict.violations?.map((v) => `${v.field}: ${v.message}`).join('\n');
  };

  it.each([
    ['adding', undefined, 't', /adding chainwarden.io\/task=t to a running pod/],
    ['removing', 't', undefined, /removing chainwarden.io\/task=t/],
    ['changing', 't', 'u', /changing chainwarden.io\/task from t to u/],
  ])('refuses %s the task label on UPDATE', async (_what, before, after, message) => {
    const text = await refusal(review('UPDATE', labelled(after), labelled(before)));
    expect(text).toMatch(/^metadata\.labels\["chainwarden\.io\/task"\]: the task label is immutable/);
    expect(text).toMatch(message);
  });

  it('gives each pod the broker CA the operator serves at its admission, so pods created after a CA rotation trust the new one', async () => {
    let ca = 'CA-1';
    const rotating = podInjectionPlugin({ ...config, brokerCaPem: () => ca }, tasks);
    const caOf = async () => {
      const verdict = await rotating.admit(review('CREATE', labelled('t')));
      return JSON.stringify(verdict.allowed ? verdict.patch : undefined).match(/"name":"CHAINWARDEN_BROKER_CA","value":"([^"]*)"/)?.[1];
    };
    expect(await caOf()).toBe('CA-1');
    ca = 'CA-2';
    expect(await caOf()).toBe('CA-2');
  });

  it('lets other UPDATEs of an agent pod through untouched', async () => {
    const after = labelled('t');
    after.metadata!.labels!.app = 'y';
    expect(await plugin.admit(review('UPDATE', after, labelled('t')))).toEqual({ allowed: true, patch: undefined, warnings: undefined });
  });

  it('refuses an ephemeral container added to an agent pod', async () => {
    const debugged: V1Pod = { ...labelled('t'), spec: { ...pod.spec!, ephemeralContainers: [{ name: 'debug', image: 'busybox' }] } };
    expect(await refusal(review('UPDATE', debugged, labelled('t'), 'ephemeralcontainers'))).toMatch(/^spec\.ephemeralContainers\[0\]: ephemeral container debug cannot be added to an agent pod/);
  });

  it('refuses any change to the injected sidecar of a running agent pod, its image included; the app container\'s image may change', async () => {
    const sidecar = { name: 'chainwarden-agent', image: 'chainwarden:1', restartPolicy: 'Always' };
    const injected: V1Pod = { ...labelled('t'), spec: { ...pod.spec!, initContainers: [sidecar] } };
    const swapped: V1Pod = { ...injected, spec: { ...injected.spec!, initContainers: [{ ...sidecar, image: 'attacker/steal-token:1' }] } };
    expect(await refusal(review('UPDATE', swapped, injected))).toMatch(/^spec\.initContainers: the chainwarden-agent container is the one admission injected and cannot be changed on a running pod \(its image included\)/);
    const appUpdated: V1Pod = { ...injected, spec: { ...injected.spec!, containers: (injected.spec?.containers ?? []).map((c) => ({ ...c, image: 'agent:2' })) } };
    expect(await plugin.admit(review('UPDATE', appUpdated, injected))).toMatchObject({ allowed: true });
  });

  it('refuses host networking for agent pods', async () => {
    expect(await refusal(review('CREATE', { ...pod, spec: { ...pod.spec!, hostNetwork: true } }))).toMatch(/^spec\.hostNetwork: .*loopback listener would be reachable/);
  });

  it('refuses a shared process namespace, the node\'s, its file system and privileged containers: each reaches the pod token only the sidecar holds', async () => {
    expect(await refusal(review('CREATE', { ...pod, spec: { ...pod.spec!, shareProcessNamespace: true } }))).toMatch(/^spec\.shareProcessNamespace: .*pod token through \/proc/);
    expect(await refusal(review('CREATE', { ...pod, spec: { ...pod.spec!, hostPID: true } }))).toMatch(/^spec\.hostPID: .*pod token would be readable/);
    expect(await refusal(review('CREATE', { ...pod, spec: { ...pod.spec!, volumes: [...(pod.spec?.volumes ?? []), { name: 'node', hostPath: { path: '/var/lib/kubelet' } }] } }))).toMatch(/spec\.volumes\[\d+\]\.hostPath: agent pods may not mount the node's file system \(\/var\/lib\/kubelet\)/);
    expect(await refusal(review('CREATE', { ...pod, spec: { ...pod.spec!, containers: [{ name: 'agent', image: 'x', securityContext: { privileged: true } }] } }))).toMatch(/^spec\.containers\[0\]\.securityContext\.privileged: agent pods may not run privileged containers/);
  });

  it('refuses a container that adds a capability to read or steer the pod\'s network, which carries what the sidecar sends', async () => {
    for (const [cap, kind] of [['NET_RAW', 'containers'], ['CAP_NET_ADMIN', 'containers'], ['all', 'initContainers']] as const) {
      const container = { name: 'agent', image: 'x', securityContext: { capabilities: { add: ['NET_BIND_SERVICE', cap] } } };
      const spec = kind === 'containers' ? { ...pod.spec!, containers: [container] } : { ...pod.spec!, initContainers: [container] };
      expect(await refusal(review('CREATE', { ...pod, spec }))).toMatch(new RegExp(`^spec\\.${kind}\\[0\\]\\.securityContext\\.capabilities\\.add\\[1\\]: agent pods may not add ${cap}: .*sidecar's traffic`));
    }
    expect(await refusal(review('CREATE', { ...pod, spec: { ...pod.spec!, containers: [{ name: 'agent', image: 'x', securityContext: { capabilities: { add: ['NET_BIND_SERVICE'] } } }] } }))).toBeUndefined();
  });

  it('refuses what the Pod Security baseline refuses as a way onto the node: other capabilities, unconfined seccomp or AppArmor, an unmasked /proc, the node\'s IPC, a host process', async () => {
    const container = (securityContext: V1Container['securityContext']) => ({ ...pod, spec: { ...pod.spec!, containers: [{ name: 'agent', image: 'x', securityContext }] } });
    for (const cap of ['SYS_ADMIN', 'CAP_SYS_PTRACE', 'sys_module', 'DAC_READ_SEARCH', 'BPF']) {
      expect(await refusal(review('CREATE', container({ capabilities: { add: ['CHOWN', cap] } })))).toMatch(new RegExp(`^spec\\.containers\\[0\\]\\.securityContext\\.capabilities\\.add\\[1\\]: agent pods may not add ${cap}: beyond the Pod Security baseline's capabilities`));
    }
    expect(await refusal(review('CREATE', container({ seccompProfile: { type: 'Unconfined' } })))).toMatch(/^spec\.containers\[0\]\.securityContext\.seccompProfile\.type: agent pods may not run without a seccomp profile/);
    expect(await refusal(review('CREATE', container({ appArmorProfile: { type: 'Unconfined' } })))).toMatch(/^spec\.containers\[0\]\.securityContext\.appArmorProfile\.type: agent pods may not run without an AppArmor profile/);
    expect(await refusal(review('CREATE', container({ procMount: 'Unmasked' })))).toMatch(/^spec\.containers\[0\]\.securityContext\.procMount: agent pods may not mount \/proc Unmasked/);
    expect(await refusal(review('CREATE', container({ windowsOptions: { hostProcess: true } })))).toMatch(/^spec\.containers\[0\]\.securityContext\.windowsOptions\.hostProcess/);
    expect(await refusal(review('CREATE', { ...pod, spec: { ...pod.spec!, hostIPC: true } }))).toMatch(/^spec\.hostIPC: agent pods may not use the node's IPC namespace/);
    expect(await refusal(review('CREATE', { ...pod, spec: { ...pod.spec!, securityContext: { seccompProfile: { type: 'Unconfined' } } } }))).toMatch(/^spec\.securityContext\.seccompProfile\.type/);
    const annotated = { ...pod, metadata: { ...pod.metadata, annotations: { 'container.apparmor.security.beta.kubernetes.io/agent': 'unconfined' } } };
    expect(await refusal(review('CREATE', annotated))).toMatch(/^metadata\.annotations\[container\.apparmor\.security\.beta\.kubernetes\.io\/agent\]: agent pods may not run a container without an AppArmor profile/);
    // What the baseline allows is admitted.
    expect(await refusal(review('CREATE', container({ seccompProfile: { type: 'RuntimeDefault' }, appArmorProfile: { type: 'RuntimeDefault' }, procMount: 'Default', capabilities: { add: ['SETUID', 'CAP_SETGID', 'kill'] } })))).toBeUndefined();
  });
});
