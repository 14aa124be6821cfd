import { describe, expect, it } from 'vitest';
import { lineAndColumn, validateCedar } from '../../../src/policy/cedar-validate.js';

describe('validateCedar', () => {
  it('accepts policies that use the chainwarden schema', () => {
    expect(validateCedar('forbid (principal, action, resource) when { context.depth > 5 && context.dataClassesTouched.contains("pii") };')).toEqual([]);
  });

  it('points at the line and column of a syntax error', () => {
    const [d] = validateCedar('permit (principal, action, resource);\nforbid (principal, action, resource) when { context.depth > };');
    // Column 61 is the closing brace where an expression was expected.
    expect(d).toMatchObject({ line: 2, column: 61 });
    expect(d?.message).toMatch(/unexpected token/);
  });

  it('reports attributes the schema does not have, with a hint', () => {
    const [d] = validateCedar('forbid (principal, action, resource)\n  when { context.deph > 5 };');
    expect(d).toMatchObject({ line: 2, column: 10 });
    expect(d?.message).toMatch(/deph.*did you mean `depth`\?/);
  });

  it('reports type errors', () => {
    const [d] = validateCedar('forbid (principal, action, resource) when { context.depth > "five" };');
    expect(d?.message).toMatch(/expected Long but saw String/);
  });

  it('counts lines and columns from 1', () => {
    expect(lineAndColumn('ab\ncd', 0)).toEqual({ line: 1, column: 1 });
    expect(lineAndColumn('ab\ncd', 4)).toEqual({ line: 2, column: 2 });
  });
});
