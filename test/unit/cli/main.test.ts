import { afterEach, describe, expect, it, vi } from 'vitest';
import { main } from '../../../src/cli/main.js';

function captureStderr() {
  const chunks: string[] = [];
  vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
    chunks.push(String(chunk));
    return true;
  });
  return () => chunks.join('');
}

afterEach(() => vi.restoreAllMocks());

describe('chainwarden CLI', () => {
  it('names an unknown command and shows the usage', async () => {
    const stderr = captureStderr();
    expect(await main(['launch'])).toBe(2);
    expect(stderr()).toMatch(/unknown command "launch"/);
    expect(stderr()).toMatch(/devenv --out DIR/);
  });

  it('says devenv needs --out', async () => {
    const stderr = captureStderr();
    expect(await main(['devenv'])).toBe(1);
    expect(stderr()).toMatch(/devenv needs --out DIR/);
  });

  it('names an unknown option', async () => {
    const stderr = captureStderr();
    expect(await main(['devenv', '--outt', 'x'])).toBe(1);
    expect(stderr()).toMatch(/--outt/);
  });
});
