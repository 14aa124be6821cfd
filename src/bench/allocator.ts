/**
 * The memory allocator the benchmark runs the operator and the sidecar with: the image's, so that
 * what is measured is what ships. The image preloads jemalloc (see the Dockerfile); here it is
 * Debian's `libjemalloc2`, installed when missing and the machine allows it.
 * `CHAINWARDEN_BENCH_ALLOCATOR=system` runs them on the C library's allocator instead, for
 * comparison.
 */
import { existsSync } from 'node:fs';
import { run, which } from '../controlplane/exec.js';

/** What the image sets beside `LD_PRELOAD`; the same string is in the Dockerfile. */
export const JEMALLOC_CONF = 'background_thread:true,dirty_decay_ms:5000,muzzy_decay_ms:0';

const CANDIDATES = ['/usr/lib/x86_64-linux-gnu/libjemalloc.so.2', '/usr/lib/aarch64-linux-gnu/libjemalloc.so.2', '/usr/lib/libjemalloc.so.2'];

export interface Allocator {
  name: 'jemalloc' | 'system';
  env: Record<string, string>;
}

const found = () => CANDIDATES.find((p) => existsSync(p));

/** jemalloc when it is here or can be installed (Debian, as root), else the system's, saying why. */
export async function benchAllocator(log: (m: string) => void): Promise<Allocator> {
  const system: Allocator = { name: 'system', env: {} };
  if (process.env.CHAINWARDEN_BENCH_ALLOCATOR === 'system') return system;
  let lib = found();
  if (!lib && process.getuid?.() === 0 && (await which('apt-get'))) {
    log('installing libjemalloc2 (the allocator the image ships)');
    const install = () => run('apt-get', ['install', '-y', '-qq', 'libjemalloc2'], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    await install().catch(async () => {
      await run('apt-get', ['update', '-qq']);
      await install();
    }).catch((err: unknown) => log(`could not install libjemalloc2: ${err instanceof Error ? err.message : String(err)}`));
    lib = found();
  }
  if (!lib) {
    log('jemalloc is not on this machine: the operator and sidecar run on the system allocator, unlike the image');
    return system;
  }
  return { name: 'jemalloc', env: { LD_PRELOAD: lib, MALLOC_CONF: JEMALLOC_CONF } };
}
