import type { TSchema } from '@sinclair/typebox';
import { ValueErrorType } from '@sinclair/typebox/errors';
import { Value } from '@sinclair/typebox/value';
import { isDeepStrictEqual } from 'node:util';
import { ChainwardenError } from '../errors.js';
import {
  AgentApprovalSpec,
  AgentPolicySpec,
  AgentTaskSpec,
  API_VERSION,
  type AgentApproval,
  type AgentPolicy,
  type AgentTask,
} from './schema.js';

export interface FieldViolation {
  /** Field path in kubectl's notation: spec.credentials[0].aws.roleArn */
  field: string;
  message: string;
}

/** A manifest that does not fit the API; lists every violation, each with its field path. */
export class InvalidObjectError extends ChainwardenError {
  constructor(
    readonly kind: string,
    readonly violations: FieldViolation[],
  ) {
    super('invalid_object', `${kind} is invalid: ${violations.map((v) => `${v.field}: ${v.message}`).join('; ')}`, { field: violations[0]?.field });
    this.name = 'InvalidObjectError';
  }
}

/** `/spec/credentials/0/aws/roleArn` → `spec.credentials[0].aws.roleArn` */
export function fieldPath(pointer: string, prefix = ''): string {
  let out = prefix;
  for (const raw of pointer.split('/').filter(Boolean)) {
    const part = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    out += /^\d+$/.test(part) ? `[${part}]` : out === '' ? part : `.${part}`;
  }
  return out;
}

function parseResource<T>(kind: string, spec: TSchema, input: unknown): T {
  const obj = input as { apiVersion?: unknown; kind?: unknown; metadata?: unknown; spec?: unknown } | null;
  const violations: FieldViolation[] = [];
  if (typeof obj !== 'object' || obj === null) throw new InvalidObjectError(kind, [{ field: '', message: 'must be an object' }]);
  if (obj.apiVersion !== API_VERSION) violations.push({ field: 'apiVersion', message: `must be ${API_VERSION}` });
  if (obj.kind !== kind) violations.push({ field: 'kind', message: `must be ${kind}` });
  if (typeof obj.metadata !== 'object' || obj.metadata === null) violations.push({ field: 'metadata', message: 'is required' });
  if (obj.spec === undefined) {
    violations.push({ field: 'spec', message: 'is required' });
  } else {
    const withDefaults = Value.Default(spec, structuredClone(obj.spec));
    for (const error of Value.Errors(spec, withDefaults)) {
      if (error.type === ValueErrorType.StringMaxLength && withinMaxLength(error.value, error.schema.maxLength)) continue;
      violations.push({ field: fieldPath(error.path, 'spec'), message: error.message.toLowerCase() });
    }
    // Objects from the API server already carry the CRD's defaults (the same as the schema's):
    // those are returned as they are, so a cache of parsed objects holds no second copy of each.
    if (violations.length === 0) return (isDeepStrictEqual(withDefaults, obj.spec) ? obj : { ...obj, spec: withDefaults }) as T;
  }
  throw new InvalidObjectError(kind, violations);
}

/**
 * A string's length as the API server counts it for `maxLength`: in characters (code points), where
 * the schema library counts UTF-16 code units, two for an emoji. Counted the other way, a string
 * the API server stores would be one this parser refuses.
 */
function withinMaxLength(value: unknown, maxLength: unknown): boolean {
  if (typeof value !== 'string' || typeof maxLength !== 'number') return false;
  let chars = 0;
  for (const _ of value) if (++chars > maxLength) return false;
  return true;
}

/**
 * The one parser of the API's objects, used by the webhooks and the controllers alike. It
 * applies the schema's defaults, so code reading a parsed object never re-derives them.
 */
export const parseAgentTask = (input: unknown): AgentTask => parseResource<AgentTask>('AgentTask', AgentTaskSpec, input);
export const parseAgentPolicy = (input: unknown): AgentPolicy => parseResource<AgentPolicy>('AgentPolicy', AgentPolicySpec, input);
export const parseAgentApproval = (input: unknown): AgentApproval => parseResource<AgentApproval>('AgentApproval', AgentApprovalSpec, input);
