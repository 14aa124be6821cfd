import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { LocalEnvironment } from '../../src/controlplane/environment.js';

/**
 * The shared control plane's processes live in the test runner's main process; a test file runs
 * in a worker. This small HTTP endpoint lets a test stop and start the real kube-apiserver and
 * freeze, thaw and compact the real etcd: `POST /apiserver/stop`, `/apiserver/kill`,
 * `/apiserver/start`, `/etcd/freeze`, `/etcd/thaw`, `/etcd/compact`. A test that uses it must leave both running, as it found them.
 */
export async function serveControlPlaneFaults(env: LocalEnvironment): Promise<{ url: string; close(): Promise<void> }> {
  const actions: Record<string, () => Promise<void> | void> = {
    '/apiserver/stop': () => env.faults.stopApiServer(),
    '/apiserver/kill': () => env.faults.stopApiServer(0),
    '/apiserver/start': () => env.faults.startApiServer(),
    '/etcd/freeze': () => env.faults.freezeEtcd(),
    '/etcd/thaw': () => env.faults.thawEtcd(),
    '/etcd/compact': () => env.faults.compactEtcd(),
  };
  const server = http.createServer((req, res) => {
    const action = req.method === 'POST' ? actions[req.url ?? ''] : undefined;
    if (!action) return void res.writeHead(404).end();
    Promise.resolve()
      .then(action)
      .then(
        () => res.writeHead(204).end(),
        (err: unknown) => res.writeHead(500, { 'content-type': 'text/plain' }).end(String(err instanceof Error ? err.message : err)),
      );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

/** A test's handle on the shared control plane's processes. */
export class ControlPlaneFaults {
  constructor(private readonly url: string) {}

  private async post(path: string): Promise<void> {
    const res = await fetch(`${this.url}${path}`, { method: 'POST' });
    if (res.status !== 204) throw new Error(`${path}: ${res.status} ${await res.text()}`);
  }

  /** SIGTERM, as an upgrade stops it; `kill`: SIGKILL, as a crash. */
  stopApiServer(how: 'stop' | 'kill' = 'stop'): Promise<void> {
    return this.post(`/apiserver/${how}`);
  }

  /** Resolves once it answers /readyz again. */
  startApiServer(): Promise<void> {
    return this.post('/apiserver/start');
  }

  freezeEtcd(): Promise<void> {
    return this.post('/etcd/freeze');
  }

  thawEtcd(): Promise<void> {
    return this.post('/etcd/thaw');
  }

  /** History up to now is gone: a watch resumed from before is answered 410 Gone. */
  compactEtcd(): Promise<void> {
    return this.post('/etcd/compact');
  }
}
