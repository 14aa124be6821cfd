import { GROUP, VERSION } from '../api/schema.js';
import { ChainwardenError } from '../errors.js';
import type { KubeAccess } from './access.js';
import { rawRequest } from './raw.js';

/** Reads one namespaced object by name; undefined when it does not exist. */
export interface ObjectReader<T> {
  get(namespace: string, name: string): Promise<T | undefined>;
}

/** Reads chainwarden custom resources straight from the API server. */
export function customObjectReader<T>(kc: KubeAccess, plural: string, parse: (raw: unknown) => T): ObjectReader<T> {
  return {
    async get(namespace, name) {
      const res = await rawRequest(kc, 'GET', `/apis/${GROUP}/${VERSION}/namespaces/${encodeURIComponent(namespace)}/${plural}/${encodeURIComponent(name)}`);
      if (res.status === 404) return undefined;
      if (res.status !== 200) {
        const message = (res.body as { message?: string } | undefined)?.message ?? JSON.stringify(res.body);
        throw new ChainwardenError('read_failed', `reading ${plural} ${namespace}/${name}: ${res.status} ${message}`);
      }
      return parse(res.body);
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
