import { mkdir, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { once } from 'node:events';
import { ChainwardenError } from '../errors.js';
import { localAws, startLocalEnvironment, type EnvironmentDescription } from '../controlplane/environment.js';
import { parseCommandArgs, progressLine } from './common.js';
import { createLogger } from '../log.js';
import { pino } from 'pino';
import { startOperator, type RunningOperator } from '../operator/operator.js';
import { tracingOption } from './operator.js';

/**
 * `chainwarden devenv --out DIR`: everything a script outside this repository needs to test
 * against, running until SIGINT or SIGTERM. `DIR/env.json` appears only once all of it is ready,
 * so a script can wait for that file.
 */
export async function runDevenv(args: string[]): Promise<number> {
  const { values } = parseCommandArgs('devenv', args, {
    out: { type: 'string' },
    'keep-state': { type: 'boolean', default: false },
    'no-operator': { type: 'boolean', default: false },
  });
  if (!values.out) throw new ChainwardenError('usage', 'devenv needs --out DIR: the directory where env.json is written');
  const out = path.resolve(values.out);
  await mkdir(out, { recursive: true });

  const env = await startLocalEnvironment({ progress: progressLine, keepState: values['keep-state'] });
  const description: EnvironmentDescription = env.describe();
  let operator: RunningOperator | undefined;
  if (!values['no-operator']) {
    try {
      description.auditFile = path.join(env.stateDir, 'audit.jsonl');
      operator = await startOperator({ kc: env.adminKubeConfig(), log: createLogger({ name: 'operator' }, pino.destination(2)), register: {}, aws: localAws(description), auditFile: description.auditFile, tracing: tracingOption() });
    } catch (err) {
      await env.stop();
      throw err;
    }
    description.brokerUrl = operator.url;
    description.webhookUrl = operator.webhookUrl;
    description.brokerCA = path.join(env.stateDir, 'broker-ca.crt');
    await writeFile(description.brokerCA, operator.caPem);
    progressLine(`operator serving: broker at ${operator.url}, webhooks at ${operator.webhookUrl}`);
  }
  // Listening before env.json appears: a script may signal the moment it sees the file.
  const stopping = Promise.race([once(process, 'SIGINT'), once(process, 'SIGTERM')]);
  const file = path.join(out, 'env.json');
  await writeFile(`${file}.tmp`, `${JSON.stringify(description, null, 2)}\n`);
  await rename(`${file}.tmp`, file);
  progressLine(`ready: ${file} (Ctrl-C or SIGTERM stops everything)`);

  const signal = await stopping;
  progressLine(`stopping (${String(signal[0] ?? 'signal')})`);
  await operator?.stop();
  await env.stop();
  return 0;
}
