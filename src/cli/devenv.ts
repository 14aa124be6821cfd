import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ChainwardenError, errorMessage } from '../errors.js';
import { localAws, startLocalEnvironment, type EnvironmentDescription, type LocalEnvironment } from '../controlplane/environment.js';
import { parseCommandArgs, progressLine } from './common.js';
import { createLogger } from '../log.js';
import { pino } from 'pino';
import { startOperator, type RunningOperator } from '../operator/operator.js';
import { tracingOption } from './operator.js';
import { runStoppable, type SignalSource } from './lifecycle.js';
import { prepareOutDirectory, writePrivateFile } from './out-directory.js';

type DevEnvironment = Pick<LocalEnvironment, 'stateDir' | 'describe' | 'adminKubeConfig' | 'stop'>;
type DevOperator = Pick<RunningOperator, 'url' | 'webhookUrl' | 'caPem' | 'stop'>;

/** What devenv starts, and where its stop signals come from; tests give fakes. */
export interface DevenvParts {
  startEnvironment(keepState: boolean): Promise<DevEnvironment>;
  startOperator(env: DevEnvironment, description: EnvironmentDescription): Promise<DevOperator>;
  signals?: SignalSource;
}

const localParts: DevenvParts = {
  startEnvironment: (keepState) => startLocalEnvironment({ progress: progressLine, keepState }),
  startOperator: (env, description) =>
    startOperator({ kc: env.adminKubeConfig(), log: createLogger({ name: 'operator' }, pino.destination(2)), register: {}, aws: localAws(description), auditFile: description.auditFile, tracing: tracingOption() }),
};

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
  return serveDevenv({ out: path.resolve(values.out), keepState: values['keep-state'], operator: !values['no-operator'] });
}

/**
 * Starts the environment (and the operator), writes `out/env.json`, and serves until a signal.
 * Whatever has started is stopped however this ends: a signal (during start-up too), or a
 * failure at any step.
 */
export async function serveDevenv(options: { out: string; keepState: boolean; operator: boolean }, parts: DevenvParts = localParts): Promise<number> {
  // Before anything starts: env.json names a kubeconfig, so no one else may write where it goes.
  await prepareOutDirectory(options.out);
  // Ended by a signal is how devenv is meant to end, during start-up or after: 0 either way.
  await runStoppable(
    async (scope) => {
      const env = await scope.start(parts.startEnvironment(options.keepState), (started) => started.stop());
      const description: EnvironmentDescription = env.describe();
      if (options.operator) {
        description.auditFile = path.join(env.stateDir, 'audit.jsonl');
        const operator = await scope.start(parts.startOperator(env, description), (started) => started.stop());
        description.brokerUrl = operator.url;
        description.webhookUrl = operator.webhookUrl;
        description.brokerCA = path.join(env.stateDir, 'broker-ca.crt');
        await scope.step(writeFile(description.brokerCA, operator.caPem));
        progressLine(`operator serving: broker at ${operator.url}, webhooks at ${operator.webhookUrl}`);
      }
      const file = path.join(options.out, 'env.json');
      await scope.step(writePrivateFile(file, `${JSON.stringify(description, null, 2)}\n`));
      progressLine(`ready: ${file} (Ctrl-C or SIGTERM stops everything)`);
      return scope.stopRequested;
    },
    {
      signals: parts.signals,
      onSignal: (signal) => progressLine(`stopping (${signal}; a second one quits without waiting)`),
      onStopError: (err) => progressLine(`while stopping: ${errorMessage(err)}`),
    },
  );
  return 0;
}
