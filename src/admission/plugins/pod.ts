import { isDeepStrictEqual } from 'node:util';
import type { V1Container, V1EnvVar, V1EphemeralContainer, V1Pod, V1Volume } from '@kubernetes/client-node';
import type { FieldViolation } from '../../api/parse.js';
import type { AgentTask } from '../../api/schema.js';
import { BROKER_AUDIENCE, TASK_LABEL } from '../../api/task.js';
import { urlOf, type ServingUrl } from '../../server/url.js';
import { spiffeIdFor } from '../../identity/spiffe.js';
import type { ObjectReader } from '../../kube/readers.js';
import { allow, deny, type AdmissionPlugin, type JsonPatchOperation } from '../review.js';

export const SPIFFE_ID_ANNOTATION = 'chainwarden.io/spiffe-id';
export const SIDECAR_NAME = 'chainwarden-agent';
/** The projected broker token: mounted into the sidecar only. */
export const TOKEN_VOLUME = 'chainwarden-token';
export const TOKEN_DIR = '/var/run/secrets/chainwarden';
export const TOKEN_PATH = `${TOKEN_DIR}/token`;
/** A memory emptyDir holding the per-pod local token the sidecar creates and app containers present. */
export const LOCAL_VOLUME = 'chainwarden-local';
export const LOCAL_DIR = '/var/run/secrets/chainwarden-local';
export const LOCAL_TOKEN_PATH = `${LOCAL_DIR}/token`;

/** The parts of a pod's spec that show admission injected it. */
export interface InjectableSpec {
  initContainers?: { name: string; restartPolicy?: string; volumeMounts?: { name: string }[] }[];
  containers?: { name: string; volumeMounts?: { name: string }[] }[];
  ephemeralContainers?: { name: string; volumeMounts?: { name: string }[] }[];
  volumes?: { name: string; projected?: { sources?: { serviceAccountToken?: { audience?: string } }[] } }[];
}

/**
 * Whether a pod's spec is one admission injected: the sidecar runs as a native sidecar, the
 * broker token is projected into it and into no other container, and no other volume projects a
 * broker token. A pod spec cannot change once created, so this holds for the pod's life. A pod
 * that carries the task label without it (admitted while the webhook was not registered, or
 * labelled through its status) holds nothing the sidecar guards, and never binds.
 */
export function showsInjection(spec: InjectableSpec | undefined): boolean {
  const sidecar = spec?.initContainers?.find((c) => c.name === SIDECAR_NAME);
  if (!sidecar || sidecar.restartPolicy !== 'Always' || !sidecar.volumeMounts?.some((m) => m.name === TOKEN_VOLUME)) return false;
  const others = [...(spec?.initContainers ?? []).filter((c) => c !== sidecar), ...(spec?.containers ?? []), ...(spec?.ephemeralContainers ?? [])];
  if (others.some((c) => c.volumeMounts?.some((m) => m.name === TOKEN_VOLUME))) return false;
  const tokens = (spec?.volumes ?? []).filter((v) => v.projected?.sources?.some((source) => source.serviceAccountToken?.audience === BROKER_AUDIENCE));
  return tokens.length === 1 && tokens[0]?.name === TOKEN_VOLUME;
}

/** What every injected agent pod gets; set once per operator. */
export interface InjectionConfig {
  /** The operator image; the sidecar runs `chainwarden agent` from it. */
  image: string;
  brokerUrl: ServingUrl;
  /** The CA the sidecar trusts the broker by; read at each injection, as the operator reloads it. */
  brokerCaPem: string | (() => string);
  trustDomain: string;
  /** Loopback port of the sidecar inside the pod. */
  port: number;
  /** Loopback port of the sidecar's AWS listener (Gateway delivery). */
  awsPort: number;
  tokenExpirationSeconds: number;
}

/**
 * Environment variables through which an AWS SDK would find credentials before (or instead of)
 * the container-credentials endpoint, with what to do instead. Refused rather than removed:
 * silently dropping a variable would leave the author wondering which credentials ran.
 */
