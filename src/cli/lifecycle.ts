import os from 'node:os';

export type StopSignal = 'SIGINT' | 'SIGTERM';
const STOP_SIGNALS: readonly StopSignal[] = ['SIGINT', 'SIGTERM'];

/** Where stop signals come from: the process, or a test's emitter. */
export interface SignalSource {
  on(event: StopSignal, listener: () => void): unknown;
  off(event: StopSignal, listener: () => void): unknown;
}

/** How a command that may be stopped ended: its work done, or a stop signal. */
export type Ended<T> = { value: T; signal?: undefined } | { signal: StopSignal };

/** What a command's work sees: where to register what it starts, and whether it has been asked to stop. */
export interface StopScope {
  /** Resolves with the first SIGINT or SIGTERM. */
  readonly stopRequested: Promise<StopSignal>;
  /** `stop` runs when the command ends, before everything registered earlier; at once if it has ended already. */
  onStop(stop: () => unknown): void;
  /**
   * Awaits something starting and registers its stop. Start-up cannot be cut short, so a signal
   * that comes meanwhile takes effect once it is done: what it started is then stopped with the rest.
   */
  start<T>(starting: Promise<T>, stop: (started: T) => unknown): Promise<T>;
  /** Awaits `work`, or leaves it the moment a signal comes; what it uses is stopped under it, and how it fails after that is not reported. */
  step<T>(work: Promise<T>): Promise<T>;
}

/** Thrown out of the work when a stop signal ends it; never seen outside `runStoppable`. */
class Interrupted extends Error {
  constructor(readonly signal: StopSignal) {
    super(`stopped by ${signal}`);
  }
}

export interface StoppableOptions {
  signals?: SignalSource;
  /** Told of the signal as it arrives, e.g. to say that everything is stopping. */
  onSignal?: (signal: StopSignal) => void;
  /** Told of a stop that failed while the work's own error is the one thrown. */
  onStopError?: (err: unknown) => void;
}

/**
 * Runs a command's work with SIGINT and SIGTERM handled from the start: everything the work
 * registered is stopped, newest first, however it ends (done, failed, or signalled). Only the
 * first signal is caught; a second one takes its default course, for when stopping hangs.
 */
export async function runStoppable<T>(work: (scope: StopScope) => Promise<T>, options: StoppableOptions = {}): Promise<Ended<T>> {
  const signals = options.signals ?? process;
  const stops: (() => unknown)[] = [];
  let ended = false;
  let received: StopSignal | undefined;
  let signalled!: (signal: StopSignal) => void;
  const stopRequested = new Promise<StopSignal>((resolve) => (signalled = resolve));
  const interrupted = stopRequested.then((signal) => Promise.reject(new Interrupted(signal)));
  interrupted.catch(() => {});

  const listeners = STOP_SIGNALS.map((name) => [name, () => {
    unlisten();
    received = name;
    options.onSignal?.(name);
    signalled(name);
  }] as const);
  const unlisten = () => listeners.forEach(([name, listener]) => signals.off(name, listener));
  listeners.forEach(([name, listener]) => signals.on(name, listener));

  const stopLate = (stop: () => unknown) => void Promise.resolve().then(stop).catch((err: unknown) => options.onStopError?.(err));
  const scope: StopScope = {
    stopRequested,
    onStop: (stop) => (ended ? stopLate(stop) : stops.push(stop)),
    async start(starting, stop) {
      const started = await starting;
      scope.onStop(() => stop(started));
      if (received) throw new Interrupted(received);
      return started;
    },
    step(work) {
      work.catch(() => {});
      return Promise.race([work, interrupted]);
    },
  };

  let outcome: Ended<T> | { failed: unknown };
  try {
    outcome = { value: await work(scope) };
  } catch (err) {
    outcome = err instanceof Interrupted ? { signal: err.signal } : { failed: err };
  }
  const stopErrors = await stopAll(stops);
  ended = true;
  // Whatever was registered between the last stop and `ended` (work left behind by a signal, still
  // starting things) is stopped too; from here on a registration stops at once.
  stopErrors.push(...(await stopAll(stops)));
  unlisten();
  if ('failed' in outcome) {
    stopErrors.forEach((err) => options.onStopError?.(err));
    throw outcome.failed;
  }
  if (stopErrors.length > 0) {
    stopErrors.slice(1).forEach((err) => options.onStopError?.(err));
    throw stopErrors[0];
  }
  return outcome;
}

/** Runs every stop, newest first, each whether or not the one before it failed. */
async function stopAll(stops: (() => unknown)[]): Promise<unknown[]> {
  const errors: unknown[] = [];
  for (let stop = stops.pop(); stop; stop = stops.pop()) {
    try {
      await stop();
    } catch (err) {
      errors.push(err);
    }
  }
  return errors;
}

/** The exit status a shell reports for a process ended by `signal`: 130 for SIGINT, 143 for SIGTERM. */
export function signalExitCode(signal: StopSignal): number {
  return 128 + os.constants.signals[signal];
}
