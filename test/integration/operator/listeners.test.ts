import { readFile } from 'node:fs/promises';
import { AdmissionregistrationV1Api } from '@kubernetes/client-node';
import type { EnvironmentDescription } from '../../../src/controlplane/environment.js';
import { examplePolicy, exampleTask } from '../../builders/examples.js';
import { dripHeaders } from '../../builders/slow-client.js';
import { brokerRequest } from '../../env/agents.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { create, rejection } from '../../env/kube.js';

/** A request to the operator's webhook listener, trusting the same CA as the broker's. */
const webhookRequest = (env: EnvironmentDescription, method: string, path: string, body?: string) => brokerRequest({ ...env, brokerUrl: env.webhookUrl }, method, path, { body });

const review = (namespace: string, object: unknown) =>
  JSON.stringify({
    apiVersion: 'admission.k8s.io/v1',
    kind: 'AdmissionReview',
    request: {
      uid: '705ab4f5-6393-11e8-b7cc-42010a800002',
      kind: { group: 'chainwarden.io', version: 'v1alpha1', kind: 'AgentTask' },
      resource: { group: 'chainwarden.io', version: 'v1alpha1', resource: 'agenttasks' },
      operation: 'CREATE',
      namespace,
      userInfo: { username: 'mallory' },
      object,
    },
  });

describe('the admission webhooks have a listener of their own', () => {
  test('the API server calls the webhook listener; the broker listener does not answer admission, nor the webhook listener the broker', async ({ admin, env, namespace }) => {
    expect(new URL(env.webhookUrl ?? '').port).not.toBe(new URL(env.brokerUrl ?? '').port);
    const api = admin.makeApiClient(AdmissionregistrationV1Api);
    const validating = await api.readValidatingWebhookConfiguration({ name: 'chainwarden' });
    const mutating = await api.readMutatingWebhookConfiguration({ name: 'chainwarden' });
    expect([...(validating.webhooks ?? []), ...(mutating.webhooks ?? [])].map((h) => new URL(h.clientConfig.url ?? '').origin)).toEqual([env.webhookUrl, env.webhookUrl, env.webhookUrl, env.webhookUrl]);
    // Really called there: only the webhook knows which policies exist.
    await create(admin, examplePolicy(namespace));
    const task = exampleTask(namespace);
    task.spec.policyRef = { name: 'absent' };
    expect(await rejection(admin, task)).toMatch(/admission webhook "resources.validate.chainwarden.io" denied the request/);

    // An AdmissionReview sent to the broker's port finds no webhook.
    const good = review(namespace, exampleTask(namespace));
    for (const path of ['/validate', '/mutate']) {
      expect(await brokerRequest(env, 'POST', path, { body: good }), path).toMatchObject({ status: 404, body: { error: { code: 'not_found' } } });
      expect((await webhookRequest(env, 'POST', path, good)).status, path).toBe(200);
    }
    // The webhook listener serves admission and health, nothing of the broker's.
    for (const [method, path] of [['POST', '/v1/hops'], ['GET', '/v1/hops/h1_AAAAAAAAAAAA_BBBBBBBBBBBBBBBB'], ['GET', '/v1/credentials'], ['GET', '/v1/svid?audience=x'], ['POST', `/v1/tasks/${namespace}/ticket-4711/complete`], ['GET', '/keys'], ['GET', '/.well-known/openid-configuration'], ['GET', '/metrics']] as const) {
      expect(await webhookRequest(env, method, path), path).toMatchObject({ status: 404, body: { error: { code: 'not_found' } } });
    }
    expect(await webhookRequest(env, 'GET', '/healthz')).toMatchObject({ status: 200, body: { status: 'ok' } });
    expect(await webhookRequest(env, 'GET', '/readyz')).toMatchObject({ status: 200, body: { status: 'ok' } });
  });

  test('a review nested two million deep is a 400 at once, the broker keeps answering meanwhile, and one over 4 MiB is a 413', async ({ env, namespace }) => {
    const depth = 1_900_000;
    const deep = review(namespace, 0).replace('"object":0', `"object":${'['.repeat(depth)}${']'.repeat(depth)}`);
    expect(deep.length).toBeLessThan(4 * 1024 * 1024);

    // While four such reviews are sent, the broker's health endpoint is asked again and again.
    let sending = true;
    const healthLatencies: number[] = [];
    const watch = (async () => {
      while (sending) {
        const started = performance.now();
        expect((await brokerRequest(env, 'GET', '/healthz')).status).toBe(200);
        healthLatencies.push(performance.now() - started);
      }
    })();
    const started = performance.now();
    const answers = await Promise.all(Array.from({ length: 4 }, () => webhookRequest(env, 'POST', '/validate', deep)));
    const elapsed = performance.now() - started;
    sending = false;
    await watch;
    for (const answer of answers) expect(answer).toMatchObject({ status: 400, body: { error: { code: 'json_too_deep', message: expect.stringMatching(/more than 100 deep/) as unknown } } });
    // Parsing one of these takes JSON.parse about half a second of the one event loop; scanning it, a few milliseconds.
    expect(elapsed).toBeLessThan(1_500);
    expect(Math.max(...healthLatencies)).toBeLessThan(500);

    const big = review(namespace, { data: 'x'.repeat(4 * 1024 * 1024) });
    expect(await webhookRequest(env, 'POST', '/validate', big)).toMatchObject({ status: 413, body: { error: { code: 'body_too_large' } } });
  });
});

