import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const root = path.resolve(import.meta.dirname, '../../..');
const files = readdirSync(path.join(root, 'crds')).filter((f) => f.endsWith('.yaml'));

describe('the Helm chart carries the same CRDs', () => {
  it('has exactly the files of crds/', () => {
    expect(readdirSync(path.join(root, 'charts/chainwarden/crds')).sort()).toEqual(files.sort());
  });
  it.each(files)('charts/chainwarden/crds/%s is crds/%s (copy it over after `chainwarden crds --write crds`)', (file) => {
    expect(readFileSync(path.join(root, 'charts/chainwarden/crds', file), 'utf8')).toBe(readFileSync(path.join(root, 'crds', file), 'utf8'));
  });
});
