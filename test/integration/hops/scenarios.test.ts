import type { KubeConfig } from '@kubernetes/client-node';
import type { EnvironmentDescription } from '../../../src/controlplane/environment.js';
import { boundExampleAgent, type BoundAgent, type HopAnswer } from '../../env/hops.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { scenarios, type Scenario } from '../../builders/hop-scenarios.js';

/** The scenarios that also run end to end: one of each decision, the chain context, and a limit. */
const END_TO_END = new Set([
  'reading a ticket is allowed by its rule',
  'a refund waits for a person',
  'no email to an external system after reading PII in the same task',
  'the task\'s maxDepth stops a chain that goes too deep',
  'raw Cedar can allow on the hop\'s attributes',
  'leaving out parentHop does not reset the depth a rule sees',
  'a hop denied for going too deep went nowhere: the next hop is as deep as the deepest allowed one, and allowed',
]);
const endToEnd = scenarios.filter((s) => END_TO_END.has(s.name));

async function run(admin: KubeConfig, env: EnvironmentDescription, namespace: string, s: Scenario) {
  const agent: BoundAgent = await boundExampleAgent(admin, env, namespace, { policy: s.policy, task: s.task });
  let previous: string | undefined;
  let last: HopAnswer | undefined;
  for (const step of [...(s.before ?? []), s.hop]) {
    const { parent, ...body } = step;
    const answer = await agent.hop(parent && previous ? { ...body, parentHop: previous } : body);
    expect(answer.status, JSON.stringify(answer.body)).toBe(200);
    previous = answer.body.hopId;
    last = answer.body;
  }
  return last as HopAnswer;
}

describe('hop decisions through the real broker, with real pod-bound tokens', () => {
  test.for(endToEnd)('$name', async (s, { admin, env, namespace }) => {
    expect(endToEnd).toHaveLength(END_TO_END.size);
    const answer = await run(admin, env, namespace, s);
    expect(answer.decision).toBe(s.decision);
    expect(answer.reasons.map((r) => r.rule).sort()).toEqual([...s.rules].sort());
    expect(answer.hopId).toMatch(/^h\d+_/);
    if (s.depth) expect(answer.depth).toBe(s.depth);
  });
});
