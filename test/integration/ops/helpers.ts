import { spawn } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { KubeConfig } from '@kubernetes/client-node';
import { exampleTask } from '../../builders/examples.js';

export const bin = path.resolve(import.meta.dirname, '../../../bin/chainwarden.js');
export const TASK = exampleTask('x').metadata.name ?? '';

export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The CLI as a user runs it: a real process, with KUBECONFIG naming the user's kubeconfig. */
export function run(args: string[], opts: { kubeconfig?: string; stdin?: string; as?: string } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const env = { ...process.env, ...(opts.kubeconfig ? { KUBECONFIG: opts.kubeconfig } : {}) };
    // As a kubectl plugin, kubectl executes kubectl-chainwarden itself.
    const child = opts.as ? spawn(opts.as, args, { env }) : spawn(process.execPath, [bin, ...args], { env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(opts.stdin ?? '');
  });
}

export async function kubeconfigFile(kc: KubeConfig): Promise<string> {
  const file = path.join(await mkdtemp(path.join(os.tmpdir(), 'cw-ops-')), 'kubeconfig');
  await writeFile(file, kc.exportConfig(), { mode: 0o600 });
  return file;
}

