import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { motoCommand } from '../../../src/controlplane/moto.js';

const args = ['-H', '127.0.0.1', '-p', '5000'];

async function binDir(files: string[], scripts: Record<string, string> = {}): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'moto-bin-'));
  for (const file of files) await writeFile(path.join(dir, file), `#!/bin/sh\n${scripts[file] ?? ''}\n`, { mode: 0o755 });
  return dir;
}

describe('how moto is started', () => {
  it('runs moto_server from a virtualenv through its Python, with the same arguments after the launcher', async () => {
    const dir = await binDir(['moto_server', 'python']);
    const command = motoCommand(path.join(dir, 'moto_server'), args);
    expect(command.command).toBe(path.join(dir, 'python'));
    expect(command.args[0]).toBe('-c');
    expect(command.args[1]).toContain('from moto.server import main');
    expect(command.args.slice(2)).toEqual([path.join(dir, 'moto_server'), ...args]);
  });

  it('finds the virtualenv of a moto_server reached through a link (as pipx installs it), not a Python beside the link', async () => {
    const venv = await binDir(['moto_server', 'python']);
    const links = await binDir(['python']);
    await symlink(path.join(venv, 'moto_server'), path.join(links, 'moto_server'));
    expect(motoCommand(path.join(links, 'moto_server'), args).command).toBe(path.join(venv, 'python'));
  });

  it('runs a moto_server with no Python beside it (CHAINWARDEN_MOTO_SERVER elsewhere) as it is', async () => {
    const dir = await binDir(['moto_server']);
    expect(motoCommand(path.join(dir, 'moto_server'), args)).toEqual({ command: path.join(dir, 'moto_server'), args });
  });

  it('runs the moto_server itself, with its arguments, when the Python beside it cannot import moto', async () => {
    // python3 -S has no site-packages, so no moto, whatever this machine has installed.
    const dir = await binDir(['moto_server', 'python'], { moto_server: 'echo "moto_server $*"', python: 'exec python3 -S "$@"' });
    const command = motoCommand(path.join(dir, 'moto_server'), args);
    expect(command.command).toBe(path.join(dir, 'python'));
    expect(execFileSync(command.command, command.args, { encoding: 'utf8' }).trim()).toBe(`moto_server ${args.join(' ')}`);
  });

  it('has moto list its service packages once, however many requests it routes', async () => {
    // A stand-in moto package whose server routes three requests and reports how often the list was read.
    const site = await mkdtemp(path.join(os.tmpdir(), 'moto-site-'));
    await mkdir(path.join(site, 'moto'));
    await writeFile(path.join(site, 'moto', '__init__.py'), '');
    await writeFile(path.join(site, 'moto', 'backends.py'), ['reads = 0', 'def list_of_moto_modules():', '    global reads', '    reads += 1', "    yield 'sts'"].join('\n'));
    await writeFile(
      path.join(site, 'moto', 'server.py'),
      ['import sys', 'import moto.backends as backends', 'def main():', "    routed = ['sts' in backends.list_of_moto_modules() for _ in range(3)]", "    print(backends.reads, all(routed), ' '.join(sys.argv[1:]))", '    return 0'].join('\n'),
    );
    const dir = await binDir(['moto_server', 'python'], { python: `PYTHONPATH=${site} exec python3 -S "$@"` });
    const command = motoCommand(path.join(dir, 'moto_server'), args);
    expect(execFileSync(command.command, command.args, { encoding: 'utf8' }).trim()).toBe(`1 True ${args.join(' ')}`);
  });
});
