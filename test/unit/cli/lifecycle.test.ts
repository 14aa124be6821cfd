import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { runStoppable, signalExitCode } from '../../../src/cli/lifecycle.js';

/** A start-up that finishes when the test says so. */
function deferred<T>() {
  let resolve!: (value: T) => void;
  let reject!: (err: Error) => void;
  const promise = new Promise<T>((res, rej) => ((resolve = res), (reject = rej)));
  return { promise, resolve, reject };
}

const listening = (signals: EventEmitter) => signals.listenerCount('SIGINT') + signals.listenerCount('SIGTERM');

describe('runStoppable', () => {
  it('stops everything started, newest first, when a later step fails, and throws that failure', async () => {
    const stopped: string[] = [];
    const signals = new EventEmitter();
    const run = runStoppable(async (scope) => {
      await scope.start(Promise.resolve('env'), (s) => void stopped.push(s));
      scope.onStop(() => void stopped.push('tickets server'));
      await scope.start(Promise.resolve('operator'), (s) => void stopped.push(s));
      throw new Error('EACCES: permission denied, open \'/env.json.tmp\'');
    }, { signals });
    await expect(run).rejects.toThrow(/EACCES/);
    expect(stopped).toEqual(['operator', 'tickets server', 'env']);
    expect(listening(signals)).toBe(0);
  });

  it('runs every stop even when one fails, and reports the others beside the work\'s own failure', async () => {
    const stopped: string[] = [];
    const reported: unknown[] = [];
    const run = runStoppable((scope) => {
      scope.onStop(() => void stopped.push('env'));
      scope.onStop(() => Promise.reject(new Error('operator would not stop')));
      return Promise.reject(new Error('bind timeout'));
    }, { signals: new EventEmitter(), onStopError: (err) => reported.push(err) });
    await expect(run).rejects.toThrow('bind timeout');
    expect(stopped).toEqual(['env']);
    expect(reported).toEqual([new Error('operator would not stop')]);
  });

  it('listens before start-up: a signal while something starts stops it once started, and nothing after it starts', async () => {
    const signals = new EventEmitter();
    const env = deferred<string>();
    const stopped: string[] = [];
    const said: string[] = [];
    let operatorStarted = false;
    const run = runStoppable(async (scope) => {
      await scope.start(env.promise, (s) => void stopped.push(s));
      operatorStarted = true;
      return 'ready';
    }, { signals, onSignal: (s) => said.push(s) });
    signals.emit('SIGINT');
    expect(said).toEqual(['SIGINT']);
    env.resolve('env');
    await expect(run).resolves.toEqual({ signal: 'SIGINT' });
    expect(stopped).toEqual(['env']);
    expect(operatorStarted).toBe(false);
  });

  it('one signal ends work waiting for it, and stops everything', async () => {
    const signals = new EventEmitter();
    const stopped: string[] = [];
    const ready = deferred<void>();
    const run = runStoppable(async (scope) => {
      scope.onStop(() => void stopped.push('env'));
      ready.resolve();
      return scope.stopRequested;
    }, { signals });
    await ready.promise;
    signals.emit('SIGTERM');
    await expect(run).resolves.toEqual({ value: 'SIGTERM' });
    expect(stopped).toEqual(['env']);
  });

  it('a signal leaves a step at once and stops what it uses; what the step starts later is stopped at once', async () => {
    const signals = new EventEmitter();
    const story = deferred<void>();
    const sidecar = deferred<string>();
    const stopped: string[] = [];
    const run = runStoppable(async (scope) => {
      scope.onStop(() => void stopped.push('servers'));
      const storyRuns = (async () => {
        await story.promise;
        await scope.start(sidecar.promise, (s) => void stopped.push(s));
      })();
      await scope.step(storyRuns);
    }, { signals });
    signals.emit('SIGINT');
    await expect(run).resolves.toEqual({ signal: 'SIGINT' });
    expect(stopped).toEqual(['servers']);
    story.resolve();
    sidecar.resolve('sidecar');
    await expect.poll(() => stopped).toEqual(['servers', 'sidecar']);
  });

  it('catches only the first signal: a second one takes its default course (the process ends)', async () => {
    const signals = new EventEmitter();
    const stopping = deferred<void>();
    const run = runStoppable(async (scope) => {
      scope.onStop(() => stopping.promise);
      return scope.stopRequested;
    }, { signals });
    expect(listening(signals)).toBe(2);
    signals.emit('SIGINT');
    expect(listening(signals)).toBe(0);
    stopping.resolve();
    await run;
  });

  it('stops nothing twice and listens no longer once the work is done', async () => {
    const signals = new EventEmitter();
    let stops = 0;
    await expect(runStoppable((scope) => {
      scope.onStop(() => void stops++);
      return Promise.resolve(42);
    }, { signals })).resolves.toEqual({ value: 42 });
    signals.emit('SIGINT');
    expect(stops).toBe(1);
    expect(listening(signals)).toBe(0);
  });
});

describe('signalExitCode', () => {
  it('is what a shell reports for a process the signal ended', () => {
    expect(signalExitCode('SIGINT')).toBe(130);
    expect(signalExitCode('SIGTERM')).toBe(143);
  });
});
