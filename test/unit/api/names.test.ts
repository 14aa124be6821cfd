import { describe, expect, it } from 'vitest';
import { DNS_LABEL, DNS_SUBDOMAIN, isDnsLabel, isDnsSubdomain } from '../../../src/api/names.js';
import { AgentTaskSpec } from '../../../src/api/schema.js';

/** The CEL rule the CRD schema would hold for a regular expression. */
const celMatches = (re: RegExp) => `self.matches('${re.source.replace(/\\/g, '\\\\')}')`;
const rulesOf = (schema: unknown) => ((schema as { 'x-kubernetes-validations'?: { rule: string }[] })['x-kubernetes-validations'] ?? []).map((r) => r.rule);

describe('Kubernetes names', () => {
  it('are the shapes the CRD schema checks (no drift between path checks and admission)', () => {
    const spec = AgentTaskSpec as unknown as { properties: { serviceAccountName: unknown; credentials: { items: { properties: { name: unknown } } } } };
    const credentials = spec.properties.credentials.items;
    expect(rulesOf(spec.properties.serviceAccountName)).toContain(celMatches(DNS_SUBDOMAIN));
    expect(rulesOf(credentials.properties.name)).toContain(celMatches(DNS_LABEL));
  });

  it.each([
    ['ticket-4711', true, true],
    ['a', true, true],
    ['agents.ticket-4711', false, true],
    ['Ticket', false, false],
    ['-ticket', false, false],
    ['ticket-', false, false],
    ['ticket_4711', false, false],
    ['', false, false],
    ['a'.repeat(63), true, true],
    ['a'.repeat(64), false, true],
    [`${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(61)}`, false, true],
    ['a'.repeat(254), false, false],
    ['%74icket', false, false],
  ])('%j: label %s, subdomain %s', (name, label, subdomain) => {
    expect(isDnsLabel(name)).toBe(label);
    expect(isDnsSubdomain(name)).toBe(subdomain);
  });
});
