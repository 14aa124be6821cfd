import { setFlagsFromString } from 'node:v8';
import * as cedar from '@cedar-policy/cedar-wasm/nodejs';
import type { AgentPolicy } from '../api/schema.js';
import { CEDAR_NAMESPACE, CEDAR_SCHEMA } from './cedar-schema.js';
import { compilePolicy, type CompiledPolicy, type RuleEffect } from './compile.js';

/** What Cedar sees of one hop. */
export interface HopContext {
  tool: string;
  action: string;
  resource: string;
  intent: string;
  depth: number;
  hopCount: number;
  secondsSinceStart: number;
  systemsTouched: string[];
  dataClassesTouched: string[];
  trustBoundary: string;
  crossesTrustBoundary: boolean;
  priorDenials: number;
}

export interface HopSubject {
  namespace: string;
  task: string;
  serviceAccount: string;
  intent: string;
  toolDataClasses: string[];
  attributes: Record<string, string>;
}

export interface Reason {
  rule: string;
  effect: RuleEffect;
  /** Why, when the rule alone does not say (an evaluation error names the policy and the error). */
  message?: string;
}

/** The rule a hop is denied by when Cedar could not evaluate the policy completely. */
export const EVALUATION_ERROR = 'evaluation-error';

/** Cedar's answer, with the rules that decided it. */
export interface Evaluation {
  decision: 'Allow' | 'Deny';
  reasons: Reason[];
  errors: string[];
}

/*
 * Cedar's calls return JavaScript objects from WebAssembly (externref). When optimized code that
 * inlined such a call is deoptimized while the call runs, V8 11.3 (Node 20) cannot rebuild its
 * result and aborts the process ("unreachable code" in Deoptimizer::DoComputeBuiltinContinuation);
 * the operator died so under load. Not inlining JS-to-WebAssembly calls avoids that frame
 * altogether, at the cost of the generic call wrapper, once per decision Cedar is asked for.
 */
setFlagsFromString('--no-turbo-inline-js-wasm-calls');

const SCHEMA_NAME = 'chainwarden';
let schemaReady = false;

/** Decisions remembered per policy generation; past this the oldest are forgotten. */
const MEMO_ENTRIES = 8_192;

/**
 * Policies kept compiled at once; past this the one compiled longest ago is dropped (and compiled
 * again if it is used again). Cedar keeps every preparsed policy set until it is replaced, so
 * this is also what bounds its memory.
 */
export const MAX_PREPARED_POLICIES = 256;

interface Prepared {
  /** Where Cedar keeps it: one slot per policy, reused by its next generation. */
  id: string;
  generation: number;
  effects: Map<string, RuleEffect>;
  /** What the policy reads, and its decisions by exactly that; absent when it has raw Cedar. */
  memo?: { reads: NonNullable<CompiledPolicy['reads']>; decisions: Map<string, Evaluation> };
}

/** Exactly what a compiled policy reads of a hop, as one string: equal keys, equal decisions. */
function memoKey(reads: NonNullable<CompiledPolicy['reads']>, context: HopContext): string {
  const systems = context.systemsTouched.filter((s) => reads.systems.has(s)).sort();
  const classes = context.dataClassesTouched.filter((c) => reads.dataClasses.has(c)).sort();
  return JSON.stringify([context.tool, context.action, context.resource, context.depth, context.crossesTrustBoundary, systems, classes]);
}

/** A policy as the engine keeps it: the object (its uid, else its namespace) and its name. */
export const keyOf = (policy: Pick<AgentPolicy, 'metadata'>): string => `${policy.metadata.uid ?? policy.metadata.namespace ?? ''}/${policy.metadata.name ?? ''}`;

/**
 * Evaluates hops with Cedar. Each policy generation is compiled and parsed once (preparsed in
 * the WASM module, in the policy's own slot: a new generation replaces the last, which Cedar
 * then frees); a hop then costs one authorization call. A policy
 * of rules alone reads a known, small part of a hop (see `CompiledPolicy.reads`), so its
 * decisions are remembered keyed on exactly that part: the same call in the same chain state is
 * decided once per policy generation. Raw Cedar may read anything, and is evaluated every time.
 */
export class PolicyEngine {
  /** By policy (uid, else namespace, and name: see `keyOf`), oldest compiled first. */
  private readonly prepared = new Map<string, Prepared>();
  /** Cedar slots of policies dropped from `prepared`, for the next policy compiled. */
  private readonly freeSlots: string[] = [];
  private slots = 0;

  /** `memoize: false` asks Cedar every time: the reference the remembered decisions are tested against. */
  constructor(private readonly options: { memoize?: boolean } = {}) {}

  private prepare(policy: AgentPolicy): Prepared {
    const key = keyOf(policy);
    const generation = policy.metadata.generation ?? 0;
    const known = this.prepared.get(key);
    if (known?.generation === generation) return known;
    if (!schemaReady) {
      const answer = cedar.preparseSchema(SCHEMA_NAME, CEDAR_SCHEMA);
      if (answer.type === 'failure') throw new Error(`the chainwarden Cedar schema does not parse: ${answer.errors.map((e) => e.message).join('; ')}`);
      schemaReady = true;
    }
    const compiled = compilePolicy(policy);
    const id = known?.id ?? this.freeSlots.pop() ?? `policy-${++this.slots}`;
    // A set that does not parse leaves the slot as it was; the policy is not kept, so it is tried again.
    const answer = cedar.preparsePolicySet(id, { staticPolicies: compiled.policies });
    if (answer.type === 'failure') {
      if (!known) this.freeSlots.push(id);
      throw new Error(`AgentPolicy ${policy.metadata.name ?? ''} does not compile to Cedar: ${answer.errors.map((e) => e.message).join('; ')}`);
    }
    const entry: Prepared = { id, generation, effects: compiled.effects, ...(compiled.reads && this.options.memoize !== false ? { memo: { reads: compiled.reads, decisions: new Map() } } : {}) };
    this.prepared.delete(key);
    this.prepared.set(key, entry);
    if (this.prepared.size > MAX_PREPARED_POLICIES) this.drop(this.prepared.keys().next().value as string);
    return entry;
  }

