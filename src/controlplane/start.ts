import { ChainwardenError } from '../errors.js';

/**
 * Ports are picked free and then bound by a child process, so another process can take one in
 * between. Such a start is tried again with new ports; any other failure is final.
 */
export async function startWithFreshPorts<T>(attempts: number, start: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await start();
    } catch (err) {
      const portTaken = err instanceof ChainwardenError && /address already in use/i.test(err.message);
      if (!portTaken || attempt >= attempts) throw err;
    }
  }
}
