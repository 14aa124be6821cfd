import { randomUUID } from 'node:crypto';
import { createSigner } from 'fast-jwt';
import { createLocalJWKSet, jwtVerify, type JWTPayload } from 'jose';
import { urlOf, type ServingUrl } from '../server/url.js';
import { ChainwardenError } from '../errors.js';
import type { Clock } from '../runtime/clock.js';
import type { KeyRing } from './keyring.js';

/** The longest a JWT-SVID lives; short, because a JWT-SVID cannot be revoked. */
export const MAX_SVID_SECONDS = 300;

/** A transaction token outlives the call it covers by little: its life is the hop's, not the task's. */
export const TXN_TOKEN_SECONDS = 120;
export const TXN_TOKEN_TYPE = 'txntoken+jwt';

export interface TxnTokenInput {
  spiffeId: string;
  trustDomain: string;
  /** The task's SourceIdentity marker. */
  txn: string;
  /** `<tool>:<action>`. */
  scope: string;
  tctx: { task: string; namespace: string; policy: string; hopId: string; parentHop: string | null; depth: number; dataClassesTouched: string[] };
}

/** SPIFFE JWT-SVIDs accept only asymmetric algorithms; ours are ES256. */
const ALGORITHMS = ['ES256'];

/**
 * The embedded SPIFFE JWT issuer: mints JWT-SVIDs with the key ring's active key and publishes
 * its keys and an OIDC discovery document, so that AWS IAM (as an OIDC provider) or any
 * verifier can trust it.
 */
export class SvidIssuer {
  /**
   * Signers for the active key, one per token type. Tokens are signed with node:crypto (through
   * fast-jwt), not WebCrypto: every forwarded hop signs a transaction token, and WebCrypto's
   * per-call overhead (promises, algorithm normalization, a thread-pool round trip) more than
   * doubled what a token cost.
   */
  private signers = { kid: '', byType: new Map<string, (claims: Record<string, unknown>) => string>() };

  constructor(
    private readonly ring: KeyRing,
    private readonly issuer: ServingUrl,
    private readonly clock: Clock,
  ) {}

  get issuerUrl(): string {
    return urlOf(this.issuer);
  }

  /** `claims` are added to the token (the AWS source-identity and tag claims for AssumeRoleWithWebIdentity); they never replace the registered ones. */
  mint(spiffeId: string, audience: string, seconds = MAX_SVID_SECONDS, claims: Record<string, unknown> = {}): { token: string; expiresAt: number } {
    if (!audience) throw new ChainwardenError('audience_required', 'a JWT-SVID needs an audience: pass ?audience=<who will verify it>', { field: 'audience' });
    const iat = Math.floor(this.clock.now() / 1000);
    const exp = iat + Math.min(seconds, MAX_SVID_SECONDS);
    const token = this.sign('JWT', { ...claims, iss: this.issuerUrl, sub: spiffeId, aud: audience, iat, exp, jti: randomUUID() });
    return { token, expiresAt: exp * 1000 };
  }

  /**
   * A transaction token (draft-ietf-oauth-transaction-tokens) for one forwarded hop: who acts
   * (`sub`, `req_wl`: the task's SPIFFE ID), in which transaction (`txn`: the task's source
   * identity, so the hop joins CloudTrail), for what (`scope`: tool:action) and with what chain
   * behind it (`tctx`). Short-lived, audience the trust domain, signed with the key in /keys.
   */
  mintTxnToken(input: TxnTokenInput): string {
    const iat = Math.floor(this.clock.now() / 1000);
    return this.sign(TXN_TOKEN_TYPE, { txn: input.txn, req_wl: input.spiffeId, scope: input.scope, tctx: input.tctx, iss: this.issuerUrl, sub: input.spiffeId, aud: input.trustDomain, iat, exp: iat + TXN_TOKEN_SECONDS, jti: randomUUID() });
  }

  /** A compact ES256 JWT of `claims` with header typ `typ`, signed with the ring's active key. */
  private sign(typ: string, claims: Record<string, unknown>): string {
    const { kid, pem } = this.ring.signingKey();
    if (this.signers.kid !== kid) this.signers = { kid, byType: new Map() };
    let sign = this.signers.byType.get(typ);
    if (!sign) {
      sign = createSigner({ key: pem, algorithm: 'ES256', kid, header: { alg: 'ES256', typ } });
      this.signers.byType.set(typ, sign);
    }
    return sign(claims);
  }

  /** Checks a JWT-SVID as the SPIFFE spec asks: allowed algorithm, our key, audience and expiry present and valid. */
  async verify(token: string, audience: string): Promise<JWTPayload & { sub: string }> {
    const { payload } = await jwtVerify(token, createLocalJWKSet(this.ring.jwks()), {
      algorithms: ALGORITHMS,
      audience,
      issuer: this.issuerUrl,
      requiredClaims: ['exp', 'aud', 'sub'],
      currentDate: new Date(this.clock.now()),
    });
    return payload as JWTPayload & { sub: string };
  }

  discovery(): Record<string, unknown> {
    return {
      issuer: this.issuerUrl,
      jwks_uri: `${this.issuerUrl}/keys`,
      response_types_supported: ['id_token'],
      subject_types_supported: ['public'],
      id_token_signing_alg_values_supported: ALGORITHMS,
    };
  }

  jwks(): { keys: unknown[] } {
    return this.ring.jwks();
  }
}
