// Wire types: what confab sends and takes (docs/protocol.md), field names as
// on the wire. Nothing here has behaviour.
/**
 * Reads one frame's JSON text: an object with a string `type` (and an object
 * `data`, `{}` when absent), else null. Field shapes are the server's contract.
 */
export function parseFrame(text) {
    if (typeof text !== 'string')
        return null;
    let value;
    try {
        value = JSON.parse(text);
    }
    catch {
        return null;
    }
    if (!isObject(value) || typeof value.type !== 'string')
        return null;
    const data = value.data === undefined ? {} : value.data;
    if (!isObject(data))
        return null;
    return { type: value.type, data };
}
/** A plain JSON object (not null, not an array). */
export function isObject(value) {
    return typeof value === 'object' && value !== null && !Array.isArray(value);
}