describe('the broker listener is not held by clients that never finish a request', () => {
  test('a client that keeps its request headers coming is answered 408 and dropped after 10 s, while the broker keeps answering', async ({ env }) => {
    const url = new URL(env.brokerUrl ?? '');
    const ca = await readFile(env.brokerCA ?? '', 'utf8');
    const started = performance.now();
    const answer = await dripHeaders({ host: url.hostname, port: Number(url.port), ca, servername: url.hostname, path: '/v1/hops', everyMs: 1_000 });
    expect(answer).toMatch(/^HTTP\/1.1 408/);
    expect(performance.now() - started).toBeLessThan(15_000);
    expect((await brokerRequest(env, 'GET', '/healthz')).status).toBe(200);
  });
});

describe('the broker listener says how much memory the operator holds', () => {
  test('resident size and JavaScript heap in bytes, in all and per space, beside the cache they grow with', async ({ env }) => {
    const text = String((await brokerRequest(env, 'GET', '/metrics')).body);
    const value = (name: string) => Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(text)?.[1]);
    const rss = value('process_resident_memory_bytes');
    expect(rss).toBeGreaterThan(16 * 2 ** 20);
    expect(rss).toBeLessThan(2 ** 30);
    expect(value('nodejs_heap_size_used_bytes')).toBeGreaterThan(0);
    expect(value('nodejs_heap_size_used_bytes')).toBeLessThanOrEqual(value('nodejs_heap_size_total_bytes'));
    expect(rss).toBeGreaterThan(value('nodejs_heap_size_total_bytes'));
    expect(value('nodejs_external_memory_bytes')).toBeGreaterThan(0);
    expect(text).toMatch(/^chainwarden_cached_objects\{resource="agenttasks"\} \d+$/m);
    // Per space, so a grown young generation is told from a grown cache: the spaces add up to the heap.
    const spaces = [...text.matchAll(/^nodejs_heap_space_size_total_bytes\{space="(\w+)"\} (\d+)$/gm)];
    expect(spaces.map(([, space]) => space)).toEqual(expect.arrayContaining(['new', 'old', 'code', 'large_object']));
    expect(spaces.reduce((sum, [, , bytes]) => sum + Number(bytes), 0)).toBe(value('nodejs_heap_size_total_bytes'));
  });
});
