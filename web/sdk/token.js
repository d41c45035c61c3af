// A JWT's payload, read without verification (the server verifies).
/**
 * Decodes a JWT's payload (the middle, base64url JSON part) without checking
 * its signature. Returns null for anything that is not a JWT; claims of the
 * wrong type are left out.
 */
export function decodeToken(token) {
    const parts = token.split('.');
    if (parts.length !== 3)
        return null;
    let payload;
    try {
        payload = JSON.parse(base64UrlDecode(parts[1]));
    }
    catch {
        return null;
    }
    if (typeof payload !== 'object' || payload === null)
        return null;
    const p = payload;
    const claims = {};
    if (typeof p.sub === 'string')
        claims.sub = p.sub;
    if (typeof p.exp === 'number')
        claims.exp = p.exp;
    if (typeof p.iat === 'number')
        claims.iat = p.iat;
    if (typeof p.name === 'string')
        claims.name = p.name;
    return claims;
}
/** base64url (padding optional) to UTF-8 text. */
function base64UrlDecode(s) {
    const b64 = s.replace(/-/g, '+').replace(/_/g, '/');
    const binary = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
    const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
}
