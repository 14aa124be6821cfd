import { describe, expect, it } from 'vitest';
import type { AgentTask } from '../../../src/api/schema.js';
import { Placeholders } from '../../../src/aws/placeholders.js';

const task = (uid: string) => ({ metadata: { uid } }) as AgentTask;

describe('placeholder keys', () => {
  it('are the same on every replica and version holding the hop key: an SDK signs with keys one replica handed out, and another checks them', () => {
    // Fixed keys: replicas of two versions run side by side during an upgrade, and an SDK keeps the keys it was handed.
    expect(new Placeholders(Buffer.alloc(32, 5)).of(task('6f1c0d8e-1111-4222-8333-944455566677'), 'default')).toEqual({
      accessKeyId: 'ASIACWD2MYOUE4ZHN63W',
      secretAccessKey: 'ZJVfHDAdzybrgtpvviTCXy5SIxFNy7uOmxGRGMJD',
      sessionToken: 'chainwarden-placeholder-zOKyc8tpeLAaiRCujxJ8yQX4-tOgKb7w',
    });
  });

  it('differ for another task, another credential or another key', () => {
    const keys = new Placeholders(Buffer.alloc(32, 5));
    const mine = keys.of(task('u1'), 'default');
    for (const other of [keys.of(task('u2'), 'default'), keys.of(task('u1'), 'second'), new Placeholders(Buffer.alloc(32, 6)).of(task('u1'), 'default')]) {
      expect(other.accessKeyId).not.toBe(mine.accessKeyId);
      expect(other.secretAccessKey).not.toBe(mine.secretAccessKey);
      expect(other.sessionToken).not.toBe(mine.sessionToken);
    }
  });
});
