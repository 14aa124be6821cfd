import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ApiextensionsV1Api, type KubeConfig, type V1CustomResourceDefinition } from '@kubernetes/client-node';
import { parseAllDocuments } from 'yaml';
import { ChainwardenError, errorMessage } from '../errors.js';
import { serverSideApply } from '../kube/raw.js';

/** The package's own `crds/` directory, from `src/controlplane` and from `dist/controlplane` alike. */
export const PACKAGE_CRD_DIR = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..', 'crds');

export async function readCrds(dir: string): Promise<V1CustomResourceDefinition[]> {
  let names: string[];
  try {
    names = (await readdir(dir)).filter((n) => n.endsWith('.yaml') || n.endsWith('.yml')).sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const crds: V1CustomResourceDefinition[] = [];
  for (const name of names) {
    for (const doc of parseAllDocuments(await readFile(path.join(dir, name), 'utf8'))) {
      const obj = doc.toJS() as V1CustomResourceDefinition | null;
      if (obj?.kind === 'CustomResourceDefinition') crds.push(obj);
    }
  }
  return crds;
}

/**
 * Server-side applies every CRD in `dir` and waits until the API server serves each of them,
 * so that the caller can create custom resources as soon as this returns.
 */
export async function installCrds(kc: KubeConfig, dir: string, timeoutMs = 30_000): Promise<string[]> {
  const crds = await readCrds(dir);
  for (const crd of crds) {
    const name = crd.metadata?.name ?? '';
    try {
      await serverSideApply(kc, `/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${name}`, crd);
    } catch (err) {
      throw new ChainwardenError('crd_install_failed', `installing CRD ${name} from ${dir}: ${errorMessage(err)}`, { cause: err });
    }
  }
  const ext = kc.makeApiClient(ApiextensionsV1Api);
  const names = crds.map((c) => c.metadata?.name ?? '');
  const deadline = Date.now() + timeoutMs;
  for (const name of names) {
    for (;;) {
      const current = await ext.readCustomResourceDefinition({ name });
      const established = current.status?.conditions?.some((c) => c.type === 'Established' && c.status === 'True');
      if (established) break;
      if (Date.now() > deadline) throw new ChainwardenError('crd_not_established', `CRD ${name} was not established within ${timeoutMs / 1000}s`);
      await sleep(100);
    }
  }
  return names;
}
