import { describe, expect, it } from 'vitest';
import { Metrics } from '../../../src/runtime/metrics.js';

describe('Metrics', () => {
  it('keeps one series per label set and escapes what the text format needs escaped', () => {
    const m = new Metrics();
    m.counter('hops_total', 'Hops.', { decision: 'allow', task: 'ns/a' }).inc();
    m.counter('hops_total', 'Hops.', { decision: 'allow', task: 'ns/a' }).inc(2);
    m.counter('hops_total', 'Hops.', { decision: 'deny', task: 'a "quoted" \\ name\nsecond line' }).inc();
    m.counter('plain_total', 'No labels.').inc();
    m.counter('plain_total', 'No labels.').inc();
    const text = m.render();
    expect(text).toContain('hops_total{decision="allow",task="ns/a"} 3\n');
    expect(text).toContain('hops_total{decision="deny",task="a \\"quoted\\" \\\\ name\\nsecond line"} 1\n');
    expect(text).toContain('plain_total 2\n');
    expect(text.match(/^hops_total/gm)).toHaveLength(2);
  });
});
