import { isDeepStrictEqual } from 'node:util';
import type { V1Container, V1EnvVar, V1Pod, V1Volume } from '@kubernetes/client-node';
import type { FieldViolation } from '../../api/parse.js';
import type { AgentTask } from '../../api/schema.js';
import { BROKER_AUDIENCE, TASK_LABEL } from '../../api/task.js';
import { urlOf, type ServingUrl } from '../../server/url.js';
import { spiffeIdFor } from '../../identity/spiffe.js';
import type { ObjectReader } from '../../kube/readers.js';
import { allow, deny, type AdmissionPlugin, type JsonPatchOperation } from '../review.js';

export const SPIFFE_ID_ANNOTATION = 'chainwarden.io/spiffe-id';
export const SIDECAR_NAME = 'chainwarden-agent';
export const TOKEN_VOLUME = 'chainwarden-token';
export const TOKEN_DIR = '/var/run/secrets/chainwarden';
export const TOKEN_PATH = `${TOKEN_DIR}/token`;

/** What every injected agent pod gets; set once per operator. */
export interface InjectionConfig {
  /** The operator image; the sidecar runs `chainwarden agent` from it. */
  image: string;
  brokerUrl: ServingUrl;
  brokerCaPem: string;
  trustDomain: string;
  /** Loopback port of the sidecar inside the pod. */
  port: number;
  tokenExpirationSeconds: number;
}

/** Environment variables that would hand an agent long-lived AWS keys. */
const STATIC_AWS_KEYS = ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_SHARED_CREDENTIALS_FILE', 'AWS_PROFILE'];

export function injectedEnv(config: InjectionConfig): V1EnvVar[] {
  const base = `http://127.0.0.1:${config.port}`;
  return [
    { name: 'AWS_CONTAINER_CREDENTIALS_FULL_URI', value: `${base}/v1/credentials` },
    { name: 'AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE', value: TOKEN_PATH },
    { name: 'CHAINWARDEN_URL', value: base },
  ];
}

function sidecar(config: InjectionConfig): V1Container {
  return {
    name: SIDECAR_NAME,
    image: config.image,
    args: ['agent', '--broker', urlOf(config.brokerUrl), '--token-file', TOKEN_PATH, '--listen', `127.0.0.1:${config.port}`],
    env: [{ name: 'CHAINWARDEN_BROKER_CA', value: config.brokerCaPem }],
    // A native sidecar: started before the agent, stopped after it.
    restartPolicy: 'Always',
    volumeMounts: [{ name: TOKEN_VOLUME, mountPath: TOKEN_DIR, readOnly: true }],
    resources: { requests: { cpu: '10m', memory: '32Mi' }, limits: { memory: '96Mi' } },
    securityContext: {
      runAsNonRoot: true,
      runAsUser: 65532,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      capabilities: { drop: ['ALL'] },
    },
  };
}

function tokenVolume(config: InjectionConfig): V1Volume {
  return {
    name: TOKEN_VOLUME,
    projected: { sources: [{ serviceAccountToken: { audience: BROKER_AUDIENCE, expirationSeconds: config.tokenExpirationSeconds, path: 'token' } }] },
  };
}

/** Every way the pod could carry static AWS keys, each with its field path. */
export function staticKeyViolations(pod: V1Pod): FieldViolation[] {
  const violations: FieldViolation[] = [];
  const check = (containers: V1Container[] | undefined, kind: 'containers' | 'initContainers') => {
    (containers ?? []).forEach((c, i) => {
      (c.env ?? []).forEach((e, j) => {
        if (STATIC_AWS_KEYS.includes(e.name)) {
          violations.push({ field: `spec.${kind}[${i}].env[${j}]`, message: `${e.name} would give the agent static AWS credentials; remove it: chainwarden issues per-task credentials through AWS_CONTAINER_CREDENTIALS_FULL_URI` });
        }
      });
      (c.envFrom ?? []).forEach((e, j) => {
        if (e.secretRef) {
          violations.push({ field: `spec.${kind}[${i}].envFrom[${j}].secretRef`, message: `agent pods may not load a whole Secret into the environment (it could hold static AWS keys); reference the keys you need one by one with env[].valueFrom.secretKeyRef` });
        }
      });
    });
  };
  check(pod.spec?.containers, 'containers');
  check(pod.spec?.initContainers, 'initContainers');
  return violations;
}

/** The pod as it should be once injected. Applying it to its own output changes nothing. */
export function injectPod(pod: V1Pod, config: InjectionConfig, spiffeId: string): V1Pod {
  const out = structuredClone(pod);
  out.metadata = { ...out.metadata, annotations: { ...out.metadata?.annotations, [SPIFFE_ID_ANNOTATION]: spiffeId } };
  const spec = out.spec ?? { containers: [] };
  out.spec = spec;
  const volumes = (spec.volumes ?? []).filter((v) => v.name !== TOKEN_VOLUME);
  spec.volumes = [...volumes, tokenVolume(config)];
  const inits = (spec.initContainers ?? []).filter((c) => c.name !== SIDECAR_NAME);
  spec.initContainers = [sidecar(config), ...inits];
  const env = injectedEnv(config);
  spec.containers = spec.containers.map((c) => ({
    ...c,
    env: [...(c.env ?? []).filter((e) => !env.some((x) => x.name === e.name)), ...env],
    volumeMounts: [...(c.volumeMounts ?? []).filter((m) => m.name !== TOKEN_VOLUME), { name: TOKEN_VOLUME, mountPath: TOKEN_DIR, readOnly: true }],
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
  ];
  for (const [path, a, b] of fields) if (!isDeepStrictEqual(a, b)) ops.push({ op: 'add', path, value: b });
  return ops;
}

/**
 * Mutating, for pods labelled chainwarden.io/task: refuses static AWS keys, then injects the
 * projected token, the `chainwarden agent` sidecar, the environment an unmodified AWS SDK
 * reads, and the SPIFFE ID annotation. Admitting an injected pod again changes nothing.
 */
export function podInjectionPlugin(config: InjectionConfig, tasks: ObjectReader<AgentTask>): AdmissionPlugin {
  return {
    name: 'agent-pod-injection',
    resources: ['pods'],
    operations: ['CREATE'],
    async admit(request) {
      const pod = request.object as V1Pod;
      const taskName = pod.metadata?.labels?.[TASK_LABEL];
      if (!taskName) return allow();
      const violations = staticKeyViolations(pod);
      if (violations.length > 0) return deny('Pod', violations);
      const namespace = request.namespace ?? pod.metadata?.namespace ?? '';
      const serviceAccount = pod.spec?.serviceAccountName ?? 'default';
      const task = await tasks.get(namespace, taskName);
      if (task && task.spec.serviceAccountName !== serviceAccount) {
        return deny('Pod', [{ field: 'spec.serviceAccountName', message: `AgentTask ${taskName} runs as service account ${task.spec.serviceAccountName}, not ${serviceAccount}; set spec.serviceAccountName: ${task.spec.serviceAccountName}` }]);
      }
      const injected = injectPod(pod, config, spiffeIdFor(config.trustDomain, namespace, serviceAccount, taskName));
      return allow(diff(pod, injected));
    },
  };
}
