// A JWT's payload, read without verification (the server verifies).

/** The claims the SDK reads from a token. */
export interface TokenClaims {
  /** The user id. */
  sub?: string;
  /** Expiry, in seconds since the epoch. */
  exp?: number;
  /** Issued at, in seconds since the epoch. */
  iat?: number;
  /** The display name, when the issuer sets one. */
  name?: string;
}

/**
 * Decodes a JWT's payload (the middle, base64url JSON part) without checking
 * its signature. Returns null for anything that is not a JWT; claims of the
 * wrong type are left out.
 */
export function decodeToken(token: string): TokenClaims | null {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  let payload: unknown;
  try {
    payload = JSON.parse(base64UrlDecode(parts[1]));
  } catch {
    return null;
  }
  if (typeof payload !== 'object' || payload === null) return null;
  const p = payload as Record<string, unknown>;
  const claims: TokenClaims = {};
  if (typeof p.sub === 'string') claims.sub = p.sub;
  if (typeof p.exp === 'number') claims.exp = p.exp;
  if (typeof p.iat === 'number') claims.iat = p.iat;
  if (typeof p.name === 'string') claims.name = p.name;
  return claims;
}

/** base64url (padding optional) to UTF-8 text. */
function base64UrlDecode(s: string): string {
  const b64 = s.replace(/-/g, '+').replace(/_/g, '/');
  const binary = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
}
