import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import readline from 'node:readline';
import { CreateRoleCommand, GetRolePolicyCommand, IAMClient } from '@aws-sdk/client-iam';
import type { V1EnvVar } from '@kubernetes/client-node';
import { localAws, type EnvironmentDescription } from '../../src/controlplane/environment.js';

export function iamClient(env: EnvironmentDescription): IAMClient {
  const aws = localAws(env);
  return new IAMClient({ region: aws.region, endpoint: aws.iamEndpoint, credentials: aws.credentials });
}

/** A role on the emulator, in its default account 123456789012. */
export async function createRole(env: EnvironmentDescription, name: string): Promise<string> {
  const res = await iamClient(env).send(
    new CreateRoleCommand({
      RoleName: name,
      AssumeRolePolicyDocument: JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: { AWS: 'arn:aws:iam::123456789012:root' }, Action: ['sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity'] }] }),
    }),
  );
  return res.Role?.Arn ?? '';
}

export async function revocationPolicy(env: EnvironmentDescription, roleName: string): Promise<{ Statement: { Sid: string; Effect: string; Condition: Record<string, Record<string, string | string[]>> }[] } | undefined> {
  try {
    const res = await iamClient(env).send(new GetRolePolicyCommand({ RoleName: roleName, PolicyName: 'chainwarden-revocations' }));
    return JSON.parse(decodeURIComponent(res.PolicyDocument ?? '{}')) as { Statement: { Sid: string; Effect: string; Condition: Record<string, Record<string, string | string[]>> }[] };
  } catch {
    return undefined;
  }
}

/** One request as the emulator recorded it. */
export interface RecordedRequest {
  method: string;
  url: string;
  headers: Record<string, string>;
  body?: string;
  body_encoded?: boolean;
}

/**
 * Everything the emulator received so far, one request a line. The launcher has its recorder
 * write one request at a time, so a line that does not parse is a fault worth failing on: a
 * skipped line could hide a request that did reach AWS.
 */
export async function recordedRequests(env: EnvironmentDescription): Promise<RecordedRequest[]> {
  const text = await readFile(env.stsRecording, 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as RecordedRequest);
}

/** Requests the emulator received with the given STS/IAM Action, as form parameters. */
export async function recordedCalls(env: EnvironmentDescription, action: string): Promise<URLSearchParams[]> {
  return (await recordedRequests(env))
    .map((e) => new URLSearchParams(e.body_encoded ? Buffer.from(e.body ?? '', 'base64').toString('utf8') : (e.body ?? '')))
    .filter((p) => p.get('Action') === action);
}

/** Numbered members of an AWS Query list: Tags.member.1.Key … */
export function queryList(params: URLSearchParams, prefix: string): string[] {
  const out: string[] = [];
  for (let i = 1; params.has(`${prefix}.member.${i}`) || params.has(`${prefix}.member.${i}.Key`); i++) {
    out.push(params.get(`${prefix}.member.${i}`) ?? `${params.get(`${prefix}.member.${i}.Key`)}=${params.get(`${prefix}.member.${i}.Value`)}`);
  }
  return out;
}

export interface AwsAgent {
  call(): Promise<{ ok: boolean; arn?: string; name?: string; message?: string }>;
  stop(): void;
  child: ChildProcess;
}

/**
 * A real agent process: Node with the AWS SDK's default provider chain, given only the
 * environment the mutating webhook injected into the pod. Two values are rewritten, because the
 * pod is not running: the sidecar's loopback port and the token file's path are this machine's.
 * STS's endpoint points at the emulator. Nothing else of this process's environment is passed.
 */
export function startAwsAgent(env: EnvironmentDescription, podEnv: V1EnvVar[], sidecarUrl: string, tokenFile: string): AwsAgent {
  const vars: Record<string, string> = {};
  for (const e of podEnv) if (e.value !== undefined) vars[e.name] = e.value;
  vars.AWS_CONTAINER_CREDENTIALS_FULL_URI = (vars.AWS_CONTAINER_CREDENTIALS_FULL_URI ?? '').replace('http://127.0.0.1:15080', sidecarUrl);
  vars.CHAINWARDEN_URL = sidecarUrl;
  vars.AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE = tokenFile;
  const child = spawn(process.execPath, [path.resolve(import.meta.dirname, '../fixtures/aws-agent.mjs')], {
    env: { PATH: process.env.PATH ?? '', HOME: '/nonexistent', AWS_REGION: 'us-east-1', AWS_ENDPOINT_URL_STS: env.stsEndpoint, AWS_EC2_METADATA_DISABLED: 'true', ...vars },
    stdio: ['pipe', 'pipe', 'inherit'],
    cwd: path.resolve(import.meta.dirname, '../..'),
  });
  const lines = readline.createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  return {
    child,
    async call() {
      child.stdin.write('go\n');
      const next = await lines.next();
      return JSON.parse(String(next.value)) as { ok: boolean; arn?: string; name?: string; message?: string };
    },
    stop: () => void child.kill('SIGTERM'),
  };
}
