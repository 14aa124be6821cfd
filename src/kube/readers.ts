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

/**
 * Reads from an informer's cache, and from the API server on a miss, so that an object created
 * a moment ago (a policy applied just before its task) is found before the watch delivers it.
 */
export function cachedReader<T>(cache: { get(namespace: string, name: string): unknown }, parse: (raw: unknown) => T, fallback: ObjectReader<T>): ObjectReader<T> {
  return {
    async get(namespace, name) {
      const hit = cache.get(namespace, name);
      if (hit !== undefined) return parse(hit);
      return fallback.get(namespace, name);
    },
  };
}
