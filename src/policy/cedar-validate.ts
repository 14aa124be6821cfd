import * as cedar from '@cedar-policy/cedar-wasm/nodejs';
import { CEDAR_SCHEMA } from './cedar-schema.js';

/** One problem in a Cedar text, at a 1-based line and column. */
export interface CedarDiagnostic {
  line: number;
  column: number;
  message: string;
}

/** 1-based line and column of a character offset. */
export function lineAndColumn(text: string, offset: number): { line: number; column: number } {
  const before = text.slice(0, offset);
  const line = before.split('\n').length;
  return { line, column: offset - before.lastIndexOf('\n') };
}

function diagnostic(text: string, error: cedar.DetailedError): CedarDiagnostic {
  const at = error.sourceLocations?.[0];
  const { line, column } = at ? lineAndColumn(text, at.start) : { line: 1, column: 1 };
  const detail = [error.message.replace(/^for policy `policy\d+`, /, ''), at?.label, error.help].filter(Boolean).join('; ');
  return { line, column, message: detail };
}

/**
 * Parses Cedar policies and validates them (strict mode) against the chainwarden schema.
 * Returns every problem found; an empty list means the text is good.
 */
export function validateCedar(text: string): CedarDiagnostic[] {
  const parsed = cedar.checkParsePolicySet({ staticPolicies: text });
  if (parsed.type === 'failure') return parsed.errors.map((e) => diagnostic(text, e));
  const answer = cedar.validate({ schema: CEDAR_SCHEMA, policies: { staticPolicies: text }, validationSettings: { mode: 'strict' } });
  if (answer.type === 'failure') return answer.errors.map((e) => diagnostic(text, e));
  return answer.validationErrors.map((e) => diagnostic(text, e.error));
}
