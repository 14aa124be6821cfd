import https from 'node:https';
import type { ServerResponse } from 'node:http';
import type { KubeConfig } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { silentLogger } from '../../../src/log.js';
import { CertificateAuthority } from '../../../src/pki/authority.js';
import { LeaderElector } from '../../../src/runtime/leader.js';
import { kubeConfigFor } from '../../builders/kubeconfig.js';

/** A Lease endpoint that behaves as the API server's does: resourceVersion preconditions, 409 on a stale write. */
interface LeaseBody {
  metadata: { name: string; namespace: string; resourceVersion?: string };
  spec: Record<string, unknown>;
}
let stored: LeaseBody | undefined;
let version = 0;
let failing = false;
let server: https.Server;
let kc: KubeConfig;
const PATH = '/apis/coordination.k8s.io/v1/namespaces/ns/leases/lead';
/** Who holds the lease the server has now. */
const holder = () => stored?.spec.holderIdentity;

function answer(res: ServerResponse, status: number, body: unknown) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

beforeAll(async () => {
  const ca = await CertificateAuthority.create('lease-test');
  const pair = await ca.issueServing('api', { dnsNames: ['localhost'], ips: ['127.0.0.1'] });
  server = https.createServer({ cert: pair.certPem, key: pair.keyPem }, (req, res) => {
    let text = '';
    req.on('data', (c: Buffer) => (text += c.toString()));
    req.on('end', () => {
      if (failing) return answer(res, 500, { message: 'etcd is unhappy' });
      const body = text ? (JSON.parse(text) as LeaseBody) : undefined;
      if (req.method === 'GET') return stored ? answer(res, 200, stored) : answer(res, 404, {});
      if (req.method === 'POST' && body) {
        if (stored) return answer(res, 409, {});
        stored = { ...body, metadata: { ...body.metadata, resourceVersion: String(++version) } };
        return answer(res, 201, stored);
      }
      if (req.method === 'PUT' && body && req.url === PATH) {
        if (!stored || body.metadata.resourceVersion !== stored.metadata.resourceVersion) return answer(res, 409, {});
        stored = { ...body, metadata: { ...body.metadata, resourceVersion: String(++version) } };
        return answer(res, 200, stored);
      }
      answer(res, 405, {});
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  kc = kubeConfigFor(server, ca.certPem);
});

afterAll(() => new Promise<void>((r) => server.close(() => r())));

/** An elector whose monotonic clock the test moves, and whose wall clock is off by `skewMs`. */
function elector(identity: string, skewMs = 0) {
  let mono = 0;
  const e = new LeaderElector({ kc, namespace: 'ns', name: 'lead', identity, log: silentLogger(), clock: { now: () => Date.now() + skewMs }, leaseDurationMs: 3_000, renewDeadlineMs: 2_000, retryPeriodMs: 10, monotonic: () => mono });
  return { e, advance: (ms: number) => (mono += ms) };
}

const held = (holder: string, renewTime: string) => {
  stored = { metadata: { name: 'lead', namespace: 'ns', resourceVersion: String(++version) }, spec: { holderIdentity: holder, leaseDurationSeconds: 3, renewTime } };
};

describe('leader election trusts no clock but its own monotonic one', () => {
  it('a replica whose wall clock is an hour ahead does not take a lease it has not yet seen go unrenewed for a lease duration', async () => {
    failing = false;
    // By the renewTime, written by a clock an hour behind this one, the lease expired long ago.
    held('other', new Date(Date.now() - 3_600_000).toISOString());
    const { e, advance } = elector('ahead', 3_600_000);
    const running = e.run(() => {});
    try {
      await new Promise((r) => setTimeout(r, 150));
      expect(e.isLeader).toBe(false);
      advance(2_999);
      await new Promise((r) => setTimeout(r, 100));
      expect(e.isLeader).toBe(false);
      advance(2);
      await vi.waitFor(() => expect(e.isLeader).toBe(true), { timeout: 2_000 });
      expect(holder()).toBe('ahead');
    } finally {
      await e.stop();
      await running;
    }
  });

  it('a replica whose wall clock is behind takes a dead lease one lease duration after it last saw it change, not later', async () => {
    failing = false;
    // Renewed "in the future" by this replica's clock.
    held('other', new Date(Date.now() + 3_600_000).toISOString());
    const { e, advance } = elector('behind', -3_600_000);
    const running = e.run(() => {});
    try {
      await new Promise((r) => setTimeout(r, 150));
      expect(e.isLeader).toBe(false);
      advance(3_001);
      await vi.waitFor(() => expect(e.isLeader).toBe(true), { timeout: 2_000 });
    } finally {
      await e.stop();
      await running;
    }
  });

  it('a leader not renewed within its renew deadline is no longer leader at once, and its work is told to stop', async () => {
    failing = false;
    stored = undefined;
    const { e, advance } = elector('frozen');
    let signal: AbortSignal | undefined;
    const running = e.run((s) => (signal = s));
    try {
      await vi.waitFor(() => expect(e.isLeader).toBe(true), { timeout: 2_000 });
      // The API server stops answering; by this process's clock, the renew deadline passes.
      failing = true;
      advance(2_001);
      expect(e.isLeader).toBe(false);
      await vi.waitFor(() => expect(signal?.aborted).toBe(true), { timeout: 2_000 });
    } finally {
      failing = false;
      await e.stop();
      await running;
    }
  });

  it('stop releases the lease only once the leader-only work has stopped, so a standby never starts beside it', async () => {
    failing = false;
    stored = undefined;
    const { e } = elector('handing-over');
    let finished = false;
    const running = e.run(async (signal) => {
      await new Promise((r) => signal.addEventListener('abort', r));
      // A write in flight when the term ends.
      await new Promise((r) => setTimeout(r, 300));
      finished = true;
    });
    await vi.waitFor(() => expect(e.isLeader).toBe(true), { timeout: 2_000 });
    const stopping = e.stop();
    await new Promise((r) => setTimeout(r, 150));
    expect(e.isLeader).toBe(false);
    expect(holder()).toBe('handing-over');
    await stopping;
    expect(finished).toBe(true);
    expect(holder()).toBe('');
    await running;
  });
});
