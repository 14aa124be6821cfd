import { isDeepStrictEqual } from 'node:util';
import { InvalidObjectError, type FieldViolation } from '../api/parse.js';

/** The parts of an admission.k8s.io/v1 AdmissionRequest the plugins read. */
export interface AdmissionRequest {
  uid: string;
  kind: { group: string; version: string; kind: string };
  resource: { group: string; version: string; resource: string };
  subResource?: string;
  operation: 'CREATE' | 'UPDATE' | 'DELETE' | 'CONNECT';
  namespace?: string;
  name?: string;
  userInfo: { username?: string; uid?: string; groups?: string[]; extra?: Record<string, string[]> };
  object?: unknown;
  oldObject?: unknown;
  dryRun?: boolean;
}

export interface JsonPatchOperation {
  op: 'add' | 'replace' | 'remove';
  path: string;
  value?: unknown;
}

/** What a plugin decides. A denial lists every violation it found, each with its field path. */
export type Verdict =
  | { allowed: true; patch?: JsonPatchOperation[]; warnings?: string[] }
  | { allowed: false; message: string; violations?: FieldViolation[]; code?: number };

/**
 * An UPDATE that leaves the spec as it was: only metadata changed. The API server does not call
 * our webhooks for these (registration.ts), and the plugins allow them too, so both agree.
 */
export function keepsSpec(request: AdmissionRequest): boolean {
  if (request.operation !== 'UPDATE') return false;
  const spec = (o: unknown) => (o as { spec?: unknown } | undefined)?.spec;
  return isDeepStrictEqual(spec(request.oldObject), spec(request.object));
}

export const allow = (patch?: JsonPatchOperation[], warnings?: string[]): Verdict => ({ allowed: true, patch, warnings });

export function deny(kind: string, violations: FieldViolation[]): Verdict {
  return {
    allowed: false,
    code: 422,
    violations,
    message: `${kind} rejected: ${violations.map((v) => `${v.field}: ${v.message}`).join('; ')}`,
  };
}

/** One link of a webhook's chain: it sees the requests for its resources and operations. */
export interface AdmissionPlugin {
  name: string;
  resources: readonly string[];
  /** Subresources it sees as well (e.g. `ephemeralcontainers`); by default only the resource itself. */
  subResources?: readonly string[];
  operations: readonly AdmissionRequest['operation'][];
  admit(request: AdmissionRequest): Promise<Verdict>;
}

/**
 * The object a validating plugin judges, parsed, or the refusal when it does not parse. The API
 * server checks an object against the CRD's schema before any validating webhook sees it, so one
 * that does not parse here is one the two read differently (a length or a pattern counted
 * otherwise): it is refused, naming the fields, never let through unjudged.
 */
export function parseToJudge<T>(kind: string, parse: (raw: unknown) => T, raw: unknown): { object: T; refusal?: undefined } | { object?: undefined; refusal: Verdict } {
  try {
    return { object: parse(raw) };
  } catch (err) {
    if (!(err instanceof InvalidObjectError)) throw err;
    const violations = err.violations.map((v) => ({ field: v.field, message: `${v.message}, as chainwarden's admission webhook reads it; it judges only what it can read, so change the field until both it and the API server accept it` }));
    return { refusal: deny(kind, violations) };
  }
}

/**
 * Parses the object under review. One that does not fit the schema yields undefined: the
 * plugins then let it pass to the API server's own schema and CEL validation, which refuses
 * it with the messages written next to each rule. Context checks need a well-formed object.
 */
export function parseForAdmission<T>(parse: (raw: unknown) => T, raw: unknown): T | undefined {
  try {
    return parse(raw);
  } catch (err) {
    if (err instanceof InvalidObjectError) return undefined;
    throw err;
  }
}
