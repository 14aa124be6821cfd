import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { deletedObjects, MAX_DELETED_OBJECTS } from '../../../src/aws/s3-delete.js';

const NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"';
const body = (objects: string, root = `<Delete ${NS}>`) => `<?xml version="1.0" encoding="UTF-8"?>${root}${objects}<Quiet>true</Quiet></Delete>`;

const refusal = (xml: string): string => {
  try {
    deletedObjects(xml);
  } catch (err) {
    const e = err as { code?: string; field?: string; message?: string };
    return `${e.code ?? ''} ${e.field ?? ''}: ${e.message ?? ''}`;
  }
  return 'not refused';
};

describe('the objects of an S3 DeleteObjects body, read as S3 reads them', () => {
  it.each([
    ['as the JavaScript SDK writes it, entities and all', body('<Object><Key>a&amp;b &lt;c&gt;.txt</Key></Object><Object><Key>d</Key><VersionId>v1</VersionId></Object>'), [{ key: 'a&b <c>.txt' }, { key: 'd', versionId: 'v1' }]],
    ['without the namespace or the declaration', '<Delete><Object><Key>k</Key></Object></Delete>', [{ key: 'k' }]],
    ['a key with character references', body('<Object><Key>&#x61;&#60;b&#x3E;c&#13;</Key></Object>'), [{ key: 'a<b>c\r' }]],
    ['a key whose line ending is normalised, and whose spaces are kept', body('<Object><Key>  two\r\nlines  </Key></Object>'), [{ key: '  two\nlines  ' }]],
    ['ETag, LastModifiedTime and Size beside the key', body('<Object><Key>k</Key><ETag>"e"</ETag><LastModifiedTime>2026-11-22T00:00:00Z</LastModifiedTime><Size>3</Size></Object>'), [{ key: 'k' }]],
    ['whitespace between elements', `<Delete ${NS}>\n  <Object>\n    <Key>k</Key>\n  </Object>\n</Delete>`, [{ key: 'k' }]],
  ])('%s', (_name, xml, objects) => {
    expect(deletedObjects(xml)).toEqual(objects);
  });

  it.each([
    ['a DOCTYPE that defines an entity (a key S3 would read otherwise, or a billion laughs)', `<?xml version="1.0"?><!DOCTYPE Delete [<!ENTITY k "secret">]><Delete><Object><Key>&k;</Key></Object></Delete>`, /has a DOCTYPE/],
    ['a comment, even inside a key (slow to parse, and where parsers disagree)', body('<Object><Key>a<!-- b -->c</Key></Object>'), /has a comment or CDATA section/],
    ['a CDATA section', body('<Object><Key><![CDATA[k]]></Key></Object>'), /has a comment or CDATA section/],
    ['an entity no one defined', body('<Object><Key>&k;</Key></Object>'), /not well-formed XML/],
    ['a processing instruction', body('<?evil x?><Object><Key>k</Key></Object>'), /processing instruction/],
    ['another element', body('<Object><Key>k</Key><Prefix>secrets/</Prefix></Object>'), /has a Prefix element at Delete\/Object\/Prefix/],
    ['an element in another namespace', body('<Object><s3:Key xmlns:s3="x">k</s3:Key></Object>'), /has the attribute xmlns:s3/],
    ['an element with a prefix', body('<Object><s3:Key>k</s3:Key></Object>'), /has a s3:Key element/],
    ['another root', '<Remove><Object><Key>k</Key></Object></Remove>', /has a Remove element/],
    ['an attribute', body('<Object><Key id="1">k</Key></Object>'), /has the attribute id: only Delete's xmlns/],
    ['another namespace on Delete', body('<Object><Key>k</Key></Object>', '<Delete xmlns="urn:other">'), /has the attribute xmlns: only Delete's xmlns/],
    ['XML 1.1 (which reads NEL and U+2028 as line ends, and takes &#1;)', '<?xml version="1.1"?><Delete><Object><Key>a\u2028b</Key></Object></Delete>', /declares XML version "1.1"/],
    ['another encoding than the UTF-8 the body was read in', '<?xml version="1.0" encoding="ISO-8859-1"?><Delete><Object><Key>k</Key></Object></Delete>', /declares the encoding "ISO-8859-1"/],
    ['UTF-7, in which +ADw- is markup', '<?xml version="1.0" encoding="UTF-7"?><Delete><Object><Key>a+ADw-/Key+AD4-</Key></Object></Delete>', /declares the encoding "UTF-7"/],
    ['Quiet given twice', body('<Object><Key>k</Key></Object><Quiet>false</Quiet>'), /names Quiet twice in one Delete/],
    ['an ETag given twice', body('<Object><Key>k</Key><ETag>a</ETag><ETag>b</ETag></Object>'), /names ETag twice in one Object/],
    ['an empty version', body('<Object><Key>k</Key><VersionId></VersionId></Object>'), /has an empty VersionId \(object 1\)/],
    ['text beside the objects', body('<Object><Key>k</Key></Object>stray'), /has text "stray" in Delete/],
    ['a key named twice in one Object (which would S3 delete?)', body('<Object><Key>public</Key><Key>secret</Key></Object>'), /names Key twice in one Object/],
    ['a version named twice', body('<Object><Key>k</Key><VersionId>1</VersionId><VersionId>2</VersionId></Object>'), /names VersionId twice/],
    ['an Object without a key', body('<Object><VersionId>1</VersionId></Object>'), /an Object without a Key \(object 1\)/],
    ['an empty key', body('<Object><Key></Key></Object>'), /has an empty Key \(object 1\)/],
    ['no objects', body(''), /names no objects/],
    ['more objects than S3 deletes in one call', body('<Object><Key>k</Key></Object>'.repeat(MAX_DELETED_OBJECTS + 1)), /more than the 1000 objects/],
    ['not XML', 'Action=ListAllMyBuckets', /not well-formed XML/],
    ['XML cut short', body('<Object><Key>k</Key></Object>').slice(0, -10), /not well-formed XML/],
    ['two roots', `${body('<Object><Key>k</Key></Object>')}<Delete><Object><Key>x</Key></Object></Delete>`, /not well-formed XML/],
  ])('refuses %s', (_name, xml, message) => {
    const answer = refusal(xml);
    expect(answer).toMatch(/^aws_request_invalid delete: the DeleteObjects body /);
    expect(answer).toMatch(message);
  });

  it('reads back every key and version however they are escaped or split (fuzzed)', () => {
    // Characters XML 1.0 can carry: S3 keys outside them cannot be sent in this body at all.
    const xmlChar = fc.oneof(
      fc.constantFrom('&', '<', '>', '"', "'", ']]>', '\r', '\n', '\t', ' ', '/', '?', '#', '%', 'é', '日', '\u{1F600}'),
      fc.string({ minLength: 1, maxLength: 1, unit: 'grapheme' }).filter((c) => /^[\t\n\r\u0020-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]+$/u.test(c)),
    );
    const text = fc.array(xmlChar, { minLength: 1, maxLength: 12 }).map((parts) => parts.join(''));
    // Each character written one of the ways XML allows: escaped, or a character reference, decimal or hex.
    const write = (value: string, ways: number[]) =>
      [...value]
        .map((ch, i) => {
          const way = ways[i % ways.length] ?? 0;
          const code = ch.codePointAt(0) ?? 0;
          if (way === 1 || ch === '\r') return `&#${code};`;
          if (way === 2) return `&#x${code.toString(16)};`;
          return ch === '&' ? '&amp;' : ch === '<' ? '&lt;' : ch === '>' ? '&gt;' : ch;
        })
        .join('');
    fc.assert(
      fc.property(fc.array(fc.record({ key: text, versionId: fc.option(text, { nil: undefined }) }), { minLength: 1, maxLength: 8 }), fc.array(fc.integer({ min: 0, max: 2 }), { minLength: 1, maxLength: 6 }), (objects, ways) => {
        const xml = body(objects.map((o) => `<Object><Key>${write(o.key, ways)}</Key>${o.versionId === undefined ? '' : `<VersionId>${write(o.versionId, ways)}</VersionId>`}</Object>`).join(''));
        expect(deletedObjects(xml)).toEqual(objects.map((o) => (o.versionId === undefined ? { key: o.key } : { key: o.key, versionId: o.versionId })));
      }),
      { numRuns: 1000 },
    );
  });
});
