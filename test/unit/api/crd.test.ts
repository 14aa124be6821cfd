import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Type } from '@sinclair/typebox';
import { describe, expect, it } from 'vitest';
import { renderCrdFiles, toStructural } from '../../../src/api/crd.js';
import { KINDS } from '../../../src/api/schema.js';

const root = path.resolve(import.meta.dirname, '../../..');

describe('CRDs', () => {
  it.each(renderCrdFiles())('crds/$file is what src/api/schema.ts renders (run `chainwarden crds --write crds`)', ({ file, yaml }) => {
    expect(readFileSync(path.join(root, 'crds', file), 'utf8')).toBe(yaml);
  });

  it('describes every field, so kubectl explain reads like documentation', () => {
    const undocumented: string[] = [];
    const walk = (node: Record<string, unknown>, at: string) => {
      for (const [name, child] of Object.entries((node.properties as Record<string, Record<string, unknown>>) ?? {})) {
        if (!child.description) undocumented.push(`${at}.${name}`);
        walk(child, `${at}.${name}`);
        if (child.items) walk(child.items as Record<string, unknown>, `${at}.${name}[]`);
      }
    };
    for (const def of KINDS) {
      walk(toStructural(def.spec), `${def.kind}.spec`);
      if (def.status) walk(toStructural(def.status), `${def.kind}.status`);
    }
    expect(undocumented).toEqual([]);
  });

  it('turns literal unions into enums and string maps into additionalProperties', () => {
    const schema = toStructural(
      Type.Object({
        effect: Type.Union([Type.Literal('Allow'), Type.Literal('Deny')], { description: 'e' }),
        tags: Type.Record(Type.String(), Type.String({ maxLength: 3 })),
      }),
    );
    expect(schema).toEqual({
      type: 'object',
      required: ['effect', 'tags'],
      properties: {
        effect: { type: 'string', enum: ['Allow', 'Deny'], description: 'e' },
        tags: { type: 'object', additionalProperties: { type: 'string', maxLength: 3 } },
      },
    });
  });
});
