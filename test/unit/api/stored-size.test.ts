import { describe, expect, it } from 'vitest';
import { storedJsonBytes } from '../../../src/api/task.js';

describe('storedJsonBytes', () => {
  it('counts what Go’s encoder writes, as the API server stores it: <, > and & in six bytes, the line separators and backspace and form feed in six', () => {
    // Go: "\u003ca\u0026b\u003e", "\u0008\u000c", "\u2028\u2029"; JSON.stringify writes these narrower.
    expect(storedJsonBytes('<a&b>')).toBe('"\\u003ca\\u0026b\\u003e"'.length);
    expect(storedJsonBytes('\b\f')).toBe('"\\u0008\\u000c"'.length);
    expect(storedJsonBytes('\u2028\u2029')).toBe('"\\u2028\\u2029"'.length);
    // Where both write the same: a newline as \n, a quote escaped, UTF-8 as it is.
    expect(storedJsonBytes({ resource: 'é\n"漢' })).toBe(Buffer.byteLength('{"resource":"é\\n\\"漢"}'));
  });
});
