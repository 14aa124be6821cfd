import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { JEMALLOC_CONF } from '../../../src/bench/allocator.js';

const dockerfile = readFileSync(path.resolve(__dirname, '..', '..', '..', 'Dockerfile'), 'utf8');
/** The final stage: what the image runs with. */
const runtimeStage = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '));

describe('the allocator the benchmark measures is the one the image ships', () => {
  it('the image installs jemalloc and preloads it for every process it starts', () => {
    expect(runtimeStage).toMatch(/apk add --no-cache jemalloc/);
    expect(runtimeStage).toMatch(/LD_PRELOAD=\/usr\/lib\/libjemalloc\.so\.2/);
  });

  it('with the settings the benchmark runs the operator and the sidecar with', () => {
    const conf = /MALLOC_CONF=(\S+)/.exec(runtimeStage)?.[1];
    expect(conf).toBe(JEMALLOC_CONF);
  });
});
