import { chmod, lstat, mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { prepareOutDirectory, writePrivateFile } from '../../../src/cli/out-directory.js';

let root: string;
const me = process.getuid?.() ?? 0;
/** Another user, as far as the checks can tell: the files are ours, the uid we claim is not. */
const someoneElse = me + 1;
const modeOf = async (p: string) => (await stat(p)).mode & 0o777;

beforeEach(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'out-directory-'));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('prepareOutDirectory', () => {
  it('creates an absent directory, and any parents, for us alone', async () => {
    const out = path.join(root, 'a', 'cw');
    await prepareOutDirectory(out);
    expect(await modeOf(out)).toBe(0o700);
    expect(await modeOf(path.join(root, 'a'))).toBe(0o700);
  });

  it('takes an existing directory of ours that only we can write, as it is', async () => {
    const out = path.join(root, 'cw');
    await mkdir(out, { mode: 0o755 });
    await prepareOutDirectory(out);
    expect(await modeOf(out)).toBe(0o755);
  });

  it.each([0o777, 0o770, 0o1777])('refuses a directory others can write (mode %o), naming --out and the fix', async (mode) => {
    const out = path.join(root, 'cw');
    await mkdir(out);
    await chmod(out, mode);
    await expect(prepareOutDirectory(out)).rejects.toThrow(`--out ${out} is writable by others (mode 0${(mode & 0o777).toString(8)}): whoever can write there can replace env.json, and the kubeconfig it names runs code as you. Run chmod go-w ${out}, or give --out a directory only you can write, e.g. --out "$(mktemp -d)"`);
  });

  it('refuses a directory someone else owns, even one only they can write', async () => {
    const out = path.join(root, 'cw');
    await mkdir(out, { mode: 0o700 });
    await expect(prepareOutDirectory(out, someoneElse)).rejects.toThrow(/^--out .*\/cw is (a link )?owned by another user \(uid \d+\): .* give --out a directory only you can write/);
  });

  it('follows a link of ours to a directory of ours, and refuses one to a directory others can write', async () => {
    const mine = path.join(root, 'mine');
    const shared = path.join(root, 'shared');
    await mkdir(mine, { mode: 0o700 });
    await mkdir(shared);
    await chmod(shared, 0o777);
    await symlink(mine, path.join(root, 'to-mine'));
    await symlink(shared, path.join(root, 'to-shared'));
    await prepareOutDirectory(path.join(root, 'to-mine'));
    await expect(prepareOutDirectory(path.join(root, 'to-shared'))).rejects.toThrow(/is writable by others \(mode 0777\)/);
  });

  it('refuses a directory under one others may write, who could move it away and put theirs there; a sticky one like /tmp is fine', async () => {
    const shared = path.join(root, 'shared');
    await mkdir(shared);
    await chmod(shared, 0o777);
    const out = path.join(shared, 'cw');
    await expect(prepareOutDirectory(out)).rejects.toThrow(`--out ${out} lies under ${shared}, which others may write (mode 0777)`);
    await chmod(shared, 0o1777);
    await expect(prepareOutDirectory(out)).resolves.toBeUndefined();
    // A parent another user owns could be moved too.
    await chmod(shared, 0o755);
    await expect(prepareOutDirectory(out, someoneElse)).rejects.toThrow(/is owned by another user|lies under .* which another user owns/);
  });

  it('refuses a file, and a dangling link, saying what is there', async () => {
    await writeFile(path.join(root, 'file'), '');
    await symlink(path.join(root, 'nowhere'), path.join(root, 'dangling'));
    await expect(prepareOutDirectory(path.join(root, 'file'))).rejects.toThrow(/is not a directory/);
    await expect(prepareOutDirectory(path.join(root, 'dangling'))).rejects.toThrow();
  });
});

describe('writePrivateFile', () => {
  it('writes the file for us alone, replacing what was there, and leaves no temporary file', async () => {
    const file = path.join(root, 'env.json');
    await writeFile(file, 'old', { mode: 0o644 });
    await writePrivateFile(file, '{"ok":true}\n');
    expect(await readFile(file, 'utf8')).toBe('{"ok":true}\n');
    expect(await modeOf(file)).toBe(0o600);
    await expect(lstat(`${file}.tmp`)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('never writes through a link left as the temporary file: ours is removed, and the file it pointed at is untouched', async () => {
    const file = path.join(root, 'env.json');
    const victim = path.join(root, 'victim');
    await writeFile(victim, 'precious');
    await symlink(victim, `${file}.tmp`);
    await writePrivateFile(file, 'new');
    expect(await readFile(victim, 'utf8')).toBe('precious');
    expect(await readFile(file, 'utf8')).toBe('new');
    expect((await lstat(file)).isSymbolicLink()).toBe(false);
  });

  it('refuses a temporary file someone else left, and neither removes nor follows it', async () => {
    const file = path.join(root, 'env.json');
    const victim = path.join(root, 'victim');
    await writeFile(victim, 'precious');
    await symlink(victim, `${file}.tmp`);
    await expect(writePrivateFile(file, 'new', someoneElse)).rejects.toThrow(/env\.json\.tmp belongs to another user/);
    expect(await readFile(victim, 'utf8')).toBe('precious');
    expect((await lstat(`${file}.tmp`)).isSymbolicLink()).toBe(true);
    await expect(lstat(file)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
