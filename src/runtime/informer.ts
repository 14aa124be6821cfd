import { setTimeout as sleep } from 'node:timers/promises';
import { errorMessage } from '../errors.js';
import type { KubeAccess } from '../kube/access.js';
import { rawRequest, watchStream } from '../kube/raw.js';
import type { Logger } from '../log.js';
import { shareStrings } from './shared-strings.js';

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata?: { name?: string; namespace?: string; uid?: string; resourceVersion?: string; labels?: Record<string, string> };
}

export type InformerEvent = 'add' | 'update' | 'delete';
export type InformerHandler<T> = (event: InformerEvent, obj: T, old?: T) => void;

export const objectKey = (obj: KubeObject): string => `${obj.metadata?.namespace ?? ''}/${obj.metadata?.name ?? ''}`;

export interface InformerOptions<T extends KubeObject = KubeObject> {
  /** A collection path, e.g. /api/v1/pods or /apis/chainwarden.io/v1alpha1/agenttasks. */
  path: string;
  /**
   * The key `byIndex` finds an object under (e.g. its namespace and a label), or undefined for
   * none: the objects of one key are found without a scan of the whole cache.
   */
  indexBy?: (obj: T) => string | undefined;
  labelSelector?: string;
  log: Logger;
  /** Page size of a list. */
  pageSize?: number;
  /** Delay before re-watching after an error, doubling up to 30 s. */
  retryBaseMs?: number;
  /** Tests only: every watch event is taken this much later, as by a replica whose watch lags. */
  lagMs?: number;
}

interface ListAnswer<T> {
  items?: T[];
  metadata?: { resourceVersion?: string; continue?: string };
}

/**
 * A list-then-watch cache of one resource. It survives errors: a watch that ends or fails is
 * resumed from the last resourceVersion seen, and one the API server answers with 410 Gone (the
 * version was compacted away) is replaced by a fresh list, diffed against the cache so that
 * handlers hear of every object added, changed or deleted in the gap.
 */
export class Informer<T extends KubeObject> {
  private readonly store = new Map<string, T>();
  /** `indexBy` key → the objects under it, by object key; kept with the store. */
  private readonly index = new Map<string, Map<string, T>>();
  private readonly handlers: InformerHandler<T>[] = [];
  /** Callers waiting for the cache to show something of one object, by key. */
  private readonly waiters = new Map<string, Set<() => void>>();
  private resourceVersion: string | undefined;
  private abort: AbortController | undefined;
  private stopped = false;
  private synced = false;
  private unreachable: { since: number; error: string } | undefined;
  private failures = 0;
  private loop: Promise<void> | undefined;

  constructor(
    private readonly kc: KubeAccess,
    private readonly options: InformerOptions<T>,
  ) {}

  on(handler: InformerHandler<T>): void {
    this.handlers.push(handler);
  }

  get hasSynced(): boolean {
    return this.synced;
  }

  /**
   * Set from the first failed watch or list until a watch is established again: meanwhile the
   * cache may miss changes (a task ended, a pod deleted), however complete it was before.
   */
  get disconnected(): { since: number; error: string } | undefined {
    return this.unreachable;
  }

  get(namespace: string, name: string): T | undefined {
    return this.store.get(`${namespace}/${name}`);
  }

  /**
   * Resolves true once the cached object (undefined when it is gone) satisfies `shows`, or
   * false after `timeoutMs`: how a replica that wrote something waits until its own watch has
   * delivered it, and with it the watches of other replicas fed from the same API server.
   */
  waitFor(namespace: string, name: string, shows: (obj: T | undefined) => boolean, timeoutMs: number): Promise<boolean> {
    const key = `${namespace}/${name}`;
    if (shows(this.store.get(key))) return Promise.resolve(true);
    return new Promise((resolve) => {
      const waiting = this.waiters.get(key) ?? new Set<() => void>();
      this.waiters.set(key, waiting);
      const done = (seen: boolean) => {
        clearTimeout(timer);
        waiting.delete(check);
        if (waiting.size === 0 && this.waiters.get(key) === waiting) this.waiters.delete(key);
        resolve(seen);
      };
      const check = () => {
        if (shows(this.store.get(key))) done(true);
      };
      const timer = setTimeout(() => done(false), timeoutMs);
      waiting.add(check);
    });
  }

