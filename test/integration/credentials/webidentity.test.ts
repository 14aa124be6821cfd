import { decodeJwt } from 'jose';
import type { KubeConfig } from '@kubernetes/client-node';
import type { AgentPolicy } from '../../../src/api/schema.js';
import type { EnvironmentDescription } from '../../../src/controlplane/environment.js';
import { sourceIdentityFor, TRANSITIVE_TAG_KEYS } from '../../../src/credentials/plan.js';
import { examplePolicy, exampleTask } from '../../builders/examples.js';
import { brokerRequest, createAgentPod, createServiceAccount, podToken } from '../../env/agents.js';
import { createRole, recordedCalls } from '../../env/aws.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { create } from '../../env/kube.js';
import { waitForTask } from '../operator/helpers.js';

async function webIdentityAgent(admin: KubeConfig, env: EnvironmentDescription, namespace: string) {
  const roleArn = await createRole(env, `support-web-${namespace}`);
  const policy: AgentPolicy = examplePolicy(namespace);
  policy.spec.aws = { allowedRoleArns: ['arn:aws:iam::123456789012:role/support-*'], maxDuration: '1h', allowDirect: true };
  await create(admin, policy);
  await createServiceAccount(admin, namespace, 'support-agent');
  const task = exampleTask(namespace);
  task.spec.credentials = [{ name: 'default', aws: { roleArn, webIdentity: true, sessionTags: { team: 'support' }, delivery: 'Direct' } }];
  await create(admin, task);
  const pod = await createAgentPod(admin, namespace, { name: 'agent-0', task: 'ticket-4711', serviceAccount: 'support-agent' });
  const bound = await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.state === 'Bound');
  return { roleArn, task: bound, token: await podToken(admin, pod) };
}

describe('JWT-SVIDs cannot escape revocation', () => {
  test('the SVID sent to AssumeRoleWithWebIdentity carries the task\'s source identity and session tags, so the deny on the role matches', async ({ admin, env, namespace }) => {
    const { roleArn, task, token } = await webIdentityAgent(admin, env, namespace);
    const answer = await brokerRequest(env, 'GET', '/v1/credentials', { token });
    expect(answer.status, JSON.stringify(answer.body)).toBe(200);
    // The emulator does not read these claims; what reached "AWS" is the token we sent, so we check it.
    const sent = (await recordedCalls(env, 'AssumeRoleWithWebIdentity')).filter((p) => p.get('RoleArn') === roleArn);
    expect(sent).toHaveLength(1);
    const claims = decodeJwt(sent[0]?.get('WebIdentityToken') ?? '');
    expect(claims.aud).toBe('sts.amazonaws.com');
    expect(claims.sub).toBe(`spiffe://cluster.local/ns/${namespace}/sa/support-agent/task/ticket-4711`);
    expect(claims['https://aws.amazon.com/source_identity']).toBe(sourceIdentityFor(task));
    expect(claims['https://aws.amazon.com/tags']).toEqual({
      principal_tags: { 'chainwarden:task': ['ticket-4711'], 'chainwarden:namespace': [namespace], 'chainwarden:serviceaccount': ['support-agent'], team: ['support'] },
      transitive_tag_keys: [...TRANSITIVE_TAG_KEYS],
    });
  });

  test.for(['sts.amazonaws.com'])('an agent cannot get an SVID for the reserved audience %s', async (audience, { admin, env, namespace }) => {
    const { token } = await webIdentityAgent(admin, env, namespace);
    const refused = await brokerRequest(env, 'GET', `/v1/svid?audience=${audience}`, { token });
    expect(refused.status).toBe(403);
    expect(refused.body).toMatchObject({ error: { code: 'forbidden', field: 'audience', message: expect.stringContaining('reserved') as string } });
    // Its own services' audiences still work.
    const mine = await brokerRequest(env, 'GET', '/v1/svid?audience=tickets.support.svc', { token });
    expect(mine.status).toBe(200);
  });
});
