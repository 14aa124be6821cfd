import { describe, expect, it, vi } from 'vitest';
import type { AgentPolicy, AgentTask } from '../../../src/api/schema.js';
import { silentLogger } from '../../../src/log.js';
import { ApprovalNotifier, type NotifyTarget, type NotifyTransport } from '../../../src/notify/notifier.js';
import { TaskClientTwin } from '../../builders/task-client-twin.js';

const CREDENTIAL = 's3cr3t-notify-token';
const T0 = Date.parse('2026-11-21T10:00:00.000Z');

const hop = (hopId: string) => ({
  hopId,
  digest: 'd',
  tool: 'payments',
  action: 'refund',
  resource: 'order/1',
  depth: 1,
  rules: ['refunds-need-a-human'],
  requestedAt: new Date(T0).toISOString(),
  timeoutAt: new Date(T0 + 15 * 60_000).toISOString(),
});

function taskWith(pending: string[], notified: string[] = []): AgentTask {
  return {
    apiVersion: 'chainwarden.io/v1alpha1',
    kind: 'AgentTask',
    metadata: { namespace: 'support', name: 'ticket-4711', uid: 'uid-1', creationTimestamp: new Date(T0 - 60_000).toISOString() },
    spec: { serviceAccountName: 'agent', policyRef: { name: 'support' }, ttl: '1h' },
    status: { state: 'Bound', deadline: new Date(T0 + 3_600_000).toISOString(), pendingHops: pending.map(hop), ...(notified.length > 0 ? { notifiedHops: notified.map((hopId) => ({ hopId, at: 'x' })) } : {}) },
  };
}

interface Sent {
  url: string;
  headers: Record<string, string>;
  body: string;
}

function setup(task: AgentTask, answers: (number | Error)[], target: Partial<NotifyTarget> = {}, secret: () => Promise<string> = () => Promise.resolve(CREDENTIAL)) {
  const twin = new TaskClientTwin(task);
  const clock = { t: T0, now: () => clock.t };
  const sent: Sent[] = [];
  const transport: NotifyTransport = (url, { headers, body }) => {
    sent.push({ url, headers, body });
    const answer = answers.shift() ?? 200;
    return answer instanceof Error ? Promise.reject(answer) : Promise.resolve({ status: answer });
  };
  const policy = { spec: { approval: { notify: { url: 'https://hooks.example.com/path/with/token', secretRef: { name: 'hook', key: 'token' }, prefix: 'Bearer ', ...target } } } } as unknown as AgentPolicy;
  const notifier = new ApprovalNotifier({
    tasks: () => (twin.task ? [twin.task] : []),
    task: () => twin.task,
    policy: () => policy,
    secrets: { value: secret },
    status: twin.statusWriter('notifier'),
    events: twin,
    transport,
    clock,
    log: silentLogger(),
    random: () => 1,
  });
  const pass = async () => {
    notifier.pass(new AbortController().signal);
    await notifier.settle();
  };
  return { twin, clock, sent, notifier, pass };
}

/** A notifier over several tasks, each namespace's receiver its own URL. */
function manyTasks(tasks: AgentTask[], transport: NotifyTransport, options: { scanMs?: number } = {}) {
  const twin = new TaskClientTwin(tasks[0] as AgentTask);
  const sent: Sent[] = [];
  const notifier = new ApprovalNotifier({
    tasks: () => tasks,
    task: (namespace, name) => tasks.find((t) => t.metadata.namespace === namespace && t.metadata.name === name),
    policy: (namespace) => ({ spec: { approval: { notify: { url: `https://hooks.example.com/${namespace}` } } } }) as unknown as AgentPolicy,
    secrets: { value: () => Promise.resolve(CREDENTIAL) },
    status: twin.statusWriter('notifier'),
    events: twin,
    transport: (url, request) => {
      sent.push({ url, headers: request.headers, body: request.body });
      return transport(url, request);
    },
    clock: { now: () => T0 },
    log: silentLogger(),
    random: () => 1,
    ...options,
  });
  return { sent, notifier };
}

