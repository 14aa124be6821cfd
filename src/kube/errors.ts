import { ApiException } from '@kubernetes/client-node';

interface Status {
  message?: string;
  reason?: string;
  code?: number;
}

function status(err: unknown): Status | undefined {
  if (!(err instanceof ApiException)) return undefined;
  const body: unknown = err.body;
  if (typeof body === 'string') {
    try {
      return JSON.parse(body) as Status;
    } catch {
      return { message: body, code: err.code };
    }
  }
  return (body as Status | undefined) ?? { code: err.code };
}

/** The HTTP status of a failed API call, or undefined for errors that are not API answers. */
export function statusCode(err: unknown): number | undefined {
  return err instanceof ApiException ? err.code : undefined;
}

export const isNotFound = (err: unknown) => statusCode(err) === 404;

/** The API server's own words for a failed call (its Status message), not the HTTP client's dump. */
export function kubeErrorMessage(err: unknown): string {
  const s = status(err);
  if (s?.message) return s.message;
  return err instanceof Error ? err.message : String(err);
}
