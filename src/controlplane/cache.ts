import { mkdir, open, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Where built and installed components live: `$CHAINWARDEN_CACHE_DIR`, else
 * `$XDG_CACHE_HOME/chainwarden`, else `~/.cache/chainwarden`. Each component sits under its own
 * name and version, so a version bump builds beside the old one and never over it.
 */
export function cacheRoot(env: NodeJS.ProcessEnv = process.env): string {
  if (env.CHAINWARDEN_CACHE_DIR) return path.resolve(env.CHAINWARDEN_CACHE_DIR);
  const xdg = env.XDG_CACHE_HOME ? path.resolve(env.XDG_CACHE_HOME) : path.join(os.homedir(), '.cache');
  return path.join(xdg, 'chainwarden');
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Runs `work` holding an exclusive lock file, so two test runs (or a test run and the demo)
 * that start at once build a component once instead of twice into the same directory. A lock
 * left by a process that died is taken over.
 */
export async function withLock<T>(lockFile: string, onWait: () => void, work: () => Promise<T>): Promise<T> {
  await mkdir(path.dirname(lockFile), { recursive: true });
  let warned = false;
  for (;;) {
    try {
      const handle = await open(lockFile, 'wx');
      await handle.writeFile(String(process.pid));
      await handle.close();
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = Number.parseInt(await readFile(lockFile, 'utf8').catch(() => ''), 10);
      if (!Number.isFinite(holder) || !isAlive(holder)) {
        await rm(lockFile, { force: true });
        continue;
      }
      if (!warned) onWait();
      warned = true;
      await sleep(1000);
    }
  }
  try {
    return await work();
  } finally {
    await rm(lockFile, { force: true });
  }
}
