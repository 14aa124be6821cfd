import { readFile } from 'node:fs/promises';
import { inject } from 'vitest';
import { verifyChains } from '../../../src/audit/verify.js';
import type { EnvironmentDescription } from '../../../src/controlplane/environment.js';
import { brokerRequest } from '../../env/agents.js';
import { ControlPlaneFaults } from '../../env/controlplane-faults.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { readTask, waitForTask } from '../operator/helpers.js';
import { auditOf, boundTask, fetchCredentials } from './helpers.js';

// These tests stop, start and freeze the real processes of the control plane every test file
// shares (the operator's too): each leaves them running and the operator ready, as it found them.

const hop = (env: EnvironmentDescription, token: string, i: number) => brokerRequest(env, 'POST', '/v1/hops', { token, body: { tool: 'tickets', action: 'read', resource: `ticket/${i}`, intent: `read ticket ${i}` } });
const readiness = (env: EnvironmentDescription) => brokerRequest(env, 'GET', '/readyz');
const decision = (a: { body: unknown }) => (a.body as { decision?: string }).decision;

/** The collections the operator's informers listed again, told 410 Gone, since `since`: from its log. */
async function relistedSince(env: EnvironmentDescription, since: number): Promise<string[]> {
  const lines = (await readFile(env.operatorLog ?? '', 'utf8')).split('\n').filter((l) => l.startsWith('{'));
  return lines
    .map((l) => JSON.parse(l) as { time?: string; msg?: string; path?: string })
    .filter((l) => l.msg === 'watch expired (410 Gone); listing again' && Date.parse(l.time ?? '') >= since)
    .map((l) => l.path ?? '');
}

/** The task's hop decisions in the audit stream, and whether its chain holds together up to the head in its status. */
async function auditedHops(env: EnvironmentDescription, uid: string | undefined) {
  const entries = await auditOf(env, uid);
  const { chains, breaks } = verifyChains(entries);
  return { hops: entries.filter((e) => e.record.type === 'hop_decided').map((e) => (e.record.data as { resource?: string }).resource), breaks, chain: chains[0] };
}

