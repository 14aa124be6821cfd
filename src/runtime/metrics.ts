/**
 * A small Prometheus registry: counters, gauges and histograms with labels, rendered in the
 * text exposition format at /metrics. Instruments are created on first use and reused after.
 */
type Labels = Record<string, string>;

const NEEDS_ESCAPE = /[\\"\n]/;
const escapeValue = (v: string) => (NEEDS_ESCAPE.test(v) ? v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n') : v);

/** `{k="v",…}` with values escaped, or nothing: the series' key, worked out on every hop's metrics. */
const labelText = (labels: Labels) => {
  let out = '';
  for (const k in labels) out += `${out ? ',' : '{'}${k}="${escapeValue(labels[k] as string)}"`;
  return out ? `${out}}` : '';
};

interface Series {
  render(name: string): string[];
}

class Counter implements Series {
  value = 0;
  constructor(private readonly labels: Labels) {}
  inc(by = 1): void {
    this.value += by;
  }
  render(name: string): string[] {
    return [`${name}${labelText(this.labels)} ${this.value}`];
  }
}

class Gauge implements Series {
  value = 0;
  constructor(private readonly labels: Labels) {}
  set(v: number): void {
    this.value = v;
  }
  render(name: string): string[] {
    return [`${name}${labelText(this.labels)} ${this.value}`];
  }
}

const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

class Histogram implements Series {
  private readonly counts = BUCKETS.map(() => 0);
  private sum = 0;
  private count = 0;
  constructor(private readonly labels: Labels) {}
  observe(seconds: number): void {
    this.sum += seconds;
    this.count++;
    BUCKETS.forEach((b, i) => {
      if (seconds <= b) this.counts[i] = (this.counts[i] ?? 0) + 1;
    });
  }
  render(name: string): string[] {
    const lines = BUCKETS.map((b, i) => `${name}_bucket${labelText({ ...this.labels, le: String(b) })} ${this.counts[i]}`);
    lines.push(`${name}_bucket${labelText({ ...this.labels, le: '+Inf' })} ${this.count}`);
    lines.push(`${name}_sum${labelText(this.labels)} ${this.sum}`, `${name}_count${labelText(this.labels)} ${this.count}`);
    return lines;
  }
}

interface Family {
  help: string;
  type: 'counter' | 'gauge' | 'histogram';
  series: Map<string, Series>;
}

export class Metrics {
  private readonly families = new Map<string, Family>();

  private get<T extends Series>(name: string, help: string, type: Family['type'], labels: Labels, make: () => T): T {
    let family = this.families.get(name);
    if (!family) {
      family = { help, type, series: new Map() };
      this.families.set(name, family);
    }
    const key = labelText(labels);
    let series = family.series.get(key);
    if (!series) {
      series = make();
      family.series.set(key, series);
    }
    return series as T;
  }

  counter(name: string, help: string, labels: Labels = {}): Counter {
    return this.get(name, help, 'counter', labels, () => new Counter(labels));
  }

  gauge(name: string, help: string, labels: Labels = {}): Gauge {
    return this.get(name, help, 'gauge', labels, () => new Gauge(labels));
  }

  histogram(name: string, help: string, labels: Labels = {}): Histogram {
    return this.get(name, help, 'histogram', labels, () => new Histogram(labels));
  }

  render(): string {
    const out: string[] = [];
    for (const [name, family] of this.families) {
      out.push(`# HELP ${name} ${family.help}`, `# TYPE ${name} ${family.type}`);
      for (const series of family.series.values()) out.push(...series.render(name));
    }
    return `${out.join('\n')}\n`;
  }
}
