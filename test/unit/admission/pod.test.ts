import type { V1Pod } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { injectPod, staticKeyViolations, type InjectionConfig } from '../../../src/admission/plugins/pod.js';

const config: InjectionConfig = { image: 'img', brokerUrl: 'https://broker', brokerCaPem: 'PEM', trustDomain: 'cluster.local', port: 15080, tokenExpirationSeconds: 600 };
const pod: V1Pod = { metadata: { name: 'p', labels: { 'chainwarden.io/task': 't' } }, spec: { serviceAccountName: 'sa', containers: [{ name: 'a', image: 'x', env: [{ name: 'KEEP', value: '1' }] }, { name: 'b', image: 'y' }] } };

describe('injectPod', () => {
  it('is idempotent', () => {
    const once = injectPod(pod, config, 'spiffe://id');
    expect(injectPod(once, config, 'spiffe://id')).toEqual(once);
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
    const sneaky: V1Pod = { ...pod, spec: { containers: [{ name: 'a', image: 'x', env: [{ name: 'AWS_CONTAINER_CREDENTIALS_FULL_URI', value: 'http://evil' }] }] } };
    const env = injectPod(sneaky, config, 'id').spec?.containers[0]?.env ?? [];
    expect(env.filter((e) => e.name === 'AWS_CONTAINER_CREDENTIALS_FULL_URI')).toEqual([{ name: 'AWS_CONTAINER_CREDENTIALS_FULL_URI', value: 'http://127.0.0.1:15080/v1/credentials' }]);
  });
});

describe('staticKeyViolations', () => {
  it('finds AWS key variables in containers and init containers, and whole Secrets in envFrom', () => {
    const bad: V1Pod = {
      spec: {
        initContainers: [{ name: 'i', image: 'x', env: [{ name: 'AWS_ACCESS_KEY_ID', value: 'AKIA' }] }],
        containers: [{ name: 'a', image: 'x', env: [{ name: 'OK', value: '1' }, { name: 'AWS_SESSION_TOKEN', value: 't' }], envFrom: [{ configMapRef: { name: 'c' } }, { secretRef: { name: 's' } }] }],
      },
    };
    expect(staticKeyViolations(bad).map((v) => v.field)).toEqual(['spec.containers[0].env[1]', 'spec.containers[0].envFrom[1].secretRef', 'spec.initContainers[0].env[0]']);
    expect(staticKeyViolations(pod)).toEqual([]);
  });
});