const CREDENTIAL_ENV: Record<string, string> = {
  AWS_ACCESS_KEY_ID: 'static AWS credentials',
  AWS_SECRET_ACCESS_KEY: 'static AWS credentials',
  AWS_SESSION_TOKEN: 'static AWS credentials',
  AWS_PROFILE: 'a profile from a shared config or credentials file (which may run a credential_process)',
  AWS_DEFAULT_PROFILE: 'a profile from a shared config or credentials file',
  AWS_SHARED_CREDENTIALS_FILE: 'a shared credentials file',
  AWS_CONFIG_FILE: 'a shared config file (profiles, credential_process, SSO)',
  AWS_ROLE_ARN: 'a web-identity role of its own (IRSA)',
  AWS_WEB_IDENTITY_TOKEN_FILE: 'a web-identity token of its own (IRSA)',
  AWS_CONTAINER_CREDENTIALS_RELATIVE_URI: 'the ECS task role, which SDKs prefer over AWS_CONTAINER_CREDENTIALS_FULL_URI',
  AWS_CONTAINER_AUTHORIZATION_TOKEN: 'an authorization token for a credentials endpoint of its own choosing',
};
// AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE are not refused:
// injection overwrites them with the sidecar's values (see injectedEnv), which keeps admitting an
// injected pod again a no-op.

/** Where an SDK sends its AWS calls under Gateway delivery: the sidecar's AWS listener. */
export const awsGatewayUrl = (config: InjectionConfig) => `http://127.0.0.1:${config.awsPort}`;

/**
 * What the injected sidecar asks for. It starts at about 70 MiB and grows to 120 to 135 MiB under
 * ordinary load (thousands of tool calls); the limit leaves room above that for what its gateways
 * hold at once to check it (the AWS gateway's 32 MiB of request bodies, the MCP gateway's 4 MiB of
 * answers, which parsing takes to some 40 MiB more), so a large call is refused one by one rather
 * than the sidecar restarting.
 */
export const SIDECAR_RESOURCES = { requests: { cpu: '10m', memory: '80Mi' }, limits: { memory: '256Mi' } };

export function injectedEnv(config: InjectionConfig, gateway: boolean): V1EnvVar[] {
  const base = `http://127.0.0.1:${config.port}`;
  return [
    { name: 'AWS_CONTAINER_CREDENTIALS_FULL_URI', value: `${base}/v1/credentials` },
    { name: 'AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE', value: LOCAL_TOKEN_PATH },
    { name: 'CHAINWARDEN_URL', value: base },
    ...(gateway ? [{ name: 'AWS_ENDPOINT_URL', value: awsGatewayUrl(config) }] : []),
  ];
}

function sidecar(config: InjectionConfig, gateway: boolean): V1Container {
  return {
    name: SIDECAR_NAME,
    image: config.image,
    args: [
      'agent',
      '--broker',
      urlOf(config.brokerUrl),
      '--token-file',
      TOKEN_PATH,
      '--local-token-file',
      LOCAL_TOKEN_PATH,
      '--listen',
      `127.0.0.1:${config.port}`,
      ...(gateway ? ['--aws-listen', `127.0.0.1:${config.awsPort}`] : []),
    ],
    env: [{ name: 'CHAINWARDEN_BROKER_CA', value: typeof config.brokerCaPem === 'function' ? config.brokerCaPem() : config.brokerCaPem }],
    // A native sidecar: started before the agent, stopped after it.
    restartPolicy: 'Always',
    // App containers start only once this succeeds, so their first read of the local token finds
    // it. Not an httpGet on /healthz: the kubelet sends those to the pod IP, and the sidecar
    // listens on loopback only. The sidecar writes the file after its listener is up, so the
    // file's existence also says the sidecar answers.
    startupProbe: { exec: { command: ['/bin/sh', '-c', `test -s ${LOCAL_TOKEN_PATH}`] }, periodSeconds: 1, failureThreshold: 60, timeoutSeconds: 1, successThreshold: 1 },
    volumeMounts: [
      { name: TOKEN_VOLUME, mountPath: TOKEN_DIR, readOnly: true },
      { name: LOCAL_VOLUME, mountPath: LOCAL_DIR },
    ],
    resources: SIDECAR_RESOURCES,
    securityContext: {
      runAsNonRoot: true,
      runAsUser: 65532,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      capabilities: { drop: ['ALL'] },
    },
  };
}

function volumes(config: InjectionConfig): V1Volume[] {
  return [
    {
      name: TOKEN_VOLUME,
      projected: { sources: [{ serviceAccountToken: { audience: BROKER_AUDIENCE, expirationSeconds: config.tokenExpirationSeconds, path: 'token' } }] },
    },
    // In memory: the local token never touches the node's disk.
    { name: LOCAL_VOLUME, emptyDir: { medium: 'Memory', sizeLimit: '1Mi' } },
  ];
}

