import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, closeSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { ChainwardenError, errorMessage } from '../errors.js';

export interface ProcessSpec {
  /** Short name for messages: `etcd`, `kube-apiserver`, `moto`. */
  name: string;
  command: string;
  args: readonly string[];
  /** stdout and stderr go here; its tail is quoted when the process fails to start. */
  logFile: string;
  env?: NodeJS.ProcessEnv;
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

/**
 * Last resort when our process exits without stopping its children (an uncaught error, a
 * `process.exit` from a test runner): kill every group we started. A SIGKILL of our own
 * process is covered by the parent-death signal set at spawn.
 */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of live) {
      if (child.pid !== undefined) killGroup(child.pid, 'SIGKILL');
    }
  });
}

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // already gone
  }
}

// util-linux's setpriv asks the kernel to kill the child when we die, however we die.
const SETPRIV = '/usr/bin/setpriv';

/**
 * A long-running child process that cannot outlive us: its own process group (a terminal's
 * Ctrl-C reaches us, and we stop it in order), a parent-death signal where the platform has
 * one, and an exit hook for everything in between.
 */
export class ManagedProcess {
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private exitStatus: { code: number | null; signal: NodeJS.Signals | null } | undefined;

  private constructor(
    readonly spec: ProcessSpec,
    private readonly child: ChildProcess,
  ) {
    this.exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        live.delete(child);
        this.exitStatus = { code, signal };
        resolve(this.exitStatus);
      });
    });
  }

  static start(spec: ProcessSpec): ManagedProcess {
    installExitHook();
    const out = openSync(spec.logFile, 'a');
    const usePdeathsig = process.platform === 'linux' && existsSync(SETPRIV);
    const [command, args] = usePdeathsig
      ? [SETPRIV, ['--pdeathsig', 'KILL', '--', spec.command, ...spec.args]]
      : [spec.command, [...spec.args]];
    const child = spawn(command, args, {
      env: spec.env ?? process.env,
      stdio: ['ignore', out, out],
      detached: true,
    });
    closeSync(out);
    live.add(child);
    const managed = new ManagedProcess(spec, child);
    child.on('error', () => {
      // reported through `exited` and the readiness check, which quotes the log
    });
    return managed;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.exitStatus === undefined;
  }

  async logTail(lines = 30): Promise<string> {
    const text = await readFile(this.spec.logFile, 'utf8').catch(() => '');
    return text.trimEnd().split('\n').slice(-lines).join('\n');
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
  async stop(graceMs = 5000): Promise<void> {
    const pid = this.child.pid;
    if (!this.running || pid === undefined) return;
    killGroup(pid, 'SIGTERM');
    // Unreferenced, so a process that exits at once does not hold ours open for the grace period.
    const timedOut = await Promise.race([this.exited.then(() => false), sleep(graceMs, undefined, { ref: false }).then(() => true)]);
    if (timedOut) {
      killGroup(pid, 'SIGKILL');
      await this.exited;
    }
  }

  /**
   * Polls `probe` until it answers true. Fails at once if the process exits, and after
   * `timeoutMs` otherwise, quoting the process's log either way.
   */
  async waitUntilReady(probe: () => Promise<boolean>, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let lastError = '';
    while (Date.now() < deadline) {
      if (!this.running) {
        throw new ChainwardenError(
          'start_failed',
          `${this.spec.name} exited (${this.exitStatus?.signal ?? this.exitStatus?.code}) before it was ready; its log (${this.spec.logFile}) ends:\n${await this.logTail()}`,
        );
      }
      try {
        if (await probe()) return;
      } catch (err) {
        lastError = errorMessage(err);
      }
      await sleep(100);
    }
    throw new ChainwardenError(
      'start_failed',
      `${this.spec.name} was not ready after ${timeoutMs / 1000}s (last probe: ${lastError || 'not ready'}); its log (${this.spec.logFile}) ends:\n${await this.logTail()}`,
    );
  }
}
