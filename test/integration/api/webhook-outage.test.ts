import { readFileSync } from 'node:fs';
import { webhookConfigurations } from '../../../src/admission/registration.js';
import type { AgentTask } from '../../../src/api/schema.js';
import { rawRequest } from '../../../src/kube/raw.js';
import { examplePolicy, exampleTask } from '../../builders/examples.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { create, rejection } from '../../env/kube.js';

const CONFIGURATIONS = '/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations';
const mergePatch = 'application/merge-patch+json';

describe('metadata edits do not wait on the webhooks', () => {
  test('while the webhook cannot be reached, a finalizer or label on an AgentTask is still edited; a create or a spec change is refused', async ({ admin, env, namespace }) => {
    await create(admin, examplePolicy(namespace));
    const task = await create(admin, exampleTask(namespace));
    const path = `/apis/chainwarden.io/v1alpha1/namespaces/${namespace}/agenttasks/${task.metadata.name ?? ''}`;

    // The registered validating webhook as the operator writes it, pointed at a port nothing
    // listens on, and scoped to this test's namespace so the rest of the cluster is untouched.
    const [validating] = webhookConfigurations({ url: 'https://127.0.0.1:1', caBundlePem: readFileSync(env.caFile, 'utf8') });
    const hook = validating.webhooks?.[0];
    expect(hook?.matchConditions).toBeDefined();
    const name = `unreachable-${namespace}`;
    const created = await rawRequest(admin, 'POST', CONFIGURATIONS, {
      apiVersion: 'admissionregistration.k8s.io/v1',
      kind: 'ValidatingWebhookConfiguration',
      metadata: { name },
      webhooks: [{ ...hook, name: 'unreachable.validate.chainwarden.io', timeoutSeconds: 2, namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': namespace } } }],
    });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    try {
      // The API server takes the configuration from its own watch: creates fail once it has.
      let attempt = 0;
      await expect
        .poll(async () => {
          const next = exampleTask(namespace);
          next.metadata.name = `second-${attempt++}`;
          return rejection(admin, next).catch((err: Error) => err.message);
        }, { timeout: 15_000 })
        .toMatch(/failed calling webhook "unreachable\.validate\.chainwarden\.io"/);

      // Metadata alone goes through: what an engineer does to a stuck task while the operator is down.
      const label = await rawRequest(admin, 'PATCH', path, { metadata: { labels: { 'team.example.com/owner': 'payments' } } }, mergePatch);
      expect(label.status, JSON.stringify(label.body)).toBe(200);
      const held = await rawRequest(admin, 'PATCH', path, { metadata: { finalizers: ['chainwarden.io/revoke', 'example.com/hold'] } }, mergePatch);
      expect(held.status, JSON.stringify(held.body)).toBe(200);
      const released = await rawRequest(admin, 'PATCH', path, { metadata: { finalizers: null } }, mergePatch);
      expect(released.status, JSON.stringify(released.body)).toBe(200);
      expect((released.body as AgentTask).metadata.finalizers).toBeUndefined();

      // A spec change still needs the webhook, and is refused without it.
      const reworded = await rawRequest(admin, 'PATCH', path, { spec: { intent: 'refund the duplicate charge, then close the ticket' } }, mergePatch);
      expect(reworded.status).toBeGreaterThanOrEqual(400);
      expect(JSON.stringify(reworded.body)).toMatch(/failed calling webhook \\"unreachable\.validate\.chainwarden\.io\\"/);
    } finally {
      await rawRequest(admin, 'DELETE', `${CONFIGURATIONS}/${name}`);
    }
  });
});
