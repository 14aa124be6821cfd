import { InMemoryIam } from '../../src/credentials/iam.js';
import { InMemorySts } from '../../src/credentials/sts.js';
import { iamConformance, stsConformance } from '../conformance/ports.js';

stsConformance('in-memory twin', () => Promise.resolve({ port: new InMemorySts(), roleArn: 'arn:aws:iam::123456789012:role/support-agent' }));
iamConformance('in-memory twin', () => Promise.resolve({ port: new InMemoryIam(), roleName: 'support-agent' }));
