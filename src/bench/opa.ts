/**
 * OPA serving the bench policy's rules as Rego, for the comparison the benchmark reports: the
 * same load generator, over TLS with the same certificate, on the same machine, in the same run.
 * The chain context chainwarden keeps itself (the data classes the task has touched, its hop
 * count) is passed in as input, since OPA keeps no state between decisions.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ensureOpa } from '../controlplane/assets.js';
import { freePort } from '../controlplane/ports.js';
import { https, type Serving } from './harness.js';

/** The bench AgentPolicy's rules (and its limits), decided as chainwarden decides them: deny wins, then allow, else deny. */
export const BENCH_RULES_REGO = `package chainwarden

deny contains "limit:maxHops" if input.chain.hopCount >= 100000

deny contains "limit:maxDepth" if input.depth > 64

deny contains "no-exfiltration" if {
	input.tool == "email"
	input.action == "send"
	"pii" in input.chain.dataClasses
}

allow contains "read-and-comment" if {
	input.tool == "tickets"
	input.action in {"read", "comment"}
	glob.match("ticket/*", [], input.resource)
}

allow contains "who-am-i" if {
	input.tool == "aws:sts"
	input.action == "sts:GetCallerIdentity"
}

decision := {"decision": "deny", "reasons": deny} if {
	count(deny) > 0
} else := {"decision": "allow", "reasons": allow} if {
	count(allow) > 0
} else := {"decision": "deny", "reasons": {"default-deny"}}
`;

/** What the broker's hop request carries, with the chain as chainwarden would know it. */
export const OPA_INPUT = JSON.stringify({ input: { tool: 'tickets', action: 'read', resource: 'ticket/4711', depth: 1, chain: { hopCount: 1, dataClasses: ['pii'], systems: ['tickets'] } } });

export interface Opa {
  url: string;
  child: ChildProcess;
  stop(): void;
}

export async function startOpa(dir: string, serving: Serving): Promise<Opa> {
  const binary = await ensureOpa((m) => process.stderr.write(`· ${m}\n`));
  const policy = path.join(dir, 'chainwarden.rego');
  await writeFile(policy, BENCH_RULES_REGO);
  const port = await freePort();
  const child = spawn(binary, ['run', '--server', '--log-level', 'error', '--addr', `127.0.0.1:${port}`, '--tls-cert-file', serving.cert, '--tls-private-key-file', serving.key, policy], { stdio: ['ignore', 'ignore', 'inherit'] });
  const opa = { url: `https://127.0.0.1:${port}`, child, stop: () => void child.kill('SIGTERM') };
  for (let i = 0; i < 300; i++) {
    const answer = await https({ url: opa.url, ca: serving.caPem }, 'POST', '/v1/data/chainwarden/decision', undefined, JSON.parse(OPA_INPUT)).catch(() => undefined);
    if (answer?.status === 200) {
      const result = (answer.body as { result?: { decision?: string } }).result;
      // Same rules, same answer: a Rego twin that decided otherwise would make the comparison meaningless.
      if (result?.decision !== 'allow') throw new Error(`OPA decided ${JSON.stringify(answer.body)} where chainwarden allows`);
      return opa;
    }
    if (child.exitCode !== null) break;
    await sleep(100);
  }
  child.kill('SIGKILL');
  throw new Error('OPA did not start');
}
