import { spawn } from 'node:child_process';
import { access, constants } from 'node:fs/promises';
import path from 'node:path';
import { ChainwardenError } from '../errors.js';

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Called with each chunk of combined output, for progress on long builds. */
  onOutput?: (chunk: string) => void;
}

/**
 * Runs a command to completion and returns its stdout. A non-zero exit throws with the tail of
 * the command's output, since that is where build and install tools say what went wrong.
 */
export async function run(command: string, args: readonly string[], options: RunOptions = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const stdout: string[] = [];
    let tail = '';
    const keep = (chunk: Buffer, into?: string[]) => {
      const text = chunk.toString('utf8');
      into?.push(text);
      tail = (tail + text).slice(-4000);
      options.onOutput?.(text);
    };
    child.stdout.on('data', (c: Buffer) => keep(c, stdout));
    child.stderr.on('data', (c: Buffer) => keep(c));
    child.on('error', (err) => reject(new ChainwardenError('command_failed', `${command}: ${err.message}`, { cause: err })));
    child.on('close', (code, signal) => {
      if (code === 0) resolve(stdout.join(''));
      else
        reject(
          new ChainwardenError(
            'command_failed',
            `${path.basename(command)} ${args.join(' ')} exited with ${signal ?? code}:\n${tail.trim()}`,
          ),
        );
    });
  });
}

/** The absolute path of an executable on PATH, or undefined. */
export async function which(name: string, envPath = process.env.PATH ?? ''): Promise<string | undefined> {
  for (const dir of envPath.split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here; keep looking
    }
  }
  return undefined;
}

export async function isExecutable(file: string): Promise<boolean> {
  try {
    await access(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}
