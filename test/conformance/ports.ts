import { describe, expect, it } from 'vitest';
import type { IamPort } from '../../src/credentials/iam.js';
import type { StsPort } from '../../src/credentials/sts.js';

const request = (roleArn: string) => ({
  roleArn,
  roleSessionName: 'ns.task.default.0a1b2c3d',
  durationSeconds: 900,
  sourceIdentity: 'chainwarden-6f1c0d8e-1111-2222-3333-444455556666',
  tags: { 'chainwarden:task': 'task', team: 'support' },
  transitiveTagKeys: ['chainwarden:task'],
  policy: '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}',
});

/**
 * What every StsPort must do, run against the real AWS SDK on the emulator and against the
 * in-memory twin, so the twin the unit tests use cannot drift from the real thing.
 */
export function stsConformance(name: string, make: () => Promise<{ port: StsPort; roleArn: string }>) {
  describe(`StsPort conformance: ${name}`, () => {
    it('issues a session for the requested duration, for the role asked for', async () => {
      const { port, roleArn } = await make();
      const before = Date.now();
      const session = await port.assume(request(roleArn));
      expect(session.accessKeyId).toMatch(/^ASIA/);
      expect(session.secretAccessKey.length).toBeGreaterThan(10);
      expect(session.sessionToken.length).toBeGreaterThan(5);
      expect(session.expiration.getTime() - before).toBeGreaterThan(899_000);
      expect(session.expiration.getTime() - before).toBeLessThan(905_000);
      expect(session.assumedRoleArn).toMatch(/:assumed-role\/[^/]+\/ns\.task\.default\.0a1b2c3d$/);
    });

    it('issues a distinct session each time', async () => {
      const { port, roleArn } = await make();
      const [a, b] = [await port.assume(request(roleArn)), await port.assume(request(roleArn))];
      expect(a.accessKeyId).not.toBe(b.accessKeyId);
      expect(a.secretAccessKey).not.toBe(b.secretAccessKey);
    });
  });
}

export function iamConformance(name: string, make: () => Promise<{ port: IamPort; roleName: string }>) {
  describe(`IamPort conformance: ${name}`, () => {
    it('reads back the inline policy it wrote, and reads nothing once it is deleted', async () => {
      const { port, roleName } = await make();
      expect(await port.getRolePolicy(roleName, 'chainwarden-revocations')).toBeUndefined();
      const doc = JSON.stringify({ Version: '2012-10-17', Statement: [{ Sid: 'A', Effect: 'Deny', Action: '*', Resource: '*', Condition: { StringEquals: { 'aws:SourceIdentity': ['chainwarden-x'] } } }] });
      await port.putRolePolicy(roleName, 'chainwarden-revocations', doc);
      expect(JSON.parse((await port.getRolePolicy(roleName, 'chainwarden-revocations')) ?? '{}')).toEqual(JSON.parse(doc));
      await port.deleteRolePolicy(roleName, 'chainwarden-revocations');
      expect(await port.getRolePolicy(roleName, 'chainwarden-revocations')).toBeUndefined();
      // Deleting what is gone is not an error: cleanup treats "already gone" as done.
      await port.deleteRolePolicy(roleName, 'chainwarden-revocations');
    });
  });
}
