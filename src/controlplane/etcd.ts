import path from 'node:path';
import { ManagedProcess } from './process.js';
import { freePort } from './ports.js';
import { httpGet } from './http.js';
import { startWithFreshPorts } from './start.js';

export interface Etcd {
  url: string;
  process: ManagedProcess;
}

/** A single-member etcd on loopback, its data in `dir`; fsync is off because the data is throwaway. */
export async function startEtcd(binary: string, dir: string, timeoutMs = 30_000): Promise<Etcd> {
  return startWithFreshPorts(3, async () => {
    const [clientPort, peerPort] = [await freePort(), await freePort()];
    const url = `http://127.0.0.1:${clientPort}`;
    const peer = `http://127.0.0.1:${peerPort}`;
    const proc = ManagedProcess.start({
      name: 'etcd',
      command: binary,
      args: [
        '--name=default',
        `--data-dir=${path.join(dir, 'data')}`,
        `--listen-client-urls=${url}`,
        `--advertise-client-urls=${url}`,
        `--listen-peer-urls=${peer}`,
        `--initial-advertise-peer-urls=${peer}`,
        `--initial-cluster=default=${peer}`,
        '--unsafe-no-fsync',
        '--log-level=warn',
      ],
      logFile: path.join(dir, 'etcd.log'),
    });
    try {
      await proc.waitUntilReady(async () => {
        const res = await httpGet(`${url}/health`);
        return res.status === 200 && res.body.includes('"true"');
      }, timeoutMs);
    } catch (err) {
      await proc.stop(1000);
      throw err;
    }
    return { url, process: proc };
  });
}
