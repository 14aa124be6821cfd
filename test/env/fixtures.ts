import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { inject, test as base } from 'vitest';
import { kubeConfigForUser, type EnvironmentDescription } from '../../src/controlplane/environment.js';

export interface IntegrationFixtures {
  /** The shared control plane. */
  env: EnvironmentDescription;
  /** Admin kubeconfig (system:masters). */
  admin: KubeConfig;
  /** A namespace created for this test alone. */
  namespace: string;
  /** A kubeconfig that authenticates as `user` in `groups` by client certificate. */
  userKubeConfig: (user: string, groups?: string[]) => Promise<KubeConfig>;
}

let adminYaml: Promise<string> | undefined;

/** `test` with the control plane at hand and a fresh namespace per test. */
export const test = base.extend<IntegrationFixtures>({
  // eslint-disable-next-line no-empty-pattern -- vitest reads fixture dependencies from the pattern
  env: async ({}, use) => {
    await use(inject('env'));
  },
  admin: async ({ env }, use) => {
    adminYaml ??= readFile(env.kubeconfig, 'utf8');
    const kc = new KubeConfig();
    kc.loadFromString(await adminYaml);
    await use(kc);
  },
  namespace: async ({ admin }, use) => {
    const name = `t-${randomBytes(4).toString('hex')}`;
    await admin.makeApiClient(CoreV1Api).createNamespace({ body: { metadata: { name, labels: { 'chainwarden.io/test': 'true' } } } });
    await use(name);
  },
  userKubeConfig: async ({ env }, use) => {
    await use((user, groups = []) => kubeConfigForUser(env, user, groups));
  },
});

export { expect, describe } from 'vitest';
