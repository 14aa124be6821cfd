/**
 * A URL that may only be known once the server listens (port 0 in development and tests): parts
 * built before `listen` hold a function and read it per request.
 */
export type ServingUrl = string | (() => string);

export const urlOf = (url: ServingUrl): string => (typeof url === 'function' ? url() : url);
