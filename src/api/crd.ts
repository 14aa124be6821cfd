import type { TSchema } from '@sinclair/typebox';
import type { V1CustomResourceDefinition } from '@kubernetes/client-node';
import { stringify } from 'yaml';
import { GROUP, KINDS, VERSION, type KindDefinition } from './schema.js';

type JsonSchema = Record<string, unknown>;

/**
 * Turns a TypeBox schema into the structural OpenAPI dialect the API server accepts: unions
 * of string literals become enums, string-keyed records become `additionalProperties`, and
 * TypeBox's own markers are dropped.
 */
export function toStructural(schema: TSchema | JsonSchema): JsonSchema {
  const plain = JSON.parse(JSON.stringify(schema)) as JsonSchema;
  return convert(plain);
}

function convert(node: JsonSchema): JsonSchema {
  const out: JsonSchema = {};
  const anyOf = node.anyOf as JsonSchema[] | undefined;
  if (anyOf && anyOf.every((s) => typeof s.const === 'string')) {
    out.type = 'string';
    out.enum = anyOf.map((s) => s.const);
  }
  for (const [key, value] of Object.entries(node)) {
    if (key === 'anyOf' && out.enum) continue;
    if (key === 'properties') {
      out.properties = Object.fromEntries(Object.entries(value as Record<string, JsonSchema>).map(([k, v]) => [k, convert(v)]));
    } else if (key === 'patternProperties') {
      const [only] = Object.values(value as Record<string, JsonSchema>);
      out.additionalProperties = convert(only ?? {});
    } else if (key === 'items') {
      out.items = convert(value as JsonSchema);
    } else {
      out[key] = value;
    }
  }
  return out;
}

function openApiSchema(def: KindDefinition): JsonSchema {
  const properties: JsonSchema = {
    apiVersion: { type: 'string', description: `${GROUP}/${VERSION}` },
    kind: { type: 'string', description: def.kind },
    metadata: { type: 'object' },
    spec: toStructural(def.spec),
  };
  if (def.status) properties.status = toStructural(def.status);
  return { type: 'object', description: def.description, required: ['spec'], properties };
}

export function customResourceDefinition(def: KindDefinition): V1CustomResourceDefinition {
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: `${def.plural}.${GROUP}`, labels: { 'app.kubernetes.io/part-of': 'chainwarden' } },
    spec: {
      group: GROUP,
      scope: 'Namespaced',
      names: {
        kind: def.kind,
        listKind: `${def.kind}List`,
        plural: def.plural,
        singular: def.singular,
        shortNames: def.shortNames,
        categories: ['chainwarden'],
      },
      versions: [
        {
          name: VERSION,
          served: true,
          storage: true,
          subresources: def.status ? { status: {} } : undefined,
          additionalPrinterColumns: def.printerColumns,
          schema: { openAPIV3Schema: openApiSchema(def) },
        },
      ],
    },
  };
}

/** File name and YAML text of each CRD, as kept in `crds/` and in the Helm chart. */
export function renderCrdFiles(): { file: string; yaml: string }[] {
  return KINDS.map((def) => {
    const crd = JSON.parse(JSON.stringify(customResourceDefinition(def))) as object;
    return {
      file: `${GROUP}_${def.plural}.yaml`,
      yaml: `# Rendered from src/api/schema.ts by \`chainwarden crds --write crds\`; edit the schema, not this file.\n${stringify(crd, { lineWidth: 0 })}`,
    };
  });
}
