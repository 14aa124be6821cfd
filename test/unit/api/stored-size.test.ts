import { describe, expect, it } from 'vitest';
import { storedJsonBytes } from '../../../src/api/task.js';

describe('storedJsonBytes', () => {
  it('counts what Go’s encoder writes, as the API server stores it: <, > and & and the line separators in six bytes, backspace and form feed at most six', () => {
    // Go: "\u003ca\u0026b\u003e", "\u2028\u2029"; backspace and form feed as Go before 1.22 wrote them ("\u0008\u000c"), an upper bound. JSON.stringify writes all of these narrower.
    expect(storedJsonBytes('<a&b>')).toBe('"\\u003ca\\u0026b\\u003e"'.length);
    expect(storedJsonBytes('\b\f')).toBe('"\\u0008\\u000c"'.length);
    expect(storedJsonBytes('\u2028\u2029')).toBe('"\\u2028\\u2029"'.length);
    // Where both write the same: a newline as \n, a quote escaped, UTF-8 as it is.
    expect(storedJsonBytes({ resource: 'é\n"漢' })).toBe(Buffer.byteLength('{"resource":"é\\n\\"漢"}'));
  });
});
