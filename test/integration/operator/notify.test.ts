import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { readFile } from 'node:fs/promises';
import { CoreV1Api, type KubeConfig } from '@kubernetes/client-node';
import { examplePolicy } from '../../builders/examples.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { boundExampleAgent, pendingRefund } from '../../env/hops.js';
import { rejection } from '../../env/kube.js';
import { waitForTask } from './helpers.js';

const TOKEN = 'notify-credential-7f3a9c1e';

interface Received {
  headers: IncomingHttpHeaders;
  body: string;
}

/** A local webhook receiver that answers 503 to the first `failFirst` POSTs and 200 after. */
async function receiver(failFirst = 0): Promise<{ url: string; received: Received[]; attempts: () => number; close: () => Promise<void> }> {
  const received: Received[] = [];
  let attempts = 0;
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      attempts += 1;
      if (attempts <= failFirst) {
        res.writeHead(503).end('busy');
        return;
      }
      received.push({ headers: req.headers, body: Buffer.concat(chunks).toString('utf8') });
      res.writeHead(200).end('ok');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}/hooks/chainwarden`, received, attempts: () => attempts, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

async function events(kc: KubeConfig, namespace: string, task: string): Promise<{ type: string; reason: string; message: string }[]> {
  const list = await kc.makeApiClient(CoreV1Api).listNamespacedEvent({ namespace, fieldSelector: `involvedObject.name=${task}` });
  return list.items
    .sort((a, b) => String(a.metadata?.creationTimestamp).localeCompare(String(b.metadata?.creationTimestamp)))
    .map((e) => ({ type: e.type ?? '', reason: e.reason ?? '', message: e.message ?? '' }));
}

async function notifySecret(kc: KubeConfig, namespace: string): Promise<void> {
  await kc.makeApiClient(CoreV1Api).createNamespacedSecret({ namespace, body: { metadata: { name: 'approval-hook' }, stringData: { token: TOKEN } } });
}

describe('approval notifications', () => {
  test('a hop that starts waiting is posted as Slack JSON with its details, the approve command and the Secret\'s credential, once', async ({ admin, env, namespace }) => {
    const hook = await receiver();
    try {
      await notifySecret(admin, namespace);
      const agent = await boundExampleAgent(admin, env, namespace, {
        policy: (p) => void (p.spec.approval = { timeout: '15m', notify: { url: hook.url, secretRef: { name: 'approval-hook', key: 'token' }, prefix: 'Bearer ' } }),
      });
      const answer = await agent.hop({ tool: 'payments', action: 'refund', resource: 'order/1', intent: 'refund the <!channel> duplicate *charge*', attributes: { amount: 42 } });
      expect(answer.body.decision).toBe('pending_approval');
      const hopId = answer.body.hopId;

      await expect.poll(() => hook.received.length, { timeout: 15_000 }).toBe(1);
      const [got] = hook.received;
      expect(got?.headers.authorization).toBe(`Bearer ${TOKEN}`);
      expect(got?.headers['content-type']).toBe('application/json');
      const message = JSON.parse(got?.body ?? '{}') as { text: string; blocks: unknown[] };
      expect(message.text).toContain(`Hop ${hopId} of AgentTask ${namespace}/ticket-4711 waits for approval`);
      expect(message.text).toContain(`\`chainwarden approve ${namespace}/ticket-4711 ${hopId} --reason "…"\``);
      const blocks = JSON.stringify(message.blocks);
      for (const part of ['`payments`', '`refund`', '`order/1`', '`amount` = `42`', '`refunds-need-a-human`', `kubectl chainwarden approve ${namespace}/ticket-4711 ${hopId}`]) expect(blocks).toContain(part);
      expect(blocks).toContain('`refund the &lt;!channel&gt; duplicate *charge*`');
      expect(blocks).not.toContain('<!channel>');

      const task = await waitForTask(admin, namespace, 'ticket-4711', (t) => (t.status?.notifiedHops ?? []).some((n) => n.hopId === hopId));
      expect(task.status?.pendingHops?.map((h) => h.hopId)).toEqual([hopId]);
      await expect.poll(async () => (await events(admin, namespace, 'ticket-4711')).filter((e) => e.reason === 'ApprovalNotified'), { timeout: 10_000 }).toEqual([
        { type: 'Normal', reason: 'ApprovalNotified', message: `hop ${hopId} (waiting for approval) was posted to ${new URL(hook.url).host} as Slack` },
      ]);
      // Recorded: later status changes (a second hop) do not send the first again.
      const second = await pendingRefund(agent, '2');
      await expect.poll(() => hook.received.length, { timeout: 15_000 }).toBe(2);
      expect(hook.received[1]?.body).toContain(second);
      await new Promise((r) => setTimeout(r, 1_500));
      expect(hook.received).toHaveLength(2);
    } finally {
      await hook.close();
    }
  });

  test('a CloudEvents policy gets a structured CloudEvent whose id is the hop id', async ({ admin, env, namespace }) => {
    const hook = await receiver();
    try {
      const agent = await boundExampleAgent(admin, env, namespace, {
        policy: (p) => void (p.spec.approval = { timeout: '15m', notify: { url: hook.url, format: 'CloudEvents' } }),
      });
      const hopId = await pendingRefund(agent);
      await expect.poll(() => hook.received.length, { timeout: 15_000 }).toBe(1);
      const [got] = hook.received;
      expect(got?.headers['content-type']).toBe('application/cloudevents+json');
      expect(got?.headers.authorization).toBeUndefined();
      const event = JSON.parse(got?.body ?? '{}') as Record<string, unknown>;
      expect(event).toMatchObject({
        specversion: '1.0',
        type: 'io.chainwarden.hop.pending',
        source: `/apis/chainwarden.io/v1alpha1/namespaces/${namespace}/agenttasks/ticket-4711`,
        id: hopId,
        datacontenttype: 'application/json',
        data: { namespace, task: 'ticket-4711', hopId, tool: 'payments', action: 'refund', resource: 'order/1', attributes: { amount: '42' }, rules: ['refunds-need-a-human'] },
      });
      expect(Date.parse(String(event.time))).not.toBeNaN();
    } finally {
      await hook.close();
    }
  });

  test('a receiver that fails twice still gets the hop; each failure is a Warning Event naming the host, never the credential', async ({ admin, env, namespace }) => {
    const hook = await receiver(2);
    try {
      await notifySecret(admin, namespace);
      const agent = await boundExampleAgent(admin, env, namespace, {
        policy: (p) => void (p.spec.approval = { timeout: '15m', notify: { url: hook.url, format: 'CloudEvents', secretRef: { name: 'approval-hook', key: 'token' }, header: 'X-Hook-Token' } }),
      });
      const hopId = await pendingRefund(agent);
      await expect.poll(() => hook.received.length, { timeout: 30_000 }).toBe(1);
      expect(hook.attempts()).toBe(3);
      expect(hook.received[0]?.headers['x-hook-token']).toBe(TOKEN);

      const host = new URL(hook.url).host;
      await expect.poll(async () => (await events(admin, namespace, 'ticket-4711')).filter((e) => e.reason.startsWith('ApprovalNotif')).map((e) => e.reason), { timeout: 10_000 }).toEqual([
        'ApprovalNotifyFailed',
        'ApprovalNotifyFailed',
        'ApprovalNotified',
      ]);
      const all = await events(admin, namespace, 'ticket-4711');
      const failures = all.filter((e) => e.reason === 'ApprovalNotifyFailed');
      expect(failures.map((e) => e.type)).toEqual(['Warning', 'Warning']);
      expect(failures[0]?.message).toMatch(new RegExp(`^could not post hop ${hopId} \\(waiting for approval\\) to ${host}: HTTP 503 \\(attempt 1\\); trying again in \\d+s$`));
      expect(failures[1]?.message).toContain('HTTP 503 (attempt 2)');
      expect(all.find((e) => e.reason === 'ApprovalNotified')?.message).toContain('after 2 failed attempt(s)');
      for (const e of all) expect(e.message).not.toContain('/hooks/chainwarden');
      expect(JSON.stringify(all)).not.toContain(TOKEN);
      expect(await readFile(env.operatorLog ?? '', 'utf8')).not.toContain(TOKEN);
    } finally {
      await hook.close();
    }
  });

  test('a policy whose notify Secret does not exist is refused, naming the field', async ({ admin, namespace }) => {
    const policy = examplePolicy(namespace);
    policy.spec.approval = { notify: { url: 'https://hooks.example.com/chainwarden', secretRef: { name: 'no-such-hook', key: 'token' } } };
    expect(await rejection(admin, policy)).toMatch(/spec.approval.notify.secretRef.*no-such-hook.*does not exist/);
    policy.spec.approval = { notify: { url: 'ftp://hooks.example.com/x' } };
    expect(await rejection(admin, policy)).toMatch(/spec.approval.notify.url.*must be an http:\/\/ or https:\/\/ URL/);
  });
});
