import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const root = path.resolve(import.meta.dirname, '../../..');
const dashboard = JSON.parse(readFileSync(path.join(root, 'charts/chainwarden/dashboards/chainwarden.json'), 'utf8')) as { panels: { title: string; targets: { expr: string }[] }[] };

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const file = path.join(dir, name);
    return statSync(file).isDirectory() ? sources(file) : file.endsWith('.ts') ? [file] : [];
  });
}

/** Every metric the operator defines: the first argument of a counter, gauge or histogram, or of a helper that passes it on. */
const defined = new Set(
  sources(path.join(root, 'src'))
    .filter((f) => !f.includes(`${path.sep}bench${path.sep}`))
    .flatMap((f) => [...readFileSync(f, 'utf8').matchAll(/\(\s*'(chainwarden_[a-z_]+)'/g)].map((m) => m[1] as string)),
);
const charted = new Set(dashboard.panels.flatMap((p) => p.targets.flatMap((t) => [...t.expr.matchAll(/\b(chainwarden_[a-z_]+?)(?:_bucket|_sum|_count)?\b/g)].map((m) => m[1] as string))));

describe('the Grafana dashboard in the chart', () => {
  it('charts only metrics the operator exports (a renamed metric would leave an empty panel)', () => {
    expect(defined.size).toBeGreaterThan(10);
    expect([...charted].filter((m) => !defined.has(m))).toEqual([]);
  });

  it('charts every metric the operator exports', () => {
    expect([...defined].filter((m) => !charted.has(m))).toEqual([]);
  });

  it('asks Prometheus through the datasource variable, in every panel', () => {
    for (const panel of dashboard.panels) expect(JSON.stringify(panel), panel.title).toContain('${datasource}');
  });
});
