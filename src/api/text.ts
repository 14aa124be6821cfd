/**
 * Agent-supplied text (intents, resources, attributes, rule messages quoting them) reaches
 * terminals through `kubectl describe`, `trace` and logs. Control characters and bidi overrides
 * there could forge or hide output, so they are shown as visible escapes.
 */
// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

export function printable(text: string): string {
  return text.replace(UNSAFE, (c) => {
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}
