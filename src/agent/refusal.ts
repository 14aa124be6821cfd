/**
 * What the sidecar's gateways make of a broker refusal before they put it in their protocol's
 * shape (an AWS error, a JSON-RPC error): the broker's words, completed so that whoever reads the
 * error can find the hop and the rule.
 */

/** A rule that decided a hop, as the broker reports it. */
export interface RefusalReason {
  rule: string;
  effect: string;
}

/** A hop id from a broker answer, only if it looks like one: it goes into headers, URL paths and messages. */
export function safeHopId(value: unknown): string | undefined {
  return typeof value === 'string' && /^[A-Za-z0-9_-]{1,128}$/.test(value) ? value : undefined;
}

/** The reasons of a broker answer that name a rule, as `{rule, effect}` and nothing more; the rest of the list is dropped. */
export function reasonsOf(value: unknown): RefusalReason[] {
  if (!Array.isArray(value)) return [];
  const out: RefusalReason[] = [];
  for (const r of value as unknown[]) {
    const { rule, effect } = (typeof r === 'object' && r !== null ? r : {}) as Partial<Record<keyof RefusalReason, unknown>>;
    if (typeof rule === 'string' && rule !== '') out.push({ rule, effect: typeof effect === 'string' ? effect : '' });
  }
  return out;
}

/** The broker's message, with the deciding rules and the hop id added where it does not already name them. */
export function describedRefusal(message: string, reasons: RefusalReason[], hopId: string | undefined): string {
  let out = message;
  const unnamed = reasons.map((r) => r.rule).filter((rule) => !out.includes(rule));
  if (unnamed.length > 0) out += ` (rule ${unnamed.join(', ')})`;
  if (hopId && !out.includes(hopId)) out += ` (hop ${hopId})`;
  return out;
}

/** The broker's error, when a body is one: its code and message. */
export function refusalOf(body: unknown): { code: string; message: string } | undefined {
  const error = (body as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
  if (typeof error?.code !== 'string') return undefined;
  return { code: error.code, message: typeof error.message === 'string' ? error.message : error.code };
}
