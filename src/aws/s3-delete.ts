import { SaxesParser, type SaxesTagPlain } from 'saxes';
import { ChainwardenError } from '../errors.js';

/** One object an S3 DeleteObjects call deletes: its key, and its version when the call names one. */
export interface DeletedObject {
  key: string;
  versionId?: string;
}

/** What S3 takes in one DeleteObjects call. */
export const MAX_DELETED_OBJECTS = 1000;

const S3_NAMESPACE = 'http://s3.amazonaws.com/doc/2006-03-01/';
/** The fields, by their path from the root: each holds text and is given at most once; Key and VersionId are read, the others only allowed. */
const LEAVES = new Set(['Delete/Quiet', 'Delete/Object/Key', 'Delete/Object/VersionId', 'Delete/Object/ETag', 'Delete/Object/LastModifiedTime', 'Delete/Object/Size']);
/** Every element a DeleteObjects body may have. */
const ELEMENTS = new Set(['Delete', 'Delete/Object', ...LEAVES]);

const refuse = (message: string) => new ChainwardenError('aws_request_invalid', `the DeleteObjects body ${message}`, { field: 'delete' });

/**
 * The objects a DeleteObjects body names, read with a conforming XML parser (entities, character
 * references and line endings as S3's own parser reads them), so each key decided is the key S3
 * deletes. Anything beyond the documented shape is refused rather than guessed at: XML other than
 * 1.0 in UTF-8, a DOCTYPE, a comment or CDATA section, another element or attribute, text outside
 * the fields, a field given twice or empty, no objects or more than 1,000.
 */
export function deletedObjects(xml: string): DeletedObject[] {
  // SDKs write neither; XML parsers disagree most there, and a parser spends the longest on them.
  if (xml.includes('<!--') || xml.includes('<![CDATA[')) throw refuse('has a comment or CDATA section, which SDKs do not write: send the keys as text, escaped');
  const parser = new SaxesParser<{ xmlns: false }>({ xmlns: false });
  const path: string[] = [];
  const objects: DeletedObject[] = [];
  let object: Partial<DeletedObject> | undefined;
  let text = '';
  /** The fields each open element has had, so that none is given twice. */
  const seen: Set<string>[] = [];
  // Only XML 1.0 in UTF-8, as the body was read: another version reads line endings and
  // references otherwise, and another encoding would be other characters to S3.
  parser.on('xmldecl', (decl) => {
    if (decl.version !== '1.0') throw refuse(`declares XML version ${JSON.stringify((decl.version ?? '').slice(0, 16))}: send XML 1.0`);
    if (decl.encoding !== undefined && decl.encoding.toLowerCase() !== 'utf-8') throw refuse(`declares the encoding ${JSON.stringify(decl.encoding.slice(0, 32))}: send it in UTF-8`);
  });
  // Refused as each is read, so that a tag of thousands of attributes costs no more than one.
  parser.on('attribute', (attribute) => {
    const onRoot = path.length === 0;
    if (!(onRoot && attribute.name === 'xmlns' && attribute.value === S3_NAMESPACE)) throw refuse(`has the attribute ${attribute.name.slice(0, 64)}: only Delete's xmlns, S3's namespace, is taken`);
  });
  parser.on('doctype', () => {
    throw refuse('has a DOCTYPE, which S3 does not take');
  });
  parser.on('processinginstruction', (pi) => {
    throw refuse(`has a processing instruction (<?${pi.target.slice(0, 32)}…?>)`);
  });
  parser.on('opentag', (tag: SaxesTagPlain) => {
    const parent = seen.at(-1);
    path.push(tag.name);
    const at = path.join('/');
    if (!ELEMENTS.has(at)) throw refuse(`has a ${tag.name.slice(0, 64)} element at ${at.slice(0, 200)}, which DeleteObjects does not have`);
    if (LEAVES.has(at)) {
      if (parent?.has(tag.name)) throw refuse(`names ${tag.name} twice in one ${path.at(-2) ?? ''}`);
      parent?.add(tag.name);
    }
    seen.push(new Set());
    if (at === 'Delete/Object') object = {};
    text = '';
  });
  parser.on('text', (t) => {
    const at = path.join('/');
    if (LEAVES.has(at)) text += t;
    else if (!/^[ \t\r\n]*$/.test(t)) throw refuse(`has text ${JSON.stringify(t.trim().slice(0, 32))} in ${at || 'no element'}`);
  });
  parser.on('closetag', (tag: SaxesTagPlain) => {
    const at = path.join('/');
    path.pop();
    seen.pop();
    if (at === 'Delete/Object/Key' || at === 'Delete/Object/VersionId') {
      if (text === '') throw refuse(`has an empty ${tag.name} (object ${objects.length + 1})`);
      if (object) object[at === 'Delete/Object/Key' ? 'key' : 'versionId'] = text;
    } else if (at === 'Delete/Object') {
      if (!object?.key) throw refuse(`has an Object without a Key (object ${objects.length + 1})`);
      objects.push(object.versionId === undefined ? { key: object.key } : { key: object.key, versionId: object.versionId });
      if (objects.length > MAX_DELETED_OBJECTS) throw refuse(`names more than the ${MAX_DELETED_OBJECTS} objects S3 deletes in one call`);
      object = undefined;
    }
    text = '';
  });
  try {
    parser.write(xml).close();
  } catch (err) {
    if (err instanceof ChainwardenError) throw err;
    throw refuse(`is not well-formed XML: ${(err as Error).message.slice(0, 200)}`);
  }
  if (objects.length === 0) throw refuse('names no objects');
  return objects;
}
