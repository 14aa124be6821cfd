import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { playDemo, type DemoParts } from '../../../src/cli/demo.js';

interface Fake {
  stop(): Promise<void>;
}

/** An environment, an operator and a story that only record what happens to them. */
function fakeParts(tell: DemoParts<Fake, Fake>['tell']) {
  const events: string[] = [];
  const signals = new EventEmitter();
  const fake = (name: string): Fake => {
    events.push(`${name} started`);
    return { stop: () => Promise.resolve(void events.push(`${name} stopped`)) };
  };
  const parts: DemoParts<Fake, Fake> = {
    signals,
    startEnvironment: () => Promise.resolve(fake('environment')),
    startOperator: () => Promise.resolve(fake('operator')),
    tell,
  };
  return { events, signals, parts, fake };
}

const never = new Promise<never>(() => {});

describe('demo', () => {
  it('a set-up step that fails (an MCP server that cannot bind) closes what set-up had started, and the operator and environment', async () => {
    const { events, parts, fake } = fakeParts(async (_env, _operator, scope) => {
      await scope.start(Promise.resolve(fake('tickets server')), (server) => server.stop());
      await scope.start(Promise.reject(new Error('email server: listen timed out')), () => undefined);
    });
    await expect(playDemo(parts)).rejects.toThrow('email server: listen timed out');
    expect(events).toEqual(['environment started', 'operator started', 'tickets server started', 'tickets server stopped', 'operator stopped', 'environment stopped']);
  });

  it.each([
    ['SIGINT', 130],
    ['SIGTERM', 143],
  ] as const)('%s in the middle of the story stops its servers and sidecar, the operator and the environment, and ends with %i', async (signal, status) => {
    const { events, signals, parts, fake } = fakeParts(async (_env, _operator, scope) => {
      await scope.start(Promise.resolve(fake('tickets server')), (server) => server.stop());
      await scope.start(Promise.resolve(fake('sidecar')), (sidecar) => sidecar.stop());
      events.push('waiting for the approval');
      await never;
    });
    const playing = playDemo(parts);
    await expect.poll(() => events.at(-1)).toBe('waiting for the approval');
    signals.emit(signal);
    await expect(playing).resolves.toBe(status);
    expect(events.slice(-4)).toEqual(['sidecar stopped', 'tickets server stopped', 'operator stopped', 'environment stopped']);
    expect(signals.listenerCount('SIGINT') + signals.listenerCount('SIGTERM')).toBe(0);
  });
});