  list(): T[] {
    return [...this.store.values()];
  }

  /** The cached objects whose `indexBy` key is `key` (none without an index). */
  byIndex(key: string): T[] {
    const bucket = this.index.get(key);
    return bucket ? [...bucket.values()] : [];
  }

  /** Every change of the cache goes through here and `remove`, so the index never disagrees with it. */
  private put(key: string, item: T, old: T | undefined): void {
    this.store.set(key, item);
    const at = this.options.indexBy?.(item);
    // An object that stays under its key keeps its place there, as it does in the store.
    if (old && this.options.indexBy?.(old) !== at) this.unindex(key, old);
    if (at === undefined) return;
    let bucket = this.index.get(at);
    if (!bucket) this.index.set(at, (bucket = new Map<string, T>()));
    bucket.set(key, item);
  }

  private remove(key: string, old: T): void {
    this.store.delete(key);
    this.unindex(key, old);
  }

  private unindex(key: string, old: T): void {
    const at = this.options.indexBy?.(old);
    if (at === undefined) return;
    const bucket = this.index.get(at);
    bucket?.delete(key);
    if (bucket?.size === 0) this.index.delete(at);
  }

  /** The cached objects without copying them into a list: for scans that keep few of many. Not to be held across an await. */
  values(): IterableIterator<T> {
    return this.store.values();
  }

  get size(): number {
    return this.store.size;
  }

  /** Lists once (so the cache is complete when this resolves), then keeps watching. */
  async start(): Promise<void> {
    await this.relist();
    this.synced = true;
    this.loop = this.watchLoop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.abort?.abort();
    // A watch still waiting for its response headers cannot be aborted from here; do not wait on it.
    await Promise.race([this.loop, sleep(2000)]);
  }

  /** Drops the current watch connection as a network failure would; the informer resumes by itself. */
  disconnect(): void {
    this.abort?.abort();
  }

  private emit(event: InformerEvent, obj: T, old?: T): void {
    for (const handler of this.handlers) {
      try {
        handler(event, obj, old);
      } catch (err) {
        this.options.log.error({ err, path: this.options.path }, 'informer handler failed');
      }
    }
    const waiting = this.waiters.get(objectKey(obj));
    if (waiting) for (const check of [...waiting]) check();
  }

  private async listAll(): Promise<{ items: T[]; resourceVersion: string | undefined }> {
    const items: T[] = [];
    let cont: string | undefined;
    let resourceVersion: string | undefined;
    do {
      const query = new URLSearchParams({ limit: String(this.options.pageSize ?? 500) });
      if (cont) query.set('continue', cont);
      if (this.options.labelSelector) query.set('labelSelector', this.options.labelSelector);
      const res = await rawRequest(this.kc, 'GET', `${this.options.path}?${query.toString()}`);
      if (res.status !== 200) throw new Error(`list ${this.options.path}: ${res.status} ${JSON.stringify(res.body).slice(0, 300)}`);
      const page = res.body as ListAnswer<T>;
      for (const item of page.items ?? []) items.push(slim(item));
      resourceVersion = page.metadata?.resourceVersion;
      cont = page.metadata?.continue || undefined;
    } while (cont);
    return { items, resourceVersion };
  }

  private async relist(): Promise<void> {
    const { items, resourceVersion } = await this.listAll();
    const seen = new Set<string>();
    for (const item of items) {
      const key = objectKey(item);
      seen.add(key);
      const old = this.store.get(key);
      this.put(key, item, old);
      if (!old) this.emit('add', item);
      else if (old.metadata?.resourceVersion !== item.metadata?.resourceVersion) this.emit('update', item, old);
    }
    for (const [key, old] of this.store) {
      if (!seen.has(key)) {
        this.remove(key, old);
        this.emit('delete', old);
      }
    }
    this.resourceVersion = resourceVersion;
  }

