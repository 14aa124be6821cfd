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

  it('agent --aws-listen serves loopback only, like --listen', async () => {
    const stderr = captureStderr();
    expect(await main(['agent', '--broker', 'https://127.0.0.1:1', '--token-file', '/dev/null', '--listen', '127.0.0.1:0', '--aws-listen', '0.0.0.0:0'])).toBe(1);
    expect(stderr()).toMatch(/loopback only .*not 0\.0\.0\.0 \(--aws-listen\)/);
  });
});
