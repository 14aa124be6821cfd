import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
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

  it('refuses a flag demo and provision do not take before anything starts, rather than ignoring it', async () => {
    const stderr = captureStderr();
    expect(await main(['demo', '--keep-state'])).toBe(1);
    expect(stderr()).toMatch(/chainwarden demo: demo takes no arguments \(got "--keep-state"\)\n\nusage: chainwarden demo/);
    expect(await main(['provision', 'now'])).toBe(1);
    expect(stderr()).toMatch(/chainwarden provision: provision takes no arguments \(got "now"\)/);
  });

  it('says what is wrong with a task name or a kubeconfig, and what to pass instead', async () => {
    const stderr = captureStderr();
    expect(await main(['approve', 'ticket-4711', 'h1_x', '--reason', 'ok'])).toBe(1);
    expect(stderr()).toMatch(/"ticket-4711" is not NAMESPACE\/TASK: name the task with its namespace, e\.g\. support\/ticket-4711/);
    expect(await main(['trace', 'ticket-4711'])).toBe(1);
    expect(stderr()).toMatch(/trace: "ticket-4711" is not NAMESPACE\/TASK/);
    expect(await main(['approve', 'support/ticket-4711', '--reason', 'ok'])).toBe(1);
    expect(stderr()).toMatch(/the hop id is missing: .*; chainwarden hops -n NAMESPACE TASK --pending lists them/);
    const saved = { KUBECONFIG: process.env.KUBECONFIG, HOME: process.env.HOME };
    try {
      process.env.KUBECONFIG = '/nonexistent/kubeconfig';
      expect(await main(['hops', '-n', 'support'])).toBe(1);
      expect(stderr()).toMatch(/cannot read the kubeconfig \/nonexistent\/kubeconfig \(\$KUBECONFIG\): .*ENOENT.*pass --kubeconfig FILE/);
      delete process.env.KUBECONFIG;
      process.env.HOME = await mkdtemp(path.join(os.tmpdir(), 'no-kube-'));
      expect(await main(['hops', '-n', 'support'])).toBe(1);
      expect(stderr()).toMatch(/no kubeconfig found: .*pass --kubeconfig FILE or set KUBECONFIG/);
    } finally {
      for (const [k, v] of Object.entries(saved)) if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
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

  it('operator --tls-reload-interval takes a duration of at least a second, before anything starts', async () => {
    for (const [value, message] of [['0s', /--tls-reload-interval must be at least 1s/], ['soon', /--tls-reload-interval: "soon" is not a duration/]] as const) {
      const stderr = captureStderr();
      expect(await main(['operator', '--kubeconfig', '/nonexistent', '--tls-reload-interval', value]), value).toBe(1);
      expect(stderr()).toMatch(message);
      vi.restoreAllMocks();
    }
  });

  it('agent --aws-listen serves loopback only, like --listen', async () => {
    const stderr = captureStderr();
    expect(await main(['agent', '--broker', 'https://127.0.0.1:1', '--token-file', '/dev/null', '--listen', '127.0.0.1:0', '--aws-listen', '0.0.0.0:0'])).toBe(1);
    expect(stderr()).toMatch(/loopback only .*not 0\.0\.0\.0 \(--aws-listen\)/);
  });
});
