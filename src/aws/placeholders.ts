import { createHmac } from 'node:crypto';
import type { AgentTask } from '../api/schema.js';

/** Keys an SDK signs with under Gateway delivery: worthless at AWS, they only select the credential. */
export interface PlaceholderKeys {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken: string;
}

const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

function base32(bytes: Buffer, length: number): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5 && out.length < length) {
      out += BASE32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  return out;
}

/**
 * Placeholder keys, derived (HMAC) from the operator's hop key, the task's uid and the
 * credential's name: every replica derives the same keys, nothing is stored, and a key id names
 * exactly one credential of one task. They look like STS keys, so SDKs accept them, and AWS
 * refuses them: the id starts `ASIACW` and no session of that id exists.
 */
export class Placeholders {
  constructor(private readonly key: Buffer) {}

  private mac(label: string, task: AgentTask, credential: string): Buffer {
    return createHmac('sha256', this.key).update(`aws-placeholder\n${label}\n${task.metadata.uid ?? ''}\n${credential}`).digest();
  }

  of(task: AgentTask, credential: string): PlaceholderKeys {
    return {
      accessKeyId: `ASIACW${base32(this.mac('id', task, credential), 14)}`,
      secretAccessKey: this.mac('secret', task, credential).toString('base64url').slice(0, 40),
      sessionToken: `chainwarden-placeholder-${this.mac('token', task, credential).toString('base64url').slice(0, 32)}`,
    };
  }

  /** The name of the task's credential whose placeholder key id this is, if any. */
  credentialOf(task: AgentTask, accessKeyId: string): string | undefined {
    return (task.spec.credentials ?? []).find((c) => this.of(task, c.name).accessKeyId === accessKeyId)?.name;
  }
}
