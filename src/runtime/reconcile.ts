/**
 * The reconcile contract. A reconcile returns normally (done; or look again later, which is not
 * an error), throws a `PermanentError` (the object cannot be acted on until it changes: report
 * it, do not retry), or throws anything else (retryable: back off per key).
 */
export interface ReconcileResult {
  /** Look again after this long (a deadline, an expiry, a write that lost a race); not an error. */
  requeueAfterMs?: number;
}

export const done = (): ReconcileResult => ({});
export const requeueAfter = (ms: number): ReconcileResult => ({ requeueAfterMs: Math.max(0, ms) });

/** Retrying cannot help: the object must change first. The queue reports it and forgets the key. */
export class PermanentError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PermanentError';
  }
}