describe('the approval notifier', () => {
  it('posts a pending hop once, with the credential from the Secret, and records that it did', async () => {
    const { twin, sent, pass } = setup(taskWith(['h1']), [200]);
    await pass();
    expect(sent).toHaveLength(1);
    expect(sent[0]?.url).toBe('https://hooks.example.com/path/with/token');
    expect(sent[0]?.headers).toMatchObject({ authorization: `Bearer ${CREDENTIAL}`, 'content-type': 'application/json' });
    expect(twin.task?.status?.notifiedHops).toEqual([{ hopId: 'h1', at: new Date(T0).toISOString() }]);
    expect(twin.events).toEqual([{ type: 'Normal', reason: 'ApprovalNotified', message: 'hop h1 (waiting for approval) was posted to hooks.example.com as Slack' }]);
    await pass();
    expect(sent).toHaveLength(1);
  });

  it('a hop the status already records as notified (by an earlier leader) is not sent again', async () => {
    const { sent, pass } = setup(taskWith(['h1', 'h2'], ['h1']), []);
    await pass();
    expect(sent.map((s) => (JSON.parse(s.body) as { text: string }).text.split(' ')[1])).toEqual(['h2']);
  });

  it('retries a failing receiver with backoff; each failure is a Warning Event naming the host and the status, never the credential or the path', async () => {
    const refused = Object.assign(new TypeError('fetch failed'), { cause: { code: 'ECONNREFUSED' } });
    const { twin, clock, sent, pass } = setup(taskWith(['h1']), [503, refused, 200], { format: 'CloudEvents' });
    await pass();
    expect(sent).toHaveLength(1);
    await pass();
    expect(sent).toHaveLength(1); // waiting out the backoff
    clock.t += 2_000;
    await pass();
    expect(sent).toHaveLength(2);
    clock.t += 3_999;
    await pass();
    expect(sent).toHaveLength(2);
    clock.t += 1;
    await pass();
    expect(sent).toHaveLength(3);
    expect(twin.events.map((e) => [e.type, e.reason, e.message])).toEqual([
      ['Warning', 'ApprovalNotifyFailed', 'could not post hop h1 (waiting for approval) to hooks.example.com: HTTP 503 (attempt 1); trying again in 2s'],
      ['Warning', 'ApprovalNotifyFailed', 'could not post hop h1 (waiting for approval) to hooks.example.com: ECONNREFUSED (attempt 2); trying again in 4s'],
      ['Normal', 'ApprovalNotified', 'hop h1 (waiting for approval) was posted to hooks.example.com as CloudEvents after 2 failed attempt(s)'],
    ]);
    expect(new Set(sent.map((s) => (JSON.parse(s.body) as { id: string }).id))).toEqual(new Set(['h1']));
    expect(sent[0]?.headers['content-type']).toBe('application/cloudevents+json');
  });

  it('an error whose message quotes the header never puts the credential in an Event', async () => {
    const { twin, pass } = setup(taskWith(['h1']), [new TypeError(`Headers.append: "Bearer ${CREDENTIAL}" is an invalid header value.`)]);
    await pass();
    expect(twin.events).toHaveLength(1);
    expect(JSON.stringify(twin.events)).not.toContain(CREDENTIAL);
    expect(twin.events[0]?.message).toContain(': TypeError (attempt 1)');
  });

  it('a hop decided before its notification goes out is not sent, and one decided while failing is not retried', async () => {
    const { twin, clock, sent, pass } = setup(taskWith(['h1']), [500]);
    await pass();
    expect(sent).toHaveLength(1);
    await twin.statusWriter('journal').update('support', 'ticket-4711', (t) => ({ ...t.status, pendingHops: [] }));
    clock.t += 60_000;
    await pass();
    expect(sent).toHaveLength(1);
  });

  it('a hop past its timeout, or of an ended task, is not sent', async () => {
    const late = setup(taskWith(['h1']), []);
    late.clock.t += 15 * 60_000;
    await late.pass();
    expect(late.sent).toHaveLength(0);
    const ended = taskWith(['h1']);
    ended.status = { ...ended.status, state: 'Violated' };
    const over = setup(ended, []);
    await over.pass();
    expect(over.sent).toHaveLength(0);
  });

  it('an attempt cut short by losing leadership is no failure: no Event, and it is tried again at once', async () => {
    const task = taskWith(['h1']);
    const twin = new TaskClientTwin(task);
    let calls = 0;
    const transport: NotifyTransport = (_url, { signal }) => {
      calls += 1;
      if (calls > 1) return Promise.resolve({ status: 200 });
      return new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(Object.assign(new Error('aborted'), { name: 'AbortError' }))));
    };
    const notifier = new ApprovalNotifier({
      tasks: () => (twin.task ? [twin.task] : []),
      task: () => twin.task,
      policy: () => ({ spec: { approval: { notify: { url: 'https://hooks.example.com/x' } } } }) as unknown as AgentPolicy,
      secrets: { value: () => Promise.resolve(CREDENTIAL) },
      status: twin.statusWriter('notifier'),
      events: twin,
      transport,
      clock: { now: () => T0 },
      log: silentLogger(),
    });
    const term = new AbortController();
    notifier.pass(term.signal);
    term.abort();
    await notifier.settle();
    expect(twin.events).toEqual([]);
    notifier.pass(new AbortController().signal);
    await notifier.settle();
    expect(calls).toBe(2);
    expect(twin.events.map((e) => e.reason)).toEqual(['ApprovalNotified']);
  });

  it('a burst of waiting hops is posted at most 32 at a time, 8 of one namespace, and one more for each namespace with none under way; the rest as slots free up', async () => {
    const tasks = Array.from({ length: 5 }, (_, n) => ({ ...taskWith(Array.from({ length: 8 }, (_, i) => `h${n}-${i}`)), metadata: { namespace: `team-${n}`, name: 'ticket', uid: `uid-${n}` } }));
    tasks.push({ ...taskWith(Array.from({ length: 12 }, (_, i) => `h5-${i}`)), metadata: { namespace: 'team-5', name: 'ticket', uid: 'uid-5' } });
    const { sent, notifier } = manyTasks(tasks, () => Promise.resolve({ status: 200 }));
    notifier.pass(new AbortController().signal);
    // Four namespaces fill the 32 slots; the other two still start one each.
    expect(sent).toHaveLength(34);
    await notifier.settle();
    for (let i = 0; i < 3; i++) {
      notifier.pass(new AbortController().signal);
      await notifier.settle();
    }
    expect(new Set(sent.map((s) => (JSON.parse(s.body) as { text: string }).text.split(' ')[1])).size).toBe(52);
  });

  it('a slot freed takes the next notice at once, not at the next scan', async () => {
    const tasks = [{ ...taskWith(Array.from({ length: 12 }, (_, i) => `h${i}`)), metadata: { namespace: 'support', name: 'ticket', uid: 'uid-1' } }];
    const { sent, notifier } = manyTasks(tasks, () => new Promise((resolve) => setTimeout(() => resolve({ status: 200 }), 5)), { scanMs: 60_000 });
    const stop = new AbortController();
    const running = notifier.run(stop.signal);
    await vi.waitFor(() => expect(sent).toHaveLength(12), { timeout: 2_000 });
    stop.abort();
    await running;
  });

  it('tenants whose receivers never answer hold 8 slots each, never the last: another namespace\'s approvers still hear at once', async () => {
    const hostile = Array.from({ length: 10 }, (_, n) => ({ ...taskWith(Array.from({ length: 10 }, (_, i) => `h${n}-${i}`)), metadata: { namespace: `hostile-${n % 5}`, name: `t${n}`, uid: `uid-${n}` } }));
    const benign = { ...taskWith(['h-benign']), metadata: { namespace: 'support', name: 'ticket-4711', uid: 'uid-benign' } };
    const stop = new AbortController();
    // The hostile receiver holds every request until the test ends; the benign one answers.
    const { sent, notifier } = manyTasks([...hostile, benign], (url, { signal }) =>
      url.includes('hostile') ? new Promise((_, reject) => AbortSignal.any([signal, stop.signal]).addEventListener('abort', () => reject(new Error('aborted')))) : Promise.resolve({ status: 200 }),
    );
    notifier.pass(stop.signal);
    // Four hostile namespaces take the 32 slots; the fifth still starts one, as does the benign one.
    expect(sent.filter((s) => s.url.includes('hostile'))).toHaveLength(33);
    expect(sent.filter((s) => !s.url.includes('hostile')).map((s) => (JSON.parse(s.body) as { text: string }).text.split(' ')[1])).toEqual(['h-benign']);
    stop.abort();
    await notifier.settle();
  });

  it('a missing Secret is a failed attempt like any other, retried', async () => {
    const { twin, sent, pass } = setup(taskWith(['h1']), [], {}, () => Promise.reject(new Error('Secret support/hook does not exist')));
    await pass();
    expect(sent).toHaveLength(0);
    expect(twin.events[0]).toMatchObject({ type: 'Warning', reason: 'ApprovalNotifyFailed', message: expect.stringContaining('Secret support/hook does not exist (attempt 1)') as unknown });
  });
});