/** Capabilities that read or steer the pod's network, which the agent's containers share with the sidecar. */
const NETWORK_CAPABILITIES = new Set(['NET_RAW', 'NET_ADMIN', 'ALL']);

/**
 * The capabilities a container may add: those of the Pod Security Standards' baseline profile.
 * Any other (SYS_ADMIN, SYS_PTRACE, SYS_MODULE, DAC_READ_SEARCH, BPF, …) is a known way out of a
 * container onto the node, where the kubelet keeps the sidecar's pod token.
 */
const BASELINE_CAPABILITIES = new Set(['AUDIT_WRITE', 'CHOWN', 'DAC_OVERRIDE', 'FOWNER', 'FSETID', 'KILL', 'MKNOD', 'NET_BIND_SERVICE', 'SETFCAP', 'SETGID', 'SETPCAP', 'SETUID', 'SYS_CHROOT']);

interface Confinement {
  seccompProfile?: { type?: string };
  appArmorProfile?: { type?: string };
  windowsOptions?: { hostProcess?: boolean };
}

/** A pod's or a container's security context that lifts the confinement the node relies on, as the baseline profile refuses it. */
function unconfined(context: Confinement | undefined, at: string): FieldViolation[] {
  const violations: FieldViolation[] = [];
  const why = "the runtime's confinement is what keeps a container from the node, where the kubelet keeps the sidecar's pod token";
  if (context?.seccompProfile?.type === 'Unconfined') violations.push({ field: `${at}.seccompProfile.type`, message: `agent pods may not run without a seccomp profile: ${why}; use RuntimeDefault or Localhost` });
  if (context?.appArmorProfile?.type === 'Unconfined') violations.push({ field: `${at}.appArmorProfile.type`, message: `agent pods may not run without an AppArmor profile: ${why}; use RuntimeDefault or Localhost` });
  if (context?.windowsOptions?.hostProcess === true) violations.push({ field: `${at}.windowsOptions.hostProcess`, message: `agent pods may not run as a host process: it runs on the node itself; remove hostProcess: true` });
  return violations;
}

/**
 * An app container without NET_RAW: the container runtime grants it by default, and with it a
 * container running as root captures what the sidecar sends on the pod's network (a plain-HTTP
 * MCP server's credential). Nothing an agent does needs raw sockets.
 */
function withoutNetRaw<T extends V1Container>(c: T): T {
  const drop = c.securityContext?.capabilities?.drop ?? [];
  if (drop.some((cap) => ['NET_RAW', 'CAP_NET_RAW', 'ALL'].includes(cap.toUpperCase()))) return c;
  return { ...c, securityContext: { ...c.securityContext, capabilities: { ...c.securityContext?.capabilities, drop: [...drop, 'NET_RAW'] } } };
}

const isAwsConfigDir = (mountPath: string) => /\/\.aws(\/|$)/.test(mountPath);

type ContainerList = 'containers' | 'initContainers' | 'ephemeralContainers';

/**
 * Every way an agent pod could reach AWS credentials other than through the sidecar, each with
 * its field path and the fix.
 */
