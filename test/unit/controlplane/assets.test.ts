import { describe, expect, it } from 'vitest';
import { stagingReplaces, versionAtLeast } from '../../../src/controlplane/assets.js';

const upstreamGoMod = `module k8s.io/kubernetes

go 1.25.0

require (
	k8s.io/api v0.0.0
	github.com/google/go-cmp v0.7.0
)

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/apimachinery => ./staging/src/k8s.io/apimachinery
	k8s.io/cri-client => ./staging/src/k8s.io/cri-client
	github.com/example/fork => github.com/example/fork v1.2.3
)
`;

describe('stagingReplaces', () => {
  it('maps every staging module to its published v0.X.Y and nothing else', () => {
    expect(stagingReplaces(upstreamGoMod, '1.35.4')).toEqual([
      'k8s.io/api => k8s.io/api v0.35.4',
      'k8s.io/apimachinery => k8s.io/apimachinery v0.35.4',
      'k8s.io/cri-client => k8s.io/cri-client v0.35.4',
    ]);
  });

  it('refuses a go.mod with no staging modules rather than building something else', () => {
    expect(() => stagingReplaces('module k8s.io/kubernetes\n', '1.35.4')).toThrow(/no staging modules/);
  });
});

describe('versionAtLeast', () => {
  it.each([
    ['1.26.8', '1.25', true],
    ['1.25', '1.25', true],
    ['1.25.0', '1.25', true],
    ['1.24.11', '1.25', false],
    ['1.9', '1.25', false],
  ])('%s >= %s is %s', (have, want, expected) => {
    expect(versionAtLeast(have, want)).toBe(expected);
  });
});
