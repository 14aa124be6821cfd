/**
 * A bound on what a process holds in memory at once to check or edit it (the sidecar's AWS
 * request bodies and MCP answers, the broker's gateway calls): each part is counted as it is read
 * and given back when its exchange is done, so that many large exchanges at once are refused one
 * by one rather than take the process past its memory limit, where it would restart with
 * everything in flight.
 */
export class MemoryBudget {
  private used = 0;

  constructor(readonly max: number) {}

  /** How much is held now. */
  get held(): number {
    return this.used;
  }

  /** Counts `amount` more, or counts nothing and answers false when that would pass the bound. */
  tryTake(amount: number): boolean {
    if (this.used + amount > this.max) return false;
    this.used += amount;
    return true;
  }

  give(amount: number): void {
    this.used -= amount;
  }
}

/** `amount` as KiB for a message, rounded up. */
export const kib = (amount: number): number => Math.ceil(amount / 1024);
