import { mkdtemp, readdir, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ensureLocalToken, sameSecret } from '../../../src/agent/proxy.js';

const freshFile = async () => path.join(await mkdtemp(path.join(os.tmpdir(), 'local-token-')), 'token');

describe('ensureLocalToken', () => {
  it('creates one secret, readable by every container and writable by none, even when raced', async () => {
    const file = await freshFile();
    const tokens = await Promise.all(Array.from({ length: 8 }, () => ensureLocalToken(file)));
    expect(new Set(tokens).size).toBe(1);
    expect(tokens[0]).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect((await stat(file)).mode & 0o777).toBe(0o444);
    // No temp files left beside it.
    expect(await readdir(path.dirname(file))).toEqual(['token']);
  });

  it('keeps the secret a previous sidecar wrote, and refuses an empty one', async () => {
    const file = await freshFile();
    await writeFile(file, 'kept-secret-from-before-restart\n');
    expect(await ensureLocalToken(file)).toBe('kept-secret-from-before-restart');
    const empty = await freshFile();
    await writeFile(empty, '');
    await expect(ensureLocalToken(empty)).rejects.toMatchObject({ code: 'local_token_invalid' });
  });
});

describe('sameSecret', () => {
  it('compares content, whatever the lengths', () => {
    expect(sameSecret('abc', 'abc')).toBe(true);
    expect(sameSecret('abc', 'abd')).toBe(false);
    expect(sameSecret('abc', 'abcd')).toBe(false);
    expect(sameSecret('', 'abc')).toBe(false);
  });
});
