import type { JsonPatchOperation, WriteOutcome } from './apply.js';
import { done, requeueAfter, type ReconcileResult } from './reconcile.js';

/** How long to wait before looking again after a finalizer write lost a race. */
const RACE_RETRY_MS = 100;

export interface Finalizable {
  metadata: { finalizers?: string[]; deletionTimestamp?: string; resourceVersion?: string };
}

export interface FinalizerArms<T> {
  /** The object is live (and holds the finalizer): converge it. */
  apply(object: T): Promise<ReconcileResult>;
  /**
   * The object is being deleted: undo what `apply` did outside the cluster. Must treat "already
   * gone" as done. May return JSON patch tests on what it read its state from (say, a value in
   * status it copied elsewhere): the finalizer is then removed only while they hold, and a write
   * that changed one in between (which the cleanup did not see) runs the cleanup again. Test only
   * what the cleanup copied: a test of the resourceVersion would fail on any write to the object,
   * a tenant's label or another controller's finalizer, and could keep the cleanup running.
   */
  cleanup(object: T): Promise<JsonPatchOperation[] | undefined>;
}

/**
 * Runs `apply` or `cleanup` around a finalizer. The finalizer is added before `apply` ever runs
 * and removed only after `cleanup` succeeded (a failing cleanup throws and is retried, the
 * finalizer stays). Both writes are JSON patches conditional on what was read: removal tests
 * that our entry is still at the index we saw, so it can never delete another controller's
 * entry, and addition tests the resourceVersion. A lost race is a short requeue.
 */
export async function withFinalizer<T extends Finalizable>(object: T, name: string, patch: (ops: JsonPatchOperation[]) => Promise<WriteOutcome>, arms: FinalizerArms<T>): Promise<ReconcileResult> {
  const finalizers = object.metadata.finalizers ?? [];
  const index = finalizers.indexOf(name);
  if (object.metadata.deletionTimestamp) {
    if (index < 0) return done();
    const held = (await arms.cleanup(object)) ?? [];
    const outcome = await patch([
      ...held,
      { op: 'test', path: `/metadata/finalizers/${index}`, value: name },
      { op: 'remove', path: `/metadata/finalizers/${index}` },
    ]);
    return outcome === 'conflict' ? requeueAfter(RACE_RETRY_MS) : done();
  }
  if (index < 0) {
    const outcome = await patch([
      { op: 'test', path: '/metadata/resourceVersion', value: object.metadata.resourceVersion },
      finalizers.length === 0 ? { op: 'add', path: '/metadata/finalizers', value: [name] } : { op: 'add', path: '/metadata/finalizers/-', value: name },
    ]);
    // Written: the watch brings the object back with the finalizer, and `apply` runs then.
    return outcome === 'conflict' ? requeueAfter(RACE_RETRY_MS) : done();
  }
  return arms.apply(object);
}
