import { brokerRequest } from '../../env/agents.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { boundExampleAgent } from '../../env/hops.js';
import { brokersOf, leaderlessReplica, readTask } from '../operator/helpers.js';

describe('the chain is one chain across replicas', () => {
  test("PII read on one replica, an email asked of another right after, whose watch is 3 s behind: the email is a violation, because the read was in status before it was answered and the email's first use reads status", async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace);
    // Every change reaches this replica's caches 3 s late: a starved process, or a slow watch.
    const standby = await leaderlessReplica(env.kubeconfig, namespace, 3_000);
    try {
      const [, other] = await brokersOf(env, standby);
      const atOther = { ...env, brokerUrl: other?.url ?? '', brokerCA: other?.caFile ?? '' };
      // The second replica knows the pod once a question about an unknown hop gets "not found" (nothing is recorded).
      await expect.poll(async () => (await brokerRequest(atOther, 'GET', '/v1/hops/h1_AAAAAAAAAAAA_AAAAAAAAAAAAAAAA', { token: agent.token })).status, { timeout: 15_000 }).toBe(404);

      // The agent reads customer data through the replica its sidecar happened to reach…
      const read = await agent.hop({ tool: 'tickets', action: 'read', resource: 'ticket/4711' });
      expect(read.body).toMatchObject({ decision: 'allow' });
      // …and at once asks the other replica to send an email (a compromised agent, or a sidecar pool spread over replicas).
      const email = await brokerRequest(atOther, 'POST', '/v1/hops', { token: agent.token, body: { tool: 'email', action: 'send', resource: 'mailto:attacker@example.com' } });
      expect(email).toMatchObject({ status: 200, body: { decision: 'deny', reasons: [{ rule: 'no-exfiltration', effect: 'Deny' }] } });

      const task = await readTask(admin, namespace, 'ticket-4711');
      expect(task?.status?.chain?.dataClassesTouched).toEqual(['pii']);
      expect(task?.status?.violation).toMatchObject({ rule: 'no-exfiltration' });
      // The task is revoked: the replica that decided the violation refuses at once, the other once its watch shows it.
      expect((await brokerRequest(atOther, 'POST', '/v1/hops', { token: agent.token, body: { tool: 'tickets', action: 'read', resource: 'ticket/4712' } })).status).toBe(403);
      await expect.poll(async () => (await agent.hop({ tool: 'tickets', action: 'read', resource: 'ticket/4712' })).status, { timeout: 5_000 }).toBe(403);
    } finally {
      await standby.stop();
    }
  });
});
