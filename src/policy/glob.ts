const STAR = 0x2a;
const QUESTION = 0x3f;

/**
 * Globs over role ARNs, tools, actions and resources: `*` matches any run of characters (also
 * none, and also `/`, `:` and line breaks), `?` exactly one character; everything else is
 * literal and case-sensitive. A character is one UTF-16 code unit, as in the RegExp this
 * replaces; the values globs meet (ARNs, hop names) are ASCII in practice. This is the same `*`
 * as Cedar's `like`, which evaluates the globs of hop rules, so a rule means the same wherever
 * it is checked.
 *
 * Why not a RegExp: V8's backtracking engine takes exponential time on globs such as
 * `*a*a*a*a*a*b` against a long run of `a`s, and one such glob in an AgentPolicy would block the
 * event loop of every replica. The matcher below is the greedy two-pointer wildcard algorithm:
 * when a literal does not match it returns to the most recent `*` only, letting that `*` swallow
 * one more character. Earlier stars never need revisiting (whatever they could have swallowed, the
 * latest star can swallow too), so the restart point only moves forward through the value and
 * each restart re-reads at most the glob: O(glob length × value length) in the worst case —
 * 600 × 600 steps for the longest role ARN glob the schema admits — whatever the number of
 * stars, with no allocation and nothing to cache.
 */
export function globMatches(glob: string, value: string): boolean {
  let g = 0;
  let v = 0;
  // Where the latest `*` is in the glob, and where in the value it currently stops swallowing.
  let star = -1;
  let resume = 0;
  while (v < value.length) {
    const c = glob.charCodeAt(g);
    if (g < glob.length && c !== STAR && (c === QUESTION || c === value.charCodeAt(v))) {
      g++;
      v++;
    } else if (g < glob.length && c === STAR) {
      star = g++;
      resume = v;
    } else if (star >= 0) {
      g = star + 1;
      v = ++resume;
    } else {
      return false;
    }
  }
  while (g < glob.length && glob.charCodeAt(g) === STAR) g++;
  return g === glob.length;
}