export function staticKeyViolations(pod: V1Pod): FieldViolation[] {
  const violations: FieldViolation[] = [];
  const check = (containers: (V1Container | V1EphemeralContainer)[] | undefined, kind: ContainerList) => {
    containers?.forEach((c, i) => {
      c.env?.forEach((e, j) => {
        const what = CREDENTIAL_ENV[e.name];
        if (what) {
          violations.push({ field: `spec.${kind}[${i}].env[${j}]`, message: `${e.name} would give the agent ${what}; remove it: chainwarden issues per-task credentials through AWS_CONTAINER_CREDENTIALS_FULL_URI` });
        }
      });
      // A privileged container reads the node, where the kubelet keeps the sidecar's pod token.
      if (c.securityContext?.privileged === true) {
        violations.push({ field: `spec.${kind}[${i}].securityContext.privileged`, message: "agent pods may not run privileged containers: one could read the sidecar's pod token from the node; remove privileged: true" });
      }
      c.securityContext?.capabilities?.add?.forEach((cap, j) => {
        const name = cap.toUpperCase().replace(/^CAP_/, '');
        if (NETWORK_CAPABILITIES.has(name)) {
          violations.push({ field: `spec.${kind}[${i}].securityContext.capabilities.add[${j}]`, message: `agent pods may not add ${cap}: with it a container reads or redirects the sidecar's traffic on the pod's network, where it carries the credentials the broker injects; remove it` });
        } else if (!BASELINE_CAPABILITIES.has(name)) {
          violations.push({ field: `spec.${kind}[${i}].securityContext.capabilities.add[${j}]`, message: `agent pods may not add ${cap}: beyond the Pod Security baseline's capabilities (${[...BASELINE_CAPABILITIES].join(', ')}) a container can reach the node, where the kubelet keeps the sidecar's pod token; remove it` });
        }
      });
      violations.push(...unconfined(c.securityContext, `spec.${kind}[${i}].securityContext`));
      // An unmasked /proc shows the node's kernel interfaces the runtime hides.
      if (c.securityContext?.procMount !== undefined && c.securityContext.procMount !== 'Default') {
        violations.push({ field: `spec.${kind}[${i}].securityContext.procMount`, message: `agent pods may not mount /proc ${c.securityContext.procMount}: it shows the node's kernel interfaces the runtime masks; remove procMount` });
      }
      c.envFrom?.forEach((e, j) => {
        const [ref, source, single] = e.secretRef ? ['secretRef', `Secret ${e.secretRef.name}`, 'secretKeyRef'] : ['configMapRef', `ConfigMap ${e.configMapRef?.name ?? ''}`, 'configMapKeyRef'];
        violations.push({ field: `spec.${kind}[${i}].envFrom[${j}].${ref}`, message: `agent pods may not load a whole ${source} into the environment (it could hold AWS credential variables); reference the keys you need one by one with env[].valueFrom.${single}` });
      });
      c.volumeMounts?.forEach((m, j) => {
        if (isAwsConfigDir(m.mountPath)) {
          violations.push({ field: `spec.${kind}[${i}].volumeMounts[${j}].mountPath`, message: `${m.mountPath} is an AWS config directory, where SDKs find shared credentials and profiles; mount it elsewhere or remove it: chainwarden issues per-task credentials through AWS_CONTAINER_CREDENTIALS_FULL_URI` });
        }
      });
    });
  };
  check(pod.spec?.containers, 'containers');
  check(pod.spec?.initContainers, 'initContainers');
  check(pod.spec?.ephemeralContainers, 'ephemeralContainers');
  pod.spec?.volumes?.forEach((v, i) => {
    if (v.name === TOKEN_VOLUME) return;
    if (v.hostPath) {
      violations.push({ field: `spec.volumes[${i}].hostPath`, message: `agent pods may not mount the node's file system (${v.hostPath.path}): the kubelet keeps the sidecar's pod token there; use an emptyDir, a ConfigMap or a PersistentVolumeClaim` });
    }
    v.projected?.sources?.forEach((source, j) => {
      if (source.serviceAccountToken?.audience === BROKER_AUDIENCE) {
        violations.push({ field: `spec.volumes[${i}].projected.sources[${j}].serviceAccountToken.audience`, message: `a token for audience ${BROKER_AUDIENCE} is the sidecar's alone; remove this volume: app containers reach the broker through the sidecar` });
      }
    });
  });
  return violations;
}

/** Pod-level settings that would expose the sidecar, or what only it holds, beyond itself. */
function podViolations(pod: V1Pod): FieldViolation[] {
  const violations: FieldViolation[] = [];
  if (pod.spec?.hostNetwork === true) {
    violations.push({ field: 'spec.hostNetwork', message: "agent pods may not use the node's network: the sidecar's loopback listener would be reachable from every process on the node; remove hostNetwork: true" });
  }
  // With a process namespace shared, an app container running as the sidecar's user reads the pod
  // token through /proc/<sidecar>/root: the broker's own endpoints, unmediated, for the agent.
  if (pod.spec?.shareProcessNamespace === true) {
    violations.push({ field: 'spec.shareProcessNamespace', message: "agent pods may not share a process namespace: an app container could read the sidecar's pod token through /proc; remove shareProcessNamespace: true" });
  }
  if (pod.spec?.hostPID === true) {
    violations.push({ field: 'spec.hostPID', message: "agent pods may not use the node's process namespace: the sidecar's pod token would be readable through /proc from the node's processes; remove hostPID: true" });
  }
  if (pod.spec?.hostIPC === true) {
    violations.push({ field: 'spec.hostIPC', message: "agent pods may not use the node's IPC namespace: its shared memory is the node's processes'; remove hostIPC: true" });
  }
  violations.push(...unconfined(pod.spec?.securityContext, 'spec.securityContext'));
  for (const [name, value] of Object.entries(pod.metadata?.annotations ?? {})) {
    if (name.startsWith('container.apparmor.security.beta.kubernetes.io/') && value === 'unconfined') {
      violations.push({ field: `metadata.annotations[${name}]`, message: "agent pods may not run a container without an AppArmor profile: the runtime's confinement is what keeps a container from the node, where the kubelet keeps the sidecar's pod token; use runtime/default" });
    }
  }
  return violations;
}

