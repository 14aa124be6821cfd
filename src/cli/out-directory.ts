import { lstat, mkdir, realpath, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Stats } from 'node:fs';
import { ChainwardenError } from '../errors.js';

/** Who runs us; undefined where the platform has no user ids (Windows), and nothing can be checked. */
const currentUid = (): number | undefined => process.getuid?.();

const refuse = (out: string, why: string, fix: string) =>
  new ChainwardenError(
    'usage',
    `--out ${out} ${why}: whoever can write there can replace env.json, and the kubeconfig it names runs code as you. ${fix}, or give --out a directory only you can write, e.g. --out "$(mktemp -d)"`,
  );

const mode = (stats: Stats) => `0${(stats.mode & 0o777).toString(8)}`;

/**
 * Refuses an `--out` directory anyone but us could change: not ours (or reached through a link
 * that is not), or writable by its group or by everyone.
 */
async function assertOnlyOursToWrite(out: string, uid: number | undefined): Promise<void> {
  const link = await lstat(out);
  const dir = link.isSymbolicLink() ? await stat(out) : link;
  if (!dir.isDirectory()) throw new ChainwardenError('usage', `--out ${out} is not a directory`);
  if (uid === undefined) return;
  // root's links (macOS's /tmp is one) are as trusted as anything root owns.
  if (link.uid !== uid && link.uid !== 0) throw refuse(out, `is a link owned by another user (uid ${link.uid})`, 'Remove the link');
  if (dir.uid !== uid) throw refuse(out, `is owned by another user (uid ${dir.uid})`, 'Remove it');
  if ((dir.mode & 0o022) !== 0) throw refuse(out, `is writable by others (mode ${mode(dir)})`, `Run chmod go-w ${out}`);
}

/** Makes `--out` ready for our files: created for us alone (0700) when absent, refused when anyone else could write it. */
export async function prepareOutDirectory(out: string, uid = currentUid()): Promise<void> {
  try {
    await mkdir(out, { recursive: true, mode: 0o700 });
  } catch (err) {
    // Say what is wrong with what is there (a link to elsewhere, a file), if something is.
    await assertOnlyOursToWrite(out, uid).catch((refusal: unknown) => {
      if ((refusal as NodeJS.ErrnoException).code !== 'ENOENT') throw refusal;
    });
    throw err;
  }
  // Checked whether or not we made it: someone may have made it first.
  await assertOnlyOursToWrite(out, uid);
  await assertAncestorsHold(out, uid);
}

/**
 * Every directory above `--out` must keep it where it is: whoever may write a parent may rename
 * `--out` away and put a directory of their own in its place. A parent is fine when it is ours or
 * root's and only its owner writes it, or when it is sticky (as /tmp is), where no one may rename
 * what is not theirs.
 */
async function assertAncestorsHold(out: string, uid: number | undefined): Promise<void> {
  if (uid === undefined) return;
  let dir = path.dirname(await realpath(out));
  for (;;) {
    const stats = await stat(dir);
    const sticky = (stats.mode & 0o1000) !== 0;
    if (stats.uid !== uid && stats.uid !== 0) throw refuse(out, `lies under ${dir}, which another user owns (uid ${stats.uid}) and could move it out of the way`, 'Choose a directory under your home');
    if ((stats.mode & 0o022) !== 0 && !sticky) throw refuse(out, `lies under ${dir}, which others may write (mode ${mode(stats)}) and so could move it out of the way`, `Run chmod go-w ${dir}`);
    const parent = path.dirname(dir);
    if (parent === dir) return;
    dir = parent;
  }
}

/** A temporary file a run that died left behind is removed; one someone else put there is not ours to remove or follow. */
async function removeStaleTemporary(tmp: string, uid: number | undefined): Promise<void> {
  const stats = await lstat(tmp);
  if (uid !== undefined && stats.uid !== uid) throw new ChainwardenError('usage', `${tmp} belongs to another user (uid ${stats.uid}); remove it, or give --out a directory only you can write`);
  await rm(tmp);
}

/**
 * Writes `file` readable by us alone (0600), whole or not at all: into `file.tmp`, created
 * exclusively (never through a link someone left there), then renamed over `file`.
 */
export async function writePrivateFile(file: string, content: string, uid = currentUid()): Promise<void> {
  const tmp = `${file}.tmp`;
  const create = () => writeFile(tmp, content, { flag: 'wx', mode: 0o600 });
  try {
    await create();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    await removeStaleTemporary(tmp, uid);
    await create();
  }
  try {
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}
