import { CustomObjectsApi, type KubeConfig } from '@kubernetes/client-node';
import { GROUP, VERSION } from '../api/schema.js';
import { isNotFound } from './errors.js';

/** Reads one namespaced object by name; undefined when it does not exist. */
export interface ObjectReader<T> {
  get(namespace: string, name: string): Promise<T | undefined>;
}

/** Reads chainwarden custom resources straight from the API server. */
export function customObjectReader<T>(kc: KubeConfig, plural: string, parse: (raw: unknown) => T): ObjectReader<T> {
  const api = kc.makeApiClient(CustomObjectsApi);
  return {
    async get(namespace, name) {
      try {
        return parse(await api.getNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural, name }));
      } catch (err) {
        if (isNotFound(err)) return undefined;
        throw err;
      }
    },
  };
}
