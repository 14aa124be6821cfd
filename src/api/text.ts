/**
 * Text that came from an agent (a hop's resource, intent, attributes) or from a stream anyone
 * may have edited ends up in a terminal or in `kubectl describe`. There, a control character or
 * a bidi override is an instruction, not text: ESC starts a terminal escape sequence, CR and LF
 * start a forged line ("chain verified: …"), U+202E reverses what follows so `evil/gpj.exe`
 * reads `evil/exe.jpg`. `printable` makes every such character visible as an escape instead.
 */

/** Bidi embeddings, overrides and isolates, and the invisible direction marks. */
const BIDI = new Set([0x061c, 0x200e, 0x200f, 0x202a, 0x202b, 0x202c, 0x202d, 0x202e, 0x2066, 0x2067, 0x2068, 0x2069]);
const NAMED: Record<number, string> = { 0x09: '\\t', 0x0a: '\\n', 0x0d: '\\r', 0x5c: '\\\\' };

const hex = (code: number, width: number) => code.toString(16).padStart(width, '0');

function escape(code: number): string | undefined {
  const named = NAMED[code];
  if (named) return named;
  // C0, DEL and C1 controls.
  if (code < 0x20 || (code >= 0x7f && code <= 0x9f)) return `\\x${hex(code, 2)}`;
  // Bidi controls and the line and paragraph separators, which some terminals and viewers honour.
  if (BIDI.has(code) || code === 0x2028 || code === 0x2029) return `\\u${hex(code, 4)}`;
  return undefined;
}

/**
 * `text` with C0/C1 controls (ESC, CR, LF, …), DEL, bidi controls (U+202A–U+202E,
 * U+2066–U+2069, U+200E, U+200F, U+061C) and U+2028/U+2029 written as visible escapes (`\x1b`,
 * `\n`, `\u202e`). The backslash is doubled, so the escaping is one-to-one: a hostile string
 * cannot spell an escape that reads like another character. Other text is unchanged.
 */
export function printable(text: string): string {
  let out = '';
  let plain = 0;
  for (let i = 0; i < text.length; i++) {
    const replacement = escape(text.charCodeAt(i));
    if (replacement === undefined) continue;
    out += text.slice(plain, i) + replacement;
    plain = i + 1;
  }
  return plain === 0 ? text : out + text.slice(plain);
}

/** The most of one agent-written cell the table shows; `-o json` shows it whole. */
export const MAX_CELL = 80;

/** A column's text that reads as one cell as it is: visible ASCII words with single spaces between them (columns are three apart), no quote or backslash. */
const PLAIN_CELL = /^[\x21\x23-\x5b\x5d-\x7e]+(?: [\x21\x23-\x5b\x5d-\x7e]+)*$/;
/** An attribute's name or value that reads as one as it is: no space, and none of the separators `,` `=`, no quote or backslash. */
export const PLAIN_ATTRIBUTE = /^[\x21\x23-\x2b\x2d-\x3c\x3e-\x5b\x5d-\x7e]+$/;
/** Spaces and invisible characters other than the plain space: a column or a cell end could be faked with them. */
const UNSEEN = /[^\P{Z} ]|\p{C}|\p{Default_Ignorable_Code_Point}|[\u115f\u1160\u3164\uffa0]/gu;
const UNSEEN_CHAR = new RegExp(`^(?:${UNSEEN.source})$`, 'u');

/** Whether a character shows as nothing, or as a space other than the plain one: text could hide behind it. */
export const unseen = (char: string): boolean => UNSEEN_CHAR.test(char);

/** Every UTF-16 unit of a character as `\uXXXX`: both halves of one outside the basic plane, so two such characters never look alike. */
export const escapeUnits = (c: string) => Array.from({ length: c.length }, (_, i) => `\\u${c.charCodeAt(i).toString(16).padStart(4, '0')}`).join('');

/**
 * An agent-written cell as the table shows it: as it is when it plainly reads as one (`plain`),
 * else quoted as JSON (with spaces other than U+0020 and invisible characters escaped), so that
 * runs of spaces or separators inside it cannot fake further columns or attributes; cut at
 * `max` characters, saying how many more there are, so no cell pushes the real ones off the screen.
 */
export function agentCell(value: string, max = MAX_CELL, plain = PLAIN_CELL): string {
  const cut = value.length > max ? value.slice(0, max) : value;
  const more = value.length - cut.length;
  const shown = plain.test(cut) ? cut : JSON.stringify(cut).replace(UNSEEN, escapeUnits);
  return more > 0 ? `${shown}…(+${more})` : shown;
}
