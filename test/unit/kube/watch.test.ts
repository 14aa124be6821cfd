import type { ServerResponse } from 'node:http';
import https from 'node:https';
import { afterEach, describe, expect, it } from 'vitest';
import { watchStream, WatchRefused } from '../../../src/kube/raw.js';
import { CertificateAuthority } from '../../../src/pki/authority.js';
import { kubeConfigFor } from '../../builders/kubeconfig.js';

/** A scripted watch endpoint (a unit-test stand-in, not an API server): `answer` writes each response. */
async function watchServer(answer: (res: ServerResponse, query: URLSearchParams) => void) {
  const ca = await CertificateAuthority.create('test');
  const pair = await ca.issueServing('localhost', { ips: ['127.0.0.1'] });
  const server = https.createServer({ cert: pair.certPem, key: pair.keyPem }, (req, res) => answer(res, new URL(req.url ?? '/', 'https://x').searchParams));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  close = () => {
    server.closeAllConnections();
    server.close();
  };
  return kubeConfigFor(server, ca.certPem);
}

let close: (() => void) | undefined;
afterEach(() => close?.());

const event = (type: string, name: string, padding = 0) => JSON.stringify({ type, object: { metadata: { name, annotations: { pad: 'x'.repeat(padding) } } } });

function collect(kc: Awaited<ReturnType<typeof watchServer>>, query: Record<string, string | undefined> = {}) {
  const seen: string[] = [];
  let ended: ((err?: unknown) => void) | undefined;
  const done = new Promise<unknown>((resolve) => (ended = resolve));
  const started = watchStream(kc, '/apis/x/v1/things', query, (type, object) => seen.push(`${type} ${(object as { metadata: { name: string } }).metadata.name}`), (err) => ended?.(err));
  return { seen, done, started };
}

describe('a watch stream', () => {
  it('hears every event in order, however the stream is cut into chunks', async () => {
    let asked: URLSearchParams | undefined;
    const kc = await watchServer((res, query) => {
      asked = query;
      res.writeHead(200, { 'content-type': 'application/json' });
      const text = `${event('ADDED', 'a')}\n${event('MODIFIED', 'big', 100_000)}\n\n${event('BOOKMARK', 'c')}\n${event('DELETED', 'd')}\n`;
      // Cut mid-event, mid-line, and several events in one chunk.
      const cuts = [7, 50, 60_000, text.length - 5, text.length];
      let at = 0;
      for (const cut of cuts) {
        res.write(text.slice(at, cut));
        at = cut;
      }
      res.end();
    });
    const { seen, done, started } = collect(kc, { resourceVersion: '42', labelSelector: undefined });
    await started;
    expect(await done).toBeUndefined();
    expect(seen).toEqual(['ADDED a', 'MODIFIED big', 'BOOKMARK c', 'DELETED d']);
    expect(asked?.get('watch')).toBe('true');
    expect(asked?.get('resourceVersion')).toBe('42');
    expect(asked?.has('labelSelector')).toBe(false);
  });

  it('ends with an error naming the watch when the server sends a line that is not JSON, and takes nothing after it', async () => {
    const kc = await watchServer((res) => {
      res.writeHead(200);
      res.write(`${event('ADDED', 'a')}\n{"type":"ADDED","object":\n${event('ADDED', 'after')}\n`);
    });
    const { seen, done, started } = collect(kc);
    await started;
    expect(String(await done)).toMatch(/watch \/apis\/x\/v1\/things: an event that is not JSON/);
    expect(seen).toEqual(['ADDED a']);
  });

  it('is refused with the status and the API server\'s message when it does not answer 200', async () => {
    const kc = await watchServer((res) => {
      res.writeHead(410, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ kind: 'Status', code: 410, message: 'too old resource version: 1 (200)' }));
    });
    const { started } = collect(kc);
    const refused = await started.then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(refused).toBeInstanceOf(WatchRefused);
    expect(refused).toMatchObject({ statusCode: 410, message: 'watch /apis/x/v1/things: 410 Gone: too old resource version: 1 (200)' });
  });

  it('hands over nothing more once aborted, not even the rest of the chunk that held the event it was aborted on', async () => {
    // Sent with the headers: the events arrive before the caller could hold the controller.
    const kc = await watchServer((res) => {
      res.writeHead(200);
      res.write(`${event('ERROR', 'expired')}\n${event('ADDED', 'stale-1')}\n${event('ADDED', 'stale-2')}\n`);
    });
    const seen: string[] = [];
    const ended = new Promise<unknown>((resolve) => {
      void watchStream(kc, '/apis/x/v1/things', {}, (type, object, stop) => {
        seen.push(`${type} ${(object as { metadata: { name: string } }).metadata.name}`);
        stop();
      }, resolve);
    });
    expect(await ended).toBeUndefined();
    expect(seen).toEqual(['ERROR expired']);
  });

  it('stops at once when aborted, and says it ended without an error', async () => {
    const kc = await watchServer((res) => {
      res.writeHead(200);
      res.write(`${event('ADDED', 'a')}\n`);
    });
    const { seen, done, started } = collect(kc);
    const abort = await started;
    await expect.poll(() => seen).toEqual(['ADDED a']);
    abort.abort();
    expect(await done).toBeUndefined();
  });
});
