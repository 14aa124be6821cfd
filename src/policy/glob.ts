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
 * event loop of every replica. A glob without `?` (every glob of a policy's rules and systems) is
 * its pieces between stars: the first must start the value, the last end it, and each other is
 * found at its leftmost place after the one before (`indexOf`, which does not backtrack either),
 * which is enough, since any later place leaves the rest less room. That reads the value about
 * once. The pieces of recent globs are kept, so a hop's globs are split once, not per hop.
 */
export function globMatches(glob: string, value: string): boolean {
  const parts = piecesOf(glob);
  if (parts === undefined) return withQuestionMarks(glob, value);
  const last = parts.length - 1;
  if (last === 0) return glob === value;
  const head = parts[0] as string;
  const tail = parts[last] as string;
  const end = value.length - tail.length;
  if (end < head.length || !value.startsWith(head) || !value.endsWith(tail)) return false;
  let at = head.length;
  for (let i = 1; i < last; i++) {
    const part = parts[i] as string;
    if (part === '') continue;
    const found = value.indexOf(part, at);
    if (found < 0 || found + part.length > end) return false;
    at = found + part.length;
  }
  return true;
}

const PIECES_KEPT = 4096;
const pieces = new Map<string, string[] | undefined>();

/** A glob's pieces between stars; undefined for one with `?`, which the general matcher takes. */
function piecesOf(glob: string): string[] | undefined {
  let parts = pieces.get(glob);
  if (parts === undefined && !pieces.has(glob)) {
    parts = glob.includes('?') ? undefined : glob.split('*');
    if (pieces.size >= PIECES_KEPT) pieces.clear();
    pieces.set(glob, parts);
  }
  return parts;
}

/**
 * A glob with `?` (role ARN globs may have one): the greedy two-pointer wildcard algorithm. When
 * a literal does not match it returns to the most recent `*` only, letting that `*` swallow one
 * more character. Earlier stars never need revisiting (whatever they could have swallowed, the
 * latest star can swallow too), so the restart point only moves forward through the value and
 * each restart re-reads at most the glob: O(glob length × value length) in the worst case — 600 ×
 * 600 steps for the longest role ARN glob the schema admits — whatever the number of stars.
 * Cedar's `like` costs the same, which is why what a policy's globs may cost a hop in all is
 * bounded at admission (`globWork`).
 */
function withQuestionMarks(glob: string, value: string): boolean {
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

/**
 * What a glob may cost Cedar's `like` beyond reading the value once: the characters after its
 * first `*` other than stars. Cedar re-reads them from each place in the value where the latest
 * star could stop, so a value of n characters costs at most n times this. A glob that ends in its
 * only star (`arn:aws:s3:::bucket/*`), or has none, costs nothing more.
 */
export function globWork(glob: string): number {
  let work = 0;
  for (let i = glob.indexOf('*') + 1; i > 0 && i < glob.length; i++) if (glob.charCodeAt(i) !== STAR) work++;
  return work;
}
