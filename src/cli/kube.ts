import { accessSync, constants, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { ChainwardenError } from '../errors.js';
import { SERVICE_ACCOUNT_DIR } from '../kube/access.js';

/**
 * --kubeconfig FILE, else $KUBECONFIG or ~/.kube/config, else the in-cluster service account.
 * Where none of them is there, or a file named is not readable, the error says which and what to
 * pass, rather than what the client makes of a cluster it defaults to.
 */
export function loadKubeConfig(file?: string, env: NodeJS.ProcessEnv = process.env): KubeConfig {
  const readable = (f: string, from: string) => {
    try {
      accessSync(f, constants.R_OK);
    } catch (err) {
      throw new ChainwardenError('no_cluster', `cannot read the kubeconfig ${f} (${from}): ${(err as Error).message}; pass --kubeconfig FILE`);
    }
  };
  const kc = new KubeConfig();
  if (file) {
    readable(file, '--kubeconfig');
    kc.loadFromFile(file);
    return kc;
  }
  if (env.KUBECONFIG) {
    for (const f of env.KUBECONFIG.split(path.delimiter).filter(Boolean)) readable(f, '$KUBECONFIG');
  } else if (!existsSync(path.join(os.homedir(), '.kube', 'config')) && !existsSync(path.join(SERVICE_ACCOUNT_DIR, 'token'))) {
    throw new ChainwardenError('no_cluster', 'no kubeconfig found: not --kubeconfig, $KUBECONFIG, ~/.kube/config nor an in-cluster service account; pass --kubeconfig FILE or set KUBECONFIG');
  }
  kc.loadFromDefault();
  return kc;
}
