import { writeSync } from 'node:fs';
import type { Clock } from './clock.js';

/**
 * Crash points for fault tests. Each names one step of issuance, revocation, pruning, finalizer
 * removal or journaling, at the moment that step is half done; a process started with
 * `CHAINWARDEN_FAULT_POINTS=<name>[,<name>…]` kills itself with SIGKILL there, as a node failure
 * or an OOM kill would: no handler runs, nothing buffered is flushed. Without the variable (every
 * process outside the fault tests) a point costs one environment lookup.
 */
export const FAULT_POINTS = {
  'issue.after-sts': 'STS has answered; the session is in no status, the agent has no answer',
  'issue.after-record': 'the session is in the task status; no audit record, the agent has no answer',
  'revoke.after-deny': "the IAM deny is written; the task's status does not say revoked",
  'revoke.after-status': 'the status says revoked; no audit record, no Event',
  'finalize.after-deny': 'a deleted task: the IAM deny is written, the audit head not sealed, the finalizer on',
  'finalize.after-seal': 'a deleted task: revoked and its audit head sealed; the finalizer still on',
  'deny-policy.before-write': 'a revocation policy planned (a deny added, or expired entries pruned), not written',
  'journal.after-status': 'an audit head is in the task status; its records are not yet emitted',
} as const;

export type FaultPoint = keyof typeof FAULT_POINTS;

export function faultPoint(name: FaultPoint): void {
  const armed = process.env.CHAINWARDEN_FAULT_POINTS;
  if (!armed || !armed.split(',').includes(name)) return;
  // Synchronous: the test reads this line to know which point the process died at.
  writeSync(2, `chainwarden fault point ${name}: SIGKILL\n`);
  process.kill(process.pid, 'SIGKILL');
}

/**
 * For tests of replicas that disagree about time: `CHAINWARDEN_FAULT_CLOCK_SKEW_MS` moves this
 * process's clock (everything but the leader election's monotonic timer) by that much.
 */
export function skewedClock(base: Clock): Clock {
  const skew = Number(process.env.CHAINWARDEN_FAULT_CLOCK_SKEW_MS ?? 0);
  return Number.isFinite(skew) && skew !== 0 ? { now: () => base.now() + skew } : base;
}
