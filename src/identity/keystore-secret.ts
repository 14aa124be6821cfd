import type { KubeAccess } from '../kube/access.js';
import { rawRequest } from '../kube/raw.js';
import type { KeyStorePort, StoredKey } from './keyring.js';

interface Secret {
  metadata: { name: string; namespace: string; resourceVersion?: string };
  data?: Record<string, string>;
}

const FIELD = 'keys.json';

/** The SVID keys in a Secret of the operator's namespace, written with resourceVersion preconditions. */
export function secretKeyStore(kc: KubeAccess, namespace: string, name: string): KeyStorePort {
  const path = `/api/v1/namespaces/${namespace}/secrets`;
  const body = (keys: StoredKey[], resourceVersion?: string) => ({
    apiVersion: 'v1',
    kind: 'Secret',
    type: 'Opaque',
    metadata: { name, namespace, labels: { 'app.kubernetes.io/part-of': 'chainwarden' }, ...(resourceVersion ? { resourceVersion } : {}) },
    data: { [FIELD]: Buffer.from(JSON.stringify(keys)).toString('base64') },
  });
  const check = (status: number, what: string, raw: unknown) => {
    if (status >= 300 && status !== 409) throw new Error(`${what} Secret ${namespace}/${name}: ${status} ${JSON.stringify(raw).slice(0, 300)}`);
    return status < 300;
  };
  return {
    async read() {
      const res = await rawRequest(kc, 'GET', `${path}/${name}`);
      if (res.status === 404) return undefined;
      check(res.status, 'reading', res.body);
      const secret = res.body as Secret;
      const data = secret.data?.[FIELD];
      const keys = data ? (JSON.parse(Buffer.from(data, 'base64').toString('utf8')) as StoredKey[]) : [];
      return { keys, version: secret.metadata.resourceVersion ?? '' };
    },
    async create(keys) {
      const res = await rawRequest(kc, 'POST', path, body(keys));
      return check(res.status, 'creating', res.body);
    },
    async replace(keys, version) {
      const res = await rawRequest(kc, 'PUT', `${path}/${name}`, body(keys, version));
      return check(res.status, 'updating', res.body);
    },
  };
}