describe('the API server and etcd misbehave', () => {
  test('the API server stops and starts again with its history compacted: hops are answered from the caches, a credential that cannot be recorded is not handed out, readiness says why, and afterwards the informers list again (410), catch up, and every hop is in the audit chain once', async ({ admin, env, namespace }) => {
    const processes = new ControlPlaneFaults(inject('controlPlaneFaults'));
    const { token, task } = await boundTask(admin, env, namespace);
    expect(decision(await hop(env, token, 1))).toBe('allow');
    await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.hops?.allowed === 1);
    expect(await readiness(env)).toMatchObject({ status: 200, body: { status: 'ok' } });

    const stoppedAt = Date.now();
    await processes.stopApiServer();
    try {
      await expect.poll(async () => (await readiness(env)).status, { timeout: 10_000, interval: 200 }).toBe(503);
      expect((await readiness(env)).body).toMatchObject({ status: 'disconnected', waitingFor: expect.arrayContaining([expect.stringMatching(/^tasks cache: API server unreachable since \S+ \(.+\)$/)]) as string[] });
      // Alive all the same: restarting the operator would not bring the API server back.
      expect((await brokerRequest(env, 'GET', '/healthz')).status).toBe(200);
      // The token is checked against the keys the broker holds, the pod and task are in its caches,
      // and the decision waits in the journal: safe to answer.
      for (let i = 2; i <= 4; i++) expect(await hop(env, token, i)).toMatchObject({ status: 200, body: { decision: 'allow' } });
      // A session is handed out only once the task's status records it: with nowhere to record it, none is.
      const credentials = await fetchCredentials(env, token);
      expect(credentials.status).toBeGreaterThanOrEqual(500);
      expect(JSON.stringify(credentials.body)).not.toContain('SecretAccessKey');
      // The history the operator's watches would resume from is gone: they must list again.
      await processes.compactEtcd();
    } finally {
      await processes.startApiServer();
    }

    // Created at once, before the operator's watches are back: the caches must still see it.
    const second = await boundTask(admin, env, namespace, 'ticket-4712');
    expect(second.task.status?.spiffeID).toContain('/task/ticket-4712');
    await expect.poll(async () => (await readiness(env)).status, { timeout: 30_000, interval: 200 }).toBe(200);
    // (The API server answers watches before it says it is ready, so the relist may come before `start` returns. It
    // answers a watch from a compacted version with 200 and then a 410 event, so it may also come just after readiness.)
    await expect.poll(async () => await relistedSince(env, stoppedAt), { timeout: 10_000, interval: 200 }).toContain('/apis/chainwarden.io/v1alpha1/agenttasks');

    const written = await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.hops?.allowed === 4, 20_000);
    const audited = await auditedHops(env, task.metadata.uid);
    expect(audited.hops.sort()).toEqual(['ticket/1', 'ticket/2', 'ticket/3', 'ticket/4']);
    expect(audited.breaks).toEqual([]);
    expect({ count: audited.chain?.count, head: audited.chain?.head }).toEqual({ count: written.status?.audit?.count, head: written.status?.audit?.head });
    expect((await fetchCredentials(env, token)).status).toBe(200);
  });

  test('etcd freezes for 10 s: hops are answered until their records have waited too long, then refused; once etcd thaws every hop answered is in the chain once', async ({ admin, env, namespace }) => {
    const processes = new ControlPlaneFaults(inject('controlPlaneFaults'));
    const { token, task } = await boundTask(admin, env, namespace);
    expect(decision(await hop(env, token, 0))).toBe('allow');
    await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.hops?.allowed === 1);

    const answers: { i: number; status: number; body: unknown }[] = [];
    await processes.freezeEtcd();
    try {
      const frozenAt = Date.now();
      for (let i = 1; Date.now() - frozenAt < 10_000; i++) {
        answers.push({ i, ...(await hop(env, token, i)) });
        await new Promise((r) => setTimeout(r, 400));
      }
      // The API server still answers reads, so the caches are connected; readiness says the records wait.
      await expect.poll(async () => (await readiness(env)).body, { timeout: 5_000, interval: 200 }).toMatchObject({ status: 'behind' });
    } finally {
      await processes.thawEtcd();
    }
    const allowed = answers.filter((a) => a.status === 200 && decision(a) === 'allow').map((a) => `ticket/${a.i}`);
    const refused = answers.filter((a) => !allowed.includes(`ticket/${a.i}`));
    // Answered from the caches at first; refused once the records have waited 10 s for the API server.
    expect(allowed.length).toBeGreaterThan(5);
    for (const r of refused) expect(r).toMatchObject({ status: 503, body: { error: { code: 'journal_behind' } } });

    const written = await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.hops?.allowed === 1 + allowed.length, 30_000);
    const audited = await auditedHops(env, task.metadata.uid);
    expect(audited.hops.sort()).toEqual(['ticket/0', ...allowed].sort());
    expect(audited.breaks).toEqual([]);
    expect({ count: audited.chain?.count, head: audited.chain?.head }).toEqual({ count: written.status?.audit?.count, head: written.status?.audit?.head });
    expect(decision(await hop(env, token, 99))).toBe('allow');
    await expect.poll(async () => (await readiness(env)).status, { timeout: 30_000, interval: 200 }).toBe(200);
  });

  test('the API server is killed while a journal write waits on a frozen etcd: whether or not that write landed, every hop answered is counted and in the audit chain exactly once', async ({ admin, env, namespace }) => {
    const processes = new ControlPlaneFaults(inject('controlPlaneFaults'));
    const { token, task } = await boundTask(admin, env, namespace);
    expect(decision(await hop(env, token, 0))).toBe('allow');
    await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.hops?.allowed === 1);

    await processes.freezeEtcd();
    try {
      for (let i = 1; i <= 3; i++) expect(decision(await hop(env, token, i))).toBe('allow');
      // The journal's write has gone out and waits on etcd; the API server dies before it can answer.
      await new Promise((r) => setTimeout(r, 1_000));
      await processes.stopApiServer('kill');
    } finally {
      await processes.thawEtcd();
      await processes.startApiServer();
    }

    // Settled: the stream has caught up with the head in the task's status.
    await expect
      .poll(async () => (await auditedHops(env, task.metadata.uid)).chain?.head === (await readTask(admin, namespace, 'ticket-4711'))?.status?.audit?.head, { timeout: 30_000, interval: 250 })
      .toBe(true);
    const written = await readTask(admin, namespace, 'ticket-4711');
    const audited = await auditedHops(env, task.metadata.uid);
    expect(audited.breaks).toEqual([]);
    expect(audited.hops.sort()).toEqual(['ticket/0', 'ticket/1', 'ticket/2', 'ticket/3']);
    expect(written?.status?.hops?.allowed).toBe(4);
    expect(written?.status?.chain?.hopCount).toBe(4);
    expect(audited.chain?.count).toBe(written?.status?.audit?.count);
    await expect.poll(async () => (await readiness(env)).status, { timeout: 30_000, interval: 200 }).toBe(200);
  });
});
