import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { cacheRoot, withLock } from '../../../src/controlplane/cache.js';

describe('cacheRoot', () => {
  it('prefers CHAINWARDEN_CACHE_DIR, then XDG_CACHE_HOME, then ~/.cache', () => {
    expect(cacheRoot({ CHAINWARDEN_CACHE_DIR: '/srv/cw', XDG_CACHE_HOME: '/x' })).toBe('/srv/cw');
    expect(cacheRoot({ XDG_CACHE_HOME: '/x' })).toBe('/x/chainwarden');
    expect(cacheRoot({})).toBe(path.join(os.homedir(), '.cache', 'chainwarden'));
  });
});

describe('withLock', () => {
  it('runs holders one after the other', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'lock-'));
    const lock = path.join(dir, '.lock');
    const events: string[] = [];
    const holder = (name: string) =>
      withLock(lock, () => events.push(`${name} waits`), async () => {
        events.push(`${name} in`);
        await sleep(50);
        events.push(`${name} out`);
      });
    await Promise.all([holder('a'), holder('b')]);
    const ins = events.filter((e) => !e.endsWith('waits'));
    // Whichever got the lock first leaves before the other enters.
    const first = ins[0]?.[0] ?? '';
    const second = first === 'a' ? 'b' : 'a';
    expect(ins).toEqual([`${first} in`, `${first} out`, `${second} in`, `${second} out`]);
    expect(events).toContain(`${second} waits`);
  });

  it('takes over a lock left by a process that died', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'lock-'));
    const lock = path.join(dir, '.lock');
    const dead = spawnSync(process.execPath, ['-e', 'process.exit(0)']).pid;
    await writeFile(lock, String(dead));
    let waited = false;
    const result = await withLock(lock, () => (waited = true), async () => readFile(lock, 'utf8'));
    expect(result).toBe(String(process.pid));
    expect(waited).toBe(false);
  });
});