  /** Forgets a policy (deleted, or compiled longest ago; by `keyOf`): its slot in Cedar is emptied and reused. */
  drop(key: string): void {
    const entry = this.prepared.get(key);
    if (!entry) return;
    this.prepared.delete(key);
    cedar.preparsePolicySet(entry.id, { staticPolicies: {} });
    this.freeSlots.push(entry.id);
  }

  /**
   * Fails closed: Cedar skips a policy whose evaluation errors (an integer overflow, a missing
   * tag) and decides without it, so an erroring `forbid` would let the hop through. Any error,
   * and a policy that does not compile, is a denial by `evaluation-error` naming what failed.
   */
  evaluate(policy: AgentPolicy, subject: HopSubject, context: HopContext, toolBoundary: string): Evaluation {
    let prepared: Prepared;
    try {
      prepared = this.prepare(policy);
    } catch (err) {
      return failedClosed([err instanceof Error ? err.message : String(err)]);
    }
    const memo = prepared.memo;
    if (!memo) return this.authorize(prepared, subject, context, toolBoundary);
    const key = memoKey(memo.reads, context);
    const known = memo.decisions.get(key);
    if (known) return known;
    const evaluation = this.authorize(prepared, subject, context, toolBoundary);
    // Only clean answers are remembered: an error is re-evaluated (and denied) every time.
    if (evaluation.errors.length > 0) return evaluation;
    if (memo.decisions.size >= MEMO_ENTRIES) memo.decisions.delete(memo.decisions.keys().next().value ?? '');
    memo.decisions.set(key, Object.freeze({ ...evaluation, reasons: Object.freeze(evaluation.reasons.map((r) => Object.freeze(r))) as Reason[] }));
    return memo.decisions.get(key) as Evaluation;
  }

  private authorize(prepared: Prepared, subject: HopSubject, context: HopContext, toolBoundary: string): Evaluation {
    const taskId = `${subject.namespace}/${subject.task}`;
    const resourceId = `${context.tool}/${context.resource}`;
    let answer: ReturnType<typeof cedar.statefulIsAuthorized>;
    // Cedar's bindings throw on input they cannot encode (a lone surrogate): that is a denial, named, as any evaluation error is.
    try {
      answer = cedar.statefulIsAuthorized({
        principal: { type: `${CEDAR_NAMESPACE}::Task`, id: taskId },
        action: { type: `${CEDAR_NAMESPACE}::Action`, id: 'hop' },
        resource: { type: `${CEDAR_NAMESPACE}::Resource`, id: resourceId },
        context: context as unknown as cedar.Context,
        preparsedPolicySetId: prepared.id,
        preparsedSchemaName: SCHEMA_NAME,
        validateRequest: true,
        entities: [
          { uid: { type: `${CEDAR_NAMESPACE}::Task`, id: taskId }, attrs: { namespace: subject.namespace, name: subject.task, serviceAccount: subject.serviceAccount, intent: subject.intent }, parents: [] },
          { uid: { type: `${CEDAR_NAMESPACE}::Tool`, id: context.tool }, attrs: { trustBoundary: toolBoundary, dataClasses: subject.toolDataClasses }, parents: [] },
          { uid: { type: `${CEDAR_NAMESPACE}::Resource`, id: resourceId }, attrs: {}, parents: [{ type: `${CEDAR_NAMESPACE}::Tool`, id: context.tool }], tags: subject.attributes },
        ],
      });
    } catch (err) {
      return failedClosed([`the request could not be given to Cedar: ${err instanceof Error ? err.message : String(err)}`]);
    }
    if (answer.type === 'failure') return failedClosed(answer.errors.map((e) => e.message));
    const { decision, diagnostics } = answer.response;
    if (diagnostics.errors.length > 0) return failedClosed(diagnostics.errors.map((e) => `policy ${e.policyId}: ${e.error.message}`));
    // Cedar gives the deciding policies in no particular order; the answer and its audit record do not vary.
    const reasons = [...diagnostics.reason].sort().map((rule): Reason => ({ rule, effect: prepared.effects.get(rule) ?? (decision === 'deny' ? 'Deny' : 'Allow') }));
    return { decision: decision === 'allow' ? 'Allow' : 'Deny', reasons, errors: [] };
  }
}

/** Long enough to name the policy and the error; short enough for an answer and an audit record. */
const MAX_REASON_MESSAGE = 512;

function failedClosed(errors: string[]): Evaluation {
  const message = errors.join('; ');
  return { decision: 'Deny', reasons: [{ rule: EVALUATION_ERROR, effect: 'Deny', message: message.length > MAX_REASON_MESSAGE ? `${message.slice(0, MAX_REASON_MESSAGE - 1)}…` : message }], errors };
}
