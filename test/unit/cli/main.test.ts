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

  it('--help after a command prints that command\'s usage and runs nothing: not the demo\'s control plane, not a provision', async () => {
    const out: string[] = [];
    vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      out.push(String(chunk));
      return true;
    });
    for (const [command, line] of [
      ['demo', /^usage: chainwarden demo +the whole story/],
      ['provision', /^usage: chainwarden provision/],
      ['hops', /^usage: chainwarden hops \[-n NS\][^\n]*\n +the hops of a task/],
      ['approve', /^usage: chainwarden approve NS\/TASK HOP --reason TEXT[^\n]*\n +chainwarden reject[^\n]*\n +decide a waiting hop/],
      ['operator', /--otlp-traces-endpoint URL[\s\S]*--revocation-prune-interval D/],
    ] as const) {
      out.length = 0;
      expect(await main([command, '--help'])).toBe(0);
      expect(out.join('')).toMatch(line);
      expect(out.join('')).not.toMatch(/^ {2}devenv/m);
    }
    expect(await main(['trace', '-h'])).toBe(0);
    expect(out.join('')).toMatch(/--operator-namespace NS/);
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
