import { KubeConfig } from '@kubernetes/client-node';

/** --kubeconfig FILE, else $KUBECONFIG or ~/.kube/config, else the in-cluster service account. */
export function loadKubeConfig(file?: string): KubeConfig {
  const kc = new KubeConfig();
  if (file) kc.loadFromFile(file);
  else kc.loadFromDefault();
  return kc;
}
