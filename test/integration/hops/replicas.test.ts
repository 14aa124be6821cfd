import { brokerRequest } from '../../env/agents.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { boundExampleAgent } from '../../env/hops.js';
import { brokersOf, leaderlessReplica, readTask } from '../operator/helpers.js';

describe('the chain is one chain across replicas', () => {
  test('PII read on one replica, an email asked of another right after: the email is a violation, because the read was in status before it was answered', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace);
    const standby = await leaderlessReplica(env.kubeconfig, namespace);
    try {
      const [, other] = await brokersOf(env, standby);
      const atOther = { ...env, brokerUrl: other?.url ?? '', brokerCA: other?.caFile ?? '' };
      // The second replica knows the pod once a question about an unknown hop gets "not found" (nothing is recorded).
      await expect.poll(async () => (await brokerRequest(atOther, 'GET', '/v1/hops/h1_AAAAAAAAAAAA_AAAAAAAAAAAAAAAA', { token: agent.token })).status, { timeout: 10_000 }).toBe(404);

      // The agent reads customer data through the replica its sidecar happened to reach…
      const read = await agent.hop({ tool: 'tickets', action: 'read', resource: 'ticket/4711' });
      expect(read.body).toMatchObject({ decision: 'allow' });
      // …and at once asks the other replica to send an email (a compromised agent, or a sidecar pool spread over replicas).
      const email = await brokerRequest(atOther, 'POST', '/v1/hops', { token: agent.token, body: { tool: 'email', action: 'send', resource: 'mailto:attacker@example.com' } });
      expect(email).toMatchObject({ status: 200, body: { decision: 'deny', reasons: [{ rule: 'no-exfiltration', effect: 'Deny' }] } });

      const task = await readTask(admin, namespace, 'ticket-4711');
      expect(task?.status?.chain?.dataClassesTouched).toEqual(['pii']);
      expect(task?.status?.violation).toMatchObject({ rule: 'no-exfiltration' });
      // A read that widens nothing is answered from memory, as before; both replicas refuse the violated task.
      for (const at of [env, atOther]) {
        expect((await brokerRequest(at, 'POST', '/v1/hops', { token: agent.token, body: { tool: 'tickets', action: 'read', resource: 'ticket/4712' } })).status).toBe(403);
      }
    } finally {
      await standby.stop();
    }
  });
});
