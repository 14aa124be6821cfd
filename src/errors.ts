/**
 * Coded errors. Every error a user can meet carries a stable `code`, a message that says what
 * to do, and, where a request or manifest field is at fault, that field's path.
 */
export class ChainwardenError extends Error {
  readonly code: string;
  readonly field: string | undefined;

  constructor(code: string, message: string, options: { field?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ChainwardenError';
    this.code = code;
    this.field = options.field;
  }
}

/** A tool the local environment needs is not installed; the message names what to install. */
export class MissingToolError extends ChainwardenError {
  constructor(message: string) {
    super('tool_missing', message);
    this.name = 'MissingToolError';
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