/**
 * The volume the API server's ServiceAccount admission adds for the API token (it runs before
 * webhooks): a projected service-account token with the API server's own audience.
 */
const isApiTokenVolume = (v: V1Volume) => v.name.startsWith('kube-api-access-') && (v.projected?.sources ?? []).some((s) => s.serviceAccountToken && !s.serviceAccountToken.audience);

/** The pod as it should be once injected. Applying it to its own output changes nothing. */
export function injectPod(pod: V1Pod, config: InjectionConfig, spiffeId: string, gateway = true): V1Pod {
  const out = structuredClone(pod);
  out.metadata = { ...out.metadata, annotations: { ...out.metadata?.annotations, [SPIFFE_ID_ANNOTATION]: spiffeId } };
  const spec = out.spec ?? { containers: [] };
  out.spec = spec;
  // An agent needs no Kubernetes API token: one in its file system would let a compromised agent
  // act with its service account's RBAC. It is mounted only when the pod asks for it explicitly.
  const apiToken = spec.automountServiceAccountToken === true;
  if (!apiToken) spec.automountServiceAccountToken = false;
  const dropped = new Set(apiToken ? [] : (spec.volumes ?? []).filter(isApiTokenVolume).map((v) => v.name));
  const injectedVolumes = volumes(config);
  spec.volumes = [...(spec.volumes ?? []).filter((v) => !dropped.has(v.name) && !injectedVolumes.some((x) => x.name === v.name)), ...injectedVolumes];
  // Only the sidecar sees the broker token or writes the local token, whatever the pod asked for.
  const ownMounts = (c: V1Container) => (c.volumeMounts ?? []).filter((m) => m.name !== TOKEN_VOLUME && m.name !== LOCAL_VOLUME && !dropped.has(m.name));
  const inits = (spec.initContainers ?? []).filter((c) => c.name !== SIDECAR_NAME).map((c) => withoutNetRaw(c.volumeMounts ? { ...c, volumeMounts: ownMounts(c) } : c));
  spec.initContainers = [sidecar(config, gateway), ...inits];
  const env = injectedEnv(config, gateway);
  spec.containers = spec.containers.map((c) => ({
    ...withoutNetRaw(c),
    env: [...(c.env ?? []).filter((e) => !env.some((x) => x.name === e.name)), ...env],
    volumeMounts: [...ownMounts(c), { name: LOCAL_VOLUME, mountPath: LOCAL_DIR, readOnly: true }],
  }));
  return out;
}

/** JSON patch operations for the top-level fields that differ. */
function diff(before: V1Pod, after: V1Pod): JsonPatchOperation[] {
  const ops: JsonPatchOperation[] = [];
  const fields: [string, unknown, unknown][] = [
    ['/metadata/annotations', before.metadata?.annotations, after.metadata?.annotations],
    ['/spec/volumes', before.spec?.volumes, after.spec?.volumes],
    ['/spec/initContainers', before.spec?.initContainers, after.spec?.initContainers],
    ['/spec/containers', before.spec?.containers, after.spec?.containers],
    ['/spec/automountServiceAccountToken', before.spec?.automountServiceAccountToken, after.spec?.automountServiceAccountToken],
  ];
  for (const [path, a, b] of fields) if (!isDeepStrictEqual(a, b)) ops.push({ op: 'add', path, value: b });
  return ops;
}

const TASK_LABEL_FIELD = `metadata.labels["${TASK_LABEL}"]`;

/**
 * A pod joins a task when it is created, and only then: a label added later would hand a pod the
 * task's identity without injection (its containers would hold whatever they were created
 * with), and a label removed or changed would move a pod between tasks behind the controller.
 */
function taskLabelViolations(oldPod: V1Pod | undefined, pod: V1Pod): FieldViolation[] {
  const before = oldPod?.metadata?.labels?.[TASK_LABEL];
  const after = pod.metadata?.labels?.[TASK_LABEL];
  if (before === after) return [];
  const change = before === undefined ? `adding ${TASK_LABEL}=${after ?? ''} to a running pod` : after === undefined ? `removing ${TASK_LABEL}=${before}` : `changing ${TASK_LABEL} from ${before} to ${after}`;
  return [{ field: TASK_LABEL_FIELD, message: `the task label is immutable (${change} is refused): a pod joins a task only when it is created; create a new pod with the label instead` }];
}

