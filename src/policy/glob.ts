const cache = new Map<string, RegExp>();

/** `*` matches any run of characters (also none), `?` one character; everything else is literal. */
export function globToRegExp(glob: string): RegExp {
  let re = cache.get(glob);
  if (!re) {
    const body = glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
    re = new RegExp(`^${body}$`);
    cache.set(glob, re);
  }
  return re;
}

export const globMatches = (glob: string, value: string): boolean => globToRegExp(glob).test(value);
