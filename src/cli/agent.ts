import { readFile } from 'node:fs/promises';
import { pino } from 'pino';
import { startAgentProxy } from '../agent/proxy.js';
import { ChainwardenError } from '../errors.js';
import { createLogger } from '../log.js';
import { parseCommandArgs, parseHostPort, untilSignal } from './common.js';

/** `chainwarden agent`: the in-pod sidecar (also runs outside a pod, as tests and devenv do). */
export async function runAgent(args: string[]): Promise<number> {
  const { values } = parseCommandArgs('agent', args, {
    broker: { type: 'string', default: process.env.CHAINWARDEN_BROKER_URL },
    ca: { type: 'string' },
    'token-file': { type: 'string' },
    'local-token-file': { type: 'string' },
    listen: { type: 'string', default: '127.0.0.1:15080' },
    'aws-listen': { type: 'string' },
  });
  if (!values.broker) throw new ChainwardenError('usage', 'agent needs --broker URL: the chainwarden broker (https)');
  if (!values['token-file']) throw new ChainwardenError('usage', "agent needs --token-file FILE: the pod's projected service-account token (audience chainwarden)");
  const caPem = values.ca ? await readFile(values.ca, 'utf8') : process.env.CHAINWARDEN_BROKER_CA;
  const log = createLogger({ name: 'agent' }, pino.destination(2));
  const awsListen = values['aws-listen'] === undefined ? undefined : parseHostPort(values['aws-listen'], '--aws-listen');
  const proxy = await startAgentProxy({ brokerUrl: values.broker, caPem, tokenFile: values['token-file'], localTokenFile: values['local-token-file'], listen: parseHostPort(values.listen ?? '', '--listen'), awsListen, log });
  log.info({ url: proxy.url, awsUrl: proxy.awsUrl, broker: values.broker }, 'chainwarden agent listening');
  // One line per listener, the AWS listener's second, written at once so a reader sees both.
  process.stdout.write(`${proxy.url}\n${proxy.awsUrl ? `${proxy.awsUrl}\n` : ''}`);
  await untilSignal();
  await proxy.close();
  return 0;
}
