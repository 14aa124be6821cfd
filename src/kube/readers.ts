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

interface Parsed<T> {
  version: string;
  value: T | undefined;
}

/**
 * The one reader of a kind's objects for everything in the operator: parsed once per version
 * from the informer's cache. `current` answers from the cache alone (hot paths: hops,
 * credentials, reconciles); `get` also asks the API server on a miss, so an object created a
 * moment ago (a policy applied just before its task) is found before the watch delivers it.
 * An object that does not parse reads as absent: the schema admitted it, so this only happens
 * across versions, and nothing may act on what it cannot read.
 */
export class ParsedReader<T> implements ObjectReader<T> {
  private readonly parsed = new Map<string, Parsed<T>>();

  constructor(
    private readonly cache: { get(namespace: string, name: string): { metadata: { uid?: string; resourceVersion?: string } } | undefined },
    private readonly parse: (raw: unknown) => T,
    private readonly fallback?: ObjectReader<T>,
  ) {}

  current(namespace: string, name: string): T | undefined {
    const raw = this.cache.get(namespace, name);
    const key = `${namespace}/${name}`;
    if (!raw) {
      this.parsed.delete(key);
      return undefined;
    }
    const version = `${raw.metadata.uid ?? ''}@${raw.metadata.resourceVersion ?? ''}`;
    const hit = this.parsed.get(key);
    if (hit?.version === version) return hit.value;
    let value: T | undefined;
    try {
      value = this.parse(raw);
    } catch {
      value = undefined;
    }
    this.parsed.set(key, { version, value });
    return value;
  }

  async get(namespace: string, name: string): Promise<T | undefined> {
    if (this.cache.get(namespace, name) !== undefined) return this.current(namespace, name);
    return this.fallback?.get(namespace, name);
  }
}
