import { KubeConfig } from '@kubernetes/client-node';
import { stringify } from 'yaml';
import type { KeyPairPem } from '../pki/authority.js';

const b64 = (text: string) => Buffer.from(text, 'utf8').toString('base64');

/** A kubeconfig document for one user authenticating with a client certificate. */
export function kubeconfigYaml(server: string, caPem: string, user: string, client: KeyPairPem): string {
  return stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'chainwarden-local', cluster: { server, 'certificate-authority-data': b64(caPem) } }],
    users: [{ name: user, user: { 'client-certificate-data': b64(client.certPem), 'client-key-data': b64(client.keyPem) } }],
    contexts: [{ name: user, context: { cluster: 'chainwarden-local', user, namespace: 'default' } }],
    'current-context': user,
  });
}

export function kubeConfigFromYaml(yaml: string): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromString(yaml);
  return kc;
}
