import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import type { AgentApproval, AgentPolicy, AgentTask } from '../../src/api/schema.js';

const examples = path.resolve(import.meta.dirname, '../../examples');

function load<T extends { metadata: { namespace?: string } }>(file: string, namespace: string): T {
  const obj = parse(readFileSync(path.join(examples, file), 'utf8')) as T;
  obj.metadata.namespace = namespace;
  return obj;
}

/** The README's example manifests, moved into the test's namespace; each call returns a fresh copy. */
export const examplePolicy = (namespace: string) => load<AgentPolicy>('support-policy.yaml', namespace);
export const exampleTask = (namespace: string) => load<AgentTask>('support-task.yaml', namespace);
export const exampleApproval = (namespace: string) => load<AgentApproval>('support-approval.yaml', namespace);
