import path from 'node:path';
import { ManagedProcess } from './process.js';
import { freePort } from './ports.js';
import { httpGet, httpRequest } from './http.js';
import { startWithFreshPorts } from './start.js';
import { ChainwardenError } from '../errors.js';

/** The STS/IAM wire endpoint: moto in server mode on loopback. */
export interface StsEmulator {
  endpoint: string;
  process: ManagedProcess;
  /** JSON lines, one per request moto received: what we sent, for what moto cannot check. */
  recording: string;
  /** Forgets every role, policy and session (moto's reset API). */
  reset(): Promise<void>;
}

export async function resetMoto(endpoint: string): Promise<void> {
  const res = await httpRequest('POST', `${endpoint}/moto-api/reset`);
  if (res.status !== 200) throw new ChainwardenError('reset_failed', `moto reset answered ${res.status}: ${res.body.slice(0, 200)}`);
}

export async function startStsEmulator(motoServer: string, dir: string, timeoutMs = 60_000): Promise<StsEmulator> {
  return startWithFreshPorts(3, async () => {
    const port = await freePort();
    const endpoint = `http://127.0.0.1:${port}`;
    const recording = path.join(dir, 'moto-recording.jsonl');
    const proc = ManagedProcess.start({
      name: 'moto',
      command: motoServer,
      args: ['-H', '127.0.0.1', '-p', String(port)],
      logFile: path.join(dir, 'moto.log'),
      // moto signs nothing itself but some code paths ask for a region and credentials.
      env: {
        ...process.env,
        AWS_DEFAULT_REGION: 'us-east-1',
        AWS_ACCESS_KEY_ID: 'testing',
        AWS_SECRET_ACCESS_KEY: 'testing',
        MOTO_ENABLE_RECORDING: 'True',
        MOTO_RECORDER_FILEPATH: recording,
      },
    });
    try {
      await proc.waitUntilReady(async () => (await httpGet(`${endpoint}/moto-api/data.json`)).status === 200, timeoutMs);
    } catch (err) {
      await proc.stop(1000);
      throw err;
    }
    return { endpoint, process: proc, recording, reset: () => resetMoto(endpoint) };
  });
}
