import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { motoCommand } from '../../../src/controlplane/moto.js';

const args = ['-H', '127.0.0.1', '-p', '5000'];

async function binDir(files: string[]): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'moto-bin-'));
  for (const file of files) await writeFile(path.join(dir, file), '#!/bin/sh\n', { mode: 0o755 });
  return dir;
}

describe('how moto is started', () => {
  it('runs moto_server from a virtualenv through its Python, with the same arguments after the launcher', async () => {
    const dir = await binDir(['moto_server', 'python']);
    const command = motoCommand(path.join(dir, 'moto_server'), args);
    expect(command.command).toBe(path.join(dir, 'python'));
    expect(command.args[0]).toBe('-c');
    expect(command.args[1]).toContain('from moto.server import main');
    expect(command.args.slice(2)).toEqual(args);
  });

  it('runs a moto_server with no Python beside it (CHAINWARDEN_MOTO_SERVER elsewhere) as it is', async () => {
    const dir = await binDir(['moto_server']);
    expect(motoCommand(path.join(dir, 'moto_server'), args)).toEqual({ command: path.join(dir, 'moto_server'), args });
  });
});
