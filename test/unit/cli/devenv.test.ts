import { EventEmitter } from 'node:events';
import { chmod, mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { serveDevenv, type DevenvParts } from '../../../src/cli/devenv.js';

let root: string;
let out: string;
let stateDir: string;

beforeEach(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'devenv-'));
  out = path.join(root, 'out');
  stateDir = path.join(root, 'state');
  await mkdir(stateDir);
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Start-up that finishes when the test says so, or at once. */
function gate() {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { opened, open };
}

/** An environment and an operator that only record what happens to them. */
function fakeParts(envStarting = Promise.resolve()) {
  const events: string[] = [];
  const signals = new EventEmitter();
  const parts: DevenvParts = {
    signals,
    startEnvironment: async () => {
      await envStarting;
      events.push('environment started');
      return {
        stateDir,
        describe: () => ({ apiServer: 'https://127.0.0.1:6443', kubeconfig: path.join(stateDir, 'admin.kubeconfig'), caFile: '', caKeyFile: '', stsEndpoint: '', stsRecording: '', stateDir }),
        adminKubeConfig: () => new KubeConfig(),
        stop: () => Promise.resolve(void events.push('environment stopped')),
      };
    },
    startOperator: () => {
      events.push('operator started');
      return Promise.resolve({ url: 'https://127.0.0.1:8443', webhookUrl: 'https://127.0.0.1:9443', caPem: 'CA PEM', stop: () => Promise.resolve(void events.push('operator stopped')) });
    },
  };
  return { events, signals, parts };
}

const options = () => ({ out, keepState: false, operator: true });
const envFile = () => path.join(out, 'env.json');
const exists = (p: string) => stat(p).then(() => true, () => false);

describe('devenv', () => {
  it('writes env.json for us alone once ready, and one SIGINT stops the operator and the environment', async () => {
    const { events, signals, parts } = fakeParts();
    const serving = serveDevenv(options(), parts);
    await expect.poll(() => exists(envFile())).toBe(true);
    expect((await stat(envFile())).mode & 0o777).toBe(0o600);
    expect(JSON.parse(await readFile(envFile(), 'utf8'))).toMatchObject({ brokerUrl: 'https://127.0.0.1:8443', brokerCA: path.join(stateDir, 'broker-ca.crt'), auditFile: path.join(stateDir, 'audit.jsonl') });
    signals.emit('SIGINT');
    await expect(serving).resolves.toBe(0);
    expect(events).toEqual(['environment started', 'operator started', 'operator stopped', 'environment stopped']);
    expect(signals.listenerCount('SIGINT') + signals.listenerCount('SIGTERM')).toBe(0);
  });

  it('stops the operator and the environment when writing broker-ca.crt fails, and ends with the error', async () => {
    const { events, parts } = fakeParts();
    await rm(stateDir, { recursive: true });
    await expect(serveDevenv(options(), parts)).rejects.toThrow(/ENOENT.*broker-ca\.crt/);
    expect(events).toEqual(['environment started', 'operator started', 'operator stopped', 'environment stopped']);
  });

  it('stops the operator and the environment when writing env.json fails', async () => {
    const { events, parts } = fakeParts();
    await mkdir(envFile(), { recursive: true });
    await expect(serveDevenv(options(), parts)).rejects.toThrow(/env\.json/);
    expect(events).toEqual(['environment started', 'operator started', 'operator stopped', 'environment stopped']);
  });

  it('a SIGTERM during start-up stops the environment once it is up, starts no operator, and writes no env.json', async () => {
    const starting = gate();
    const { events, signals, parts } = fakeParts(starting.opened);
    const serving = serveDevenv(options(), parts);
    await expect.poll(() => signals.listenerCount('SIGTERM')).toBe(1);
    signals.emit('SIGTERM');
    starting.open();
    await expect(serving).resolves.toBe(0);
    expect(events).toEqual(['environment started', 'environment stopped']);
    expect(await exists(envFile())).toBe(false);
  });

  it('refuses an --out others can write before starting anything', async () => {
    const { events, parts } = fakeParts();
    await mkdir(out);
    await chmod(out, 0o777);
    await expect(serveDevenv(options(), parts)).rejects.toThrow(/^--out .* is writable by others/);
    expect(events).toEqual([]);
  });
});