/**
 * Ephemeral containers are refused on agent pods rather than checked like the others: one can
 * target the sidecar's process namespace, or mount the pod's volumes, and so read the broker
 * token that only the sidecar may hold. Debugging needs a copy of the pod without the task label.
 */
function ephemeralContainerViolations(oldPod: V1Pod | undefined, pod: V1Pod): FieldViolation[] {
  const existing = new Set((oldPod?.spec?.ephemeralContainers ?? []).map((c) => c.name));
  return (pod.spec?.ephemeralContainers ?? []).flatMap((c, i) =>
    existing.has(c.name)
      ? []
      : [{ field: `spec.ephemeralContainers[${i}]`, message: `ephemeral container ${c.name} cannot be added to an agent pod: it could read the sidecar's broker token; debug a copy of the pod without the ${TASK_LABEL} label (kubectl debug --copy-to, then remove the label)` }],
  );
}

/**
 * The sidecar stays as injected: its image is the one field of it a pod update may change, and
 * another image would run with the broker token mounted and hand it to whoever built it.
 */
function sidecarViolations(oldPod: V1Pod | undefined, pod: V1Pod): FieldViolation[] {
  const sidecar = (p: V1Pod | undefined) => JSON.stringify([...(p?.spec?.initContainers ?? []), ...(p?.spec?.containers ?? [])].find((c) => c.name === SIDECAR_NAME) ?? null);
  if (sidecar(oldPod) === sidecar(pod)) return [];
  return [{ field: 'spec.initContainers', message: `the ${SIDECAR_NAME} container is the one admission injected and cannot be changed on a running pod (its image included): it holds the pod's broker token; create a new pod instead` }];
}

/**
 * Mutating, for pods labelled chainwarden.io/task. On CREATE: refuses every other source of
 * AWS credentials and host networking, then injects the projected token (sidecar only), the
 * local-token emptyDir, the `chainwarden agent` sidecar, the environment an unmodified AWS SDK
 * reads, and the SPIFFE ID annotation; admitting an injected pod again changes nothing. On
 * UPDATE (and the ephemeralcontainers subresource): the task label and the sidecar are
 * immutable and ephemeral containers are refused.
 */
export function podInjectionPlugin(config: InjectionConfig, tasks: ObjectReader<AgentTask>): AdmissionPlugin {
  return {
    name: 'agent-pod-injection',
    resources: ['pods'],
    subResources: ['ephemeralcontainers'],
    operations: ['CREATE', 'UPDATE'],
    async admit(request) {
      const pod = request.object as V1Pod;
      if (request.operation === 'UPDATE') {
        const oldPod = request.oldObject as V1Pod | undefined;
        const wasAgent = oldPod?.metadata?.labels?.[TASK_LABEL] !== undefined;
        const violations = [...taskLabelViolations(oldPod, pod), ...(wasAgent ? [...ephemeralContainerViolations(oldPod, pod), ...sidecarViolations(oldPod, pod)] : [])];
        return violations.length > 0 ? deny('Pod', violations) : allow();
      }
      const taskName = pod.metadata?.labels?.[TASK_LABEL];
      if (!taskName) return allow();
      const violations = [...podViolations(pod), ...staticKeyViolations(pod)];
      if (violations.length > 0) return deny('Pod', violations);
      const namespace = request.namespace ?? pod.metadata?.namespace ?? '';
      const serviceAccount = pod.spec?.serviceAccountName ?? 'default';
      const task = await tasks.get(namespace, taskName);
      if (task && task.spec.serviceAccountName !== serviceAccount) {
        return deny('Pod', [{ field: 'spec.serviceAccountName', message: `AgentTask ${taskName} runs as service account ${task.spec.serviceAccountName}, not ${serviceAccount}; set spec.serviceAccountName: ${task.spec.serviceAccountName}` }]);
      }
      // Gateway is the default delivery: a pod whose task is not there yet gets the gateway too.
      const gateway = !task || (task.spec.credentials ?? []).some((c) => c.aws.delivery !== 'Direct');
      const injected = injectPod(pod, config, spiffeIdFor(config.trustDomain, namespace, serviceAccount, taskName), gateway);
      return allow(diff(pod, injected));
    },
  };
}