  private onWatchEvent(type: string, obj: T | { code?: number; message?: string }): 'gone' | undefined {
    if (type === 'ERROR') {
      const status = obj as { code?: number; message?: string };
      if (status.code === 410) return 'gone';
      throw new Error(`watch ${this.options.path}: ${status.message ?? JSON.stringify(status)}`);
    }
    const item = slim(obj as T);
    this.resourceVersion = item.metadata?.resourceVersion ?? this.resourceVersion;
    if (type === 'BOOKMARK') return undefined;
    const key = objectKey(item);
    const old = this.store.get(key);
    if (type === 'DELETED') {
      if (old) this.remove(key, old);
      this.emit('delete', item);
    } else {
      this.put(key, item, old);
      this.emit(old ? 'update' : 'add', item, old);
    }
    return undefined;
  }

  /** One watch connection; resolves when it ends, with whether the API server said 410 Gone. */
  private async watchOnce(): Promise<{ gone: boolean; error?: unknown }> {
    let gone = false;
    let ended = false;
    let failure: unknown;
    const finished = new Promise<void>((resolve) => {
      void watchStream(
        this.kc,
        this.options.path,
        { allowWatchBookmarks: 'true', resourceVersion: this.resourceVersion, labelSelector: this.options.labelSelector, timeoutSeconds: '300' },
        (type, object, stop) => {
          const obj = object as T;
          const take = () => {
            try {
              if (this.onWatchEvent(type, obj) === 'gone') {
                gone = true;
                stop();
              }
            } catch (err) {
              failure = err;
              stop();
            }
          };
          if (this.options.lagMs) setTimeout(take, this.options.lagMs);
          else take();
        },
        (err: unknown) => {
          if (err && !failure) failure = err;
          ended = true;
          resolve();
        },
      )
        .then((abort) => {
          this.abort = abort;
          if (this.stopped) abort.abort();
          // The API server answered the watch and is streaming it: the cache is current again.
          else if (!ended) this.unreachable = undefined;
        })
        .catch((err: unknown) => {
          failure = err;
          resolve();
        });
    });
    await finished;
    return { gone, error: failure };
  }

  private async backoff(err: unknown): Promise<void> {
    this.failures++;
    this.unreachable ??= { since: Date.now(), error: errorMessage(err) };
    const delay = Math.min(30_000, (this.options.retryBaseMs ?? 500) * 2 ** (this.failures - 1));
    this.options.log.warn({ path: this.options.path, err: errorMessage(err), retryInMs: delay }, 'watch failed; resuming');
    await sleep(delay);
  }

  private async watchLoop(): Promise<void> {
    while (!this.stopped) {
      const { gone, error } = await this.watchOnce();
      if (this.stopped) return;
      if (gone || (error as { statusCode?: number } | undefined)?.statusCode === 410) {
        this.options.log.info({ path: this.options.path }, 'watch expired (410 Gone); listing again');
        try {
          await this.relist();
          this.failures = 0;
        } catch (err) {
          await this.backoff(err);
        }
      } else if (error && !(error instanceof Error && error.name === 'AbortError')) {
        await this.backoff(error);
      } else {
        this.failures = 0;
      }
    }
  }
}

/**
 * What the cache keeps of an object: everything but the server-side-apply bookkeeping
 * (`managedFields`) and kubectl's copy of the last applied manifest, which no reader here uses
 * and which can be larger than the rest of the object. With tens of thousands of tasks cached
 * that is most of the operator's memory. Its strings share one copy with equal strings cached
 * before it.
 */
function slim<T extends KubeObject>(item: T): T {
  const metadata = item.metadata as { managedFields?: unknown; annotations?: Record<string, string> } | undefined;
  if (!metadata) return item;
  // Copied rather than `delete`d: an object that loses a property becomes a hash table, several
  // times the size of the object it was, and the cache holds one per task.
  const { managedFields: _bookkeeping, ...kept } = metadata;
  if (kept.annotations?.[LAST_APPLIED] !== undefined) {
    const { [LAST_APPLIED]: _dropped, ...rest } = kept.annotations;
    kept.annotations = rest;
  }
  item.metadata = kept as T['metadata'];
  shareStrings(item);
  return item;
}

const LAST_APPLIED = 'kubectl.kubernetes.io/last-applied-configuration';
