import https from 'node:https';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../../src/log.js';
import { CertificateAuthority } from '../../../src/pki/authority.js';
import { Informer, type KubeObject } from '../../../src/runtime/informer.js';
import { kubeConfigFor } from '../../builders/kubeconfig.js';

/**
 * A scripted list/watch endpoint (a unit-test stand-in, not an API server): the first watch
 * answers 410 Gone, as the API server does once a resourceVersion has been compacted away,
 * and the list that follows shows what changed in the gap.
 */
async function scriptedServer(lists: KubeObject[][], opts: { down?: () => boolean; events?: { type: string; object: KubeObject }[] } = {}) {
  const ca = await CertificateAuthority.create('test');
  const pair = await ca.issueServing('localhost', { ips: ['127.0.0.1'] });
  let listCalls = 0;
  let watchCalls = 0;
  const server = https.createServer({ cert: pair.certPem, key: pair.keyPem }, (req, res) => {
    const url = new URL(req.url ?? '/', 'https://x');
    if (opts.down?.()) {
      res.writeHead(503);
      return void res.end();
    }
    if (url.searchParams.get('watch') === 'true') {
      watchCalls++;
      res.writeHead(200, { 'content-type': 'application/json' });
      if (watchCalls === 1) res.end(`${JSON.stringify({ type: 'ERROR', object: { kind: 'Status', code: 410, message: 'too old resource version' } })}\n`);
      // The second sends the scripted events, if any; every later watch stays open with nothing to say.
      else if (watchCalls === 2 && opts.events) res.write(opts.events.map((e) => `${JSON.stringify(e)}\n`).join(''));
      else res.flushHeaders();
      return;
    }
    const items = lists[Math.min(listCalls, lists.length - 1)] ?? [];
    listCalls++;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ kind: 'List', metadata: { resourceVersion: String(100 + listCalls) }, items }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const kc = kubeConfigFor(server, ca.certPem);
  return { kc, server, lists: () => listCalls };
}

const obj = (name: string, rv: string): KubeObject => ({ metadata: { namespace: 'ns', name, resourceVersion: rv } });
let close: (() => void) | undefined;
afterEach(() => close?.());

describe('Informer', () => {
  it('lists again after 410 Gone and tells handlers what changed in the gap', async () => {
    const { kc, server, lists } = await scriptedServer([
      [obj('kept', '1'), obj('changed', '1'), obj('deleted', '1')],
      [obj('kept', '1'), obj('changed', '2'), obj('added', '3')],
    ]);
    close = () => server.closeAllConnections();
    const informer = new Informer<KubeObject>(kc, { path: '/apis/x/v1/things', log: silentLogger(), retryBaseMs: 10 });
    const events: string[] = [];
    informer.on((event, o) => events.push(`${event} ${o.metadata?.name ?? ''}`));
    await informer.start();
    expect(events.sort()).toEqual(['add changed', 'add deleted', 'add kept']);
    events.length = 0;
    await expect.poll(() => lists(), { timeout: 5000 }).toBeGreaterThanOrEqual(2);
    await expect.poll(() => events.sort(), { timeout: 5000 }).toEqual(['add added', 'delete deleted', 'update changed']);
    expect(informer.list().map((o) => o.metadata?.name).sort()).toEqual(['added', 'changed', 'kept']);
    await informer.stop();
    server.close();
  });
});

describe('Informer: the index', () => {
  it('finds the objects filed under a key, and follows them as they are added, moved, changed and deleted by list or watch', async () => {
    const pod = (name: string, task: string | undefined, rv: string): KubeObject => ({ metadata: { namespace: 'ns', name, resourceVersion: rv, labels: task ? { task } : {} } });
    const { kc, server } = await scriptedServer(
      [
        [pod('a', 't1', '1'), pod('b', 't1', '1'), pod('c', 't2', '1'), pod('d', undefined, '1')],
        // Relisted after the 410: b moved to t2, c is gone, e is new.
        [pod('a', 't1', '1'), pod('b', 't2', '2'), pod('e', 't1', '3'), pod('d', undefined, '1')],
      ],
      { events: [{ type: 'MODIFIED', object: pod('a', 't1', '4') }, { type: 'DELETED', object: pod('e', 't1', '5') }, { type: 'ADDED', object: pod('f', 't2', '6') }, { type: 'MODIFIED', object: pod('d', 't1', '7') }] },
    );
    close = () => server.closeAllConnections();
    const informer = new Informer<KubeObject>(kc, { path: '/api/v1/pods', log: silentLogger(), retryBaseMs: 10, indexBy: (p) => (p.metadata?.labels?.task ? `ns/${p.metadata.labels.task}` : undefined) });
    const names = (key: string) => informer.byIndex(key).map((p) => p.metadata?.name);
    await informer.start();
    expect(names('ns/t1')).toEqual(['a', 'b']);
    expect(names('ns/t2')).toEqual(['c']);
    // After the relist and the watch's events: a stays first under t1 with its new version.
    await expect.poll(() => informer.get('ns', 'f'), { timeout: 5000 }).toBeDefined();
    await expect.poll(() => names('ns/t1'), { timeout: 5000 }).toEqual(['a', 'd']);
    expect(informer.byIndex('ns/t1')[0]?.metadata?.resourceVersion).toBe('4');
    expect(names('ns/t2')).toEqual(['b', 'f']);
    expect(names('ns/none')).toEqual([]);
    // Every object under a key is one the cache holds, and every labelled one is under its key.
    const labelled = informer.list().filter((p) => p.metadata?.labels?.task).map((p) => p.metadata?.name).sort();
    expect([...names('ns/t1'), ...names('ns/t2')].sort()).toEqual(labelled);
    await informer.stop();
    server.close();
  });
});

describe('Informer: whether the cache is current', () => {
  it('says it is disconnected, since when and why, from the first failed watch until a watch is streaming again', async () => {
    let down = false;
    const { kc, server } = await scriptedServer([[obj('a', '1')]], { down: () => down });
    close = () => server.closeAllConnections();
    const informer = new Informer<KubeObject>(kc, { path: '/apis/x/v1/things', log: silentLogger(), retryBaseMs: 10 });
    await informer.start();
    // The first watch answers 410, the relist succeeds, the next watch streams.
    await expect.poll(() => informer.disconnected, { timeout: 5000 }).toBeUndefined();
    down = true;
    server.closeAllConnections();
    await expect.poll(() => informer.disconnected, { timeout: 5000 }).toMatchObject({ since: expect.any(Number) as number, error: expect.stringMatching(/Service Unavailable|503/) as string });
    // Synced once, and still: what it holds is the last it saw.
    expect(informer.hasSynced).toBe(true);
    expect(informer.list()).toHaveLength(1);
    down = false;
    await expect.poll(() => informer.disconnected, { timeout: 5000 }).toBeUndefined();
    await informer.stop();
    server.close();
  });
});

describe('what the cache keeps', () => {
  it('drops server-side-apply bookkeeping and kubectl\'s last-applied copy, and keeps every other field', async () => {
    const heavy = {
      metadata: {
        namespace: 'ns',
        name: 'big',
        resourceVersion: '1',
        annotations: { 'kubectl.kubernetes.io/last-applied-configuration': 'x'.repeat(10_000), team: 'support' },
        managedFields: [{ manager: 'kubectl', operation: 'Apply', fieldsV1: { 'f:spec': {} } }],
      },
      spec: { ttl: '1h' },
    } as KubeObject;
    const { kc, server } = await scriptedServer([[heavy]]);
    close = () => server.closeAllConnections();
    const informer = new Informer<KubeObject>(kc, { path: '/apis/x/v1/things', log: silentLogger(), retryBaseMs: 10 });
    await informer.start();
    const cached = informer.get('ns', 'big') as KubeObject & { spec?: unknown; metadata: { annotations?: Record<string, string>; managedFields?: unknown } };
    expect(cached.metadata.managedFields).toBeUndefined();
    expect(cached.metadata.annotations).toEqual({ team: 'support' });
    expect(cached.spec).toEqual({ ttl: '1h' });
    await informer.stop();
  });
});

describe('Informer: waiting for the cache to show a change', () => {
  it('answers true as soon as the cache shows it (a deleted object shows as undefined), and false once the wait is over', async () => {
    const { kc, server } = await scriptedServer([
      [obj('a', '1'), obj('b', '1')],
      [obj('a', '2')],
    ]);
    close = () => server.closeAllConnections();
    const informer = new Informer<KubeObject>(kc, { path: '/apis/x/v1/things', log: silentLogger(), retryBaseMs: 10 });
    // The first watch answers 410 only after start() resolves: the relist brings version 2 and b's deletion.
    await informer.start();
    const atVersion = (rv: string) => (o: KubeObject | undefined) => o?.metadata?.resourceVersion === rv;
    const [changed, gone, never] = await Promise.all([
      informer.waitFor('ns', 'a', atVersion('2'), 5000),
      informer.waitFor('ns', 'b', (o) => o === undefined, 5000),
      informer.waitFor('ns', 'a', atVersion('9'), 300),
    ]);
    expect({ changed, gone, never }).toEqual({ changed: true, gone: true, never: false });
    // What the cache shows already needs no event.
    expect(await informer.waitFor('ns', 'a', atVersion('2'), 0)).toBe(true);
    await informer.stop();
    server.close();
  });
});
