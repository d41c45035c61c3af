// The seam between the connection logic and the two ways of reaching a node.
/** Joins the base URL (`""`: the page's own origin) and an absolute path. */
export function resolveUrl(base, path) {
    if (base)
        return base.replace(/\/+$/, '') + path;
    const location = globalThis.location;
    if (!location)
        throw new TypeError('url "" needs a browser page; give the server\'s URL');
    return new URL(path, location.href).href;
}
/** The WebSocket URL (ws: or wss:) of an http(s) base URL and path. */
export function webSocketUrl(base, path) {
    const url = new URL(resolveUrl(base, path));
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    return url.href;
}
