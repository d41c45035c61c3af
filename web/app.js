// confab demo client: one connection per tab (docs/protocol.md), a WebSocket
// or, where a proxy refuses WebSockets, the HTTP transport (an event stream
// down, frame POSTs up); REST for the chat list, chat creation and for
// changes made while no connection is up.
// Plain ES module, no dependencies. User content only ever goes through
// textContent (Markdown included: it is built as DOM nodes, never as HTML).

const API = '/api/v1/chat';
const SESSION_KEY = 'confab.session';
const OPEN_KEY = 'confab.open'; // the open chat survives a reload too
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10_000;
const REQUEST_TIMEOUT_MS = 10_000; // also the longest wait for auth_success
const HEARTBEAT_MS = 20_000; // a ping unanswered for REQUEST_TIMEOUT_MS drops the connection
const TYPING_RESEND_MS = 2_500; // refresh `typing: true` while typing goes on
const TYPING_IDLE_MS = 3_000; // quiet this long: `typing: false`
const TYPER_TTL_MS = 6_500; // a remote typer expires without news (server typing_ttl + margin)
const WS_FAILURES_FOR_HTTP = 3; // sockets in a row that failed: move to the HTTP transport
const WS_STABLE_MS = 30_000; // a socket cut (1006) sooner than this after auth counts as failed
const WS_RETRY_MS = 60_000; // on the HTTP transport, a socket is tried again this often
const BATCH_BYTES = 32_768; // frames POSTed together, at most (half the server's body limit)
const BATCH_FRAMES = 32;
const POST_TRIES = 3; // a frame POST answered 429 or 502-504 is tried this often
const PRESENCE_LIVE_MAX = 200; // larger chats get no presence_changed...
const PRESENCE_POLL_MS = 30_000; // ...so their presence is asked again this often while shown
const PEOPLE_LISTED = 8; // the header names participants up to this many, else counts them
const HISTORY_WINDOW = 50; // log entries loaded per chat at first
const HISTORY_CAP = 500; // unread entries replayed at most
const GAP_WAIT_MS = 800; // a seq gap that does not fill by itself this long is fetched
const CHAT_PAGE = 200; // GET /chats page size (the most the server gives)
const MAX_CHAT_PAGES = 100;
const REACTIONS = ['👍', '❤️', '😂', '🎉', '😮', '😢', '🙏', '👀'];
const STREAM_STALE_MS = 3_000; // after a rejoin's replay, a stream the catch-up did not mention is gone
const CANCEL_GONE_MS = 3_000; // a cancel answered NOT_FOUND: the bubble goes unless the stream ends by itself
const MAX_CITATIONS = 50;

// ------------------------------------------------------------------ state

const state = {
  session: null, // {token, user_id, name}
  chats: new Map(), // id -> chat (see newChat)
  openId: null,
  conn: null, // the live connection (see connect)
  mode: 'websocket', // the transport the next connection uses: 'websocket' or 'http'
  wsFailures: 0, // sockets in a row that heard nothing, or were cut soon after auth
  probe: null, // on the HTTP transport: a socket being tried on the side
  probeTimer: null,
  connected: false, // authenticated connection
  nodeId: null,
  attempt: 0,
  reconnectTimer: null,
  heartbeat: null,
  renewTimer: null,
  replies: new Map(), // frame id -> {resolve, reject, timer}
  streams: new Map(), // stream_id -> a pending answer (see streamFor)
  typing: { convId: null, sentAt: 0, idle: null },
  chatsLoaded: false,
  // Transient UI of the open chat, kept here because every frame re-renders the list.
  ui: { actionsFor: null, pickerFor: null, confirmDelete: null, flash: null, flashTimer: null },
  editing: null, // {chatId, id, input, busy}: the message being edited inline
  renaming: null, // chat id whose title is being edited
  renameBusy: false,
};

const $ = (id) => document.getElementById(id);

/** A random id; crypto.randomUUID needs a secure context, this does not. */
function uid() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** Builds an element: `attrs` go to properties (`text`, `className`, `on*`)
 *  or, for `data-*`/aria/others, to attributes; children are nodes or text. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') node.textContent = v;
    else if (k === 'className') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function toast(text) {
  const t = $('toast');
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.hidden = true), 4000);
}

const me = () => state.session?.user_id;

// ------------------------------------------------------------------ Markdown
//
// A small, safe subset: paragraphs and line breaks, **bold**, *italic* and
// _italic_, `inline code`, ``` fenced code blocks, [text](url) and bare
// URLs. Only http, https and mailto links are made; everything else,
// raw HTML included, stays text. The output is DOM nodes built with
// createElement and text nodes, never markup.

const MAX_NESTING = 6;
const LINK_SCAN = 1000; // longest link text or URL looked at
const ESCAPABLE = /[!-/:-@[-`{-~]/; // ASCII punctuation
const AUTOLINK = /(?:https?:\/\/|mailto:)[^\s<>]+/iy;
const WORD = /[\p{L}\p{N}]/u;

/** A link target, or null when it is not an http, https or mailto URL. */
function safeHref(raw) {
  const s = raw.trim();
  if (!/^(?:https?:\/\/|mailto:)/i.test(s) || /[\s\u0000-\u001f\u007f]/.test(s)) return null;
  try {
    const u = new URL(s);
    return ['http:', 'https:', 'mailto:'].includes(u.protocol) ? u.href : null;
  } catch {
    return null;
  }
}

function link(href, children) {
  return el('a', { href, target: '_blank', rel: 'noopener noreferrer' }, ...children);
}

/** Block level: fenced code blocks, and paragraphs split by blank lines. */
function renderMarkdown(text) {
  const out = [];
  const lines = String(text).replace(/\r\n?/g, '\n').split('\n');
  let para = [];
  const flush = () => {
    if (para.length) out.push(el('p', {}, ...inline(para.join('\n'), 0, true)));
    para = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const fence = /^ {0,3}(`{3,}|~{3,})[ \t]*([^`\s]*)[^`]*$/.exec(lines[i]);
    if (fence) {
      flush();
      const marker = fence[1];
      const body = [];
      let j = i + 1;
      while (j < lines.length && !closesFence(lines[j], marker)) body.push(lines[j++]);
      i = j; // the closing fence (or the end of an unclosed block, as while streaming)
      const code = el('code', { text: body.join('\n') });
      if (fence[2]) code.dataset.lang = fence[2];
      out.push(el('pre', {}, code));
    } else if (!lines[i].trim()) {
      flush();
    } else {
      para.push(lines[i]);
    }
  }
  flush();
  return out;
}

function closesFence(line, marker) {
  const t = line.trim();
  return t.length >= marker.length && [...t].every((c) => c === marker[0]) && line.search(/\S/) <= 3;
}

const runLength = (s, i, c) => {
  let n = 0;
  while (s[i + n] === c) n += 1;
  return n;
};

/** Where a code span opened by `n` backticks closes (a run of exactly n), or -1. */
function codeClose(s, from, n) {
  for (let k = from; k < s.length; ) {
    if (s[k] !== '`') {
      k += 1;
      continue;
    }
    const m = runLength(s, k, '`');
    if (m === n) return k;
    k += m;
  }
  return -1;
}

/** Where `need` (1 or 2) closing `c` delimiters start, searching from `from`, or -1. */
function emphasisClose(s, from, c, need) {
  for (let k = from; k < s.length; ) {
    const ch = s[k];
    if (ch === '\\') {
      k += 2;
    } else if (ch === '`') {
      const n = runLength(s, k, '`');
      const close = codeClose(s, k + n, n);
      k = close >= 0 ? close + n : k + n;
    } else if (ch !== c) {
      k += 1;
    } else {
      const n = runLength(s, k, c);
      const before = s[k - 1];
      const after = s[k + n];
      const closes = !/\s/.test(before) && (c !== '_' || after === undefined || !WORD.test(after));
      if (closes && need === 2 && n >= 2) return k + n - 2;
      if (closes && need === 1 && n % 2 === 1) return k + n - 1; // *a **b*** closes with the last
      k += n;
    }
  }
  return -1;
}

/** Splits text on newlines into text nodes and <br>s. */
function pushText(out, text) {
  text.split('\n').forEach((part, i) => {
    if (i > 0) out.push(el('br'));
    if (part) out.push(document.createTextNode(part));
  });
}

/** Inline level: code spans, emphasis, links and bare URLs; the rest is text. */
function inline(src, depth, links) {
  const out = [];
  let buf = '';
  const flushText = () => {
    if (buf) pushText(out, buf);
    buf = '';
  };
  const failed = {}; // delimiter -> the earliest start a closer search failed from
  const search = (key, from, fn) => {
    if (failed[key] !== undefined && from >= failed[key]) return -1;
    const r = fn();
    if (r < 0) failed[key] = Math.min(from, failed[key] ?? from);
    return r;
  };
  let i = 0;
  while (i < src.length) {
    const c = src[i];
    if (c === '\\' && i + 1 < src.length && ESCAPABLE.test(src[i + 1])) {
      buf += src[i + 1];
      i += 2;
    } else if (c === '`') {
      const n = runLength(src, i, '`');
      const close = search(`\`${n}`, i + n, () => codeClose(src, i + n, n));
      if (close < 0) {
        buf += src.slice(i, i + n);
        i += n;
        continue;
      }
      let code = src.slice(i + n, close).replace(/\n/g, ' ');
      if (code.length > 2 && code.startsWith(' ') && code.endsWith(' ') && code.trim()) code = code.slice(1, -1);
      flushText();
      out.push(el('code', { text: code }));
      i = close + n;
    } else if ((c === '*' || c === '_') && depth < MAX_NESTING) {
      const n = runLength(src, i, c);
      const need = n >= 2 ? 2 : 1;
      const next = src[i + need];
      const opens = next !== undefined && !/\s/.test(next) && (c !== '_' || i === 0 || !WORD.test(src[i - 1]));
      // The closer is a later run: never the rest of the opening one.
      const from = Math.max(i + need + 1, i + n + 1);
      const close = opens ? search(`${c}${need}`, from, () => emphasisClose(src, from, c, need)) : -1;
      if (close < 0) {
        buf += src.slice(i, i + n);
        i += n;
        continue;
      }
      flushText();
      out.push(el(need === 2 ? 'strong' : 'em', {}, ...inline(src.slice(i + need, close), depth + 1, links)));
      i = close + need;
    } else if (c === '[' && links && depth < MAX_NESTING) {
      const l = bracketLink(src, i);
      if (!l) {
        buf += c;
        i += 1;
        continue;
      }
      flushText();
      const label = inline(l.label, depth + 1, false);
      out.push(link(l.href, label.length ? label : [l.href]));
      i = l.end;
    } else if (links && /[hHmM]/.test(c) && (i === 0 || !WORD.test(src[i - 1]))) {
      AUTOLINK.lastIndex = i;
      const m = AUTOLINK.exec(src);
      let url = m ? m[0].slice(0, LINK_SCAN * 2) : '';
      while (url && (/[.,;:!?'"*_~]$/.test(url) || (url.endsWith(')') && count(url, '(') < count(url, ')')))) {
        url = url.slice(0, -1);
      }
      const href = url && safeHref(url);
      if (!href) {
        buf += c;
        i += 1;
        continue;
      }
      flushText();
      out.push(link(href, [url]));
      i += url.length;
    } else {
      buf += c;
      i += 1;
    }
  }
  flushText();
  return out;
}

const count = (s, c) => s.split(c).length - 1;

/** `[label](url)` at `i`: its label, safe href and end, or null. */
function bracketLink(s, i) {
  let depth = 0;
  let close = -1;
  for (let k = i; k < s.length && k - i < LINK_SCAN; k++) {
    if (s[k] === '\\') k += 1;
    else if (s[k] === '[') depth += 1;
    else if (s[k] === ']' && --depth === 0) {
      close = k;
      break;
    }
  }
  if (close < 0 || s[close + 1] !== '(') return null;
  let parens = 0;
  let end = -1;
  for (let k = close + 1; k < s.length && k - close < LINK_SCAN; k++) {
    if (s[k] === '(') parens += 1;
    else if (s[k] === ')' && --parens === 0) {
      end = k;
      break;
    }
  }
  if (end < 0) return null;
  let target = s.slice(close + 2, end).trim().split(/\s+/)[0] || '';
  if (target.startsWith('<') && target.endsWith('>')) target = target.slice(1, -1);
  const href = safeHref(target);
  return href ? { label: s.slice(i + 1, close), href, end: end + 1 } : null;
}

const mdCache = new Map(); // content -> rendered nodes, cloned for each use

/** A message body as Markdown nodes (cached by content: the list re-renders often). */
function markdown(text) {
  let nodes = mdCache.get(text);
  if (!nodes) {
    nodes = renderMarkdown(text);
    if (mdCache.size >= 1000) mdCache.clear();
    mdCache.set(text, nodes);
  }
  return nodes.map((n) => n.cloneNode(true));
}

/** One line of plain text, for quotes and previews (Markdown marks dropped). */
function snippet(text, max = 90) {
  const line = String(text)
    .replace(/^ {0,3}(`{3,}|~{3,}).*$/gm, '')
    .replace(/\[([^\]\n]*)\]\((?:[^()\s]|\([^()\s]*\))*\)/g, '$1')
    .replace(/\*\*|__|`/g, '')
    .replace(/\s+/g, ' ')
    .trim();
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
}

// ------------------------------------------------------------------ session

const loadSession = () => JSON.parse(sessionStorage.getItem(SESSION_KEY) || 'null');

async function fetchDevToken(name) {
  const r = await fetch('/api/v1/dev/token', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name }),
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.message || `sign-in failed (${r.status})`);
  return body; // {token, user_id, name}
}

async function signIn(event) {
  event.preventDefault();
  const name = $('signin-name').value.trim();
  $('signin-error').textContent = '';
  if (!name) return;
  try {
    state.session = await fetchDevToken(name);
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(state.session));
    start();
  } catch (e) {
    $('signin-error').textContent = e.message;
  }
}

function signOut() {
  sessionStorage.removeItem(SESSION_KEY);
  sessionStorage.removeItem(OPEN_KEY);
  location.reload(); // drops the connection, timers and every chat at once
}

/** A fresh dev token for the same name, sent on the connection before the old one expires. */
async function renewToken() {
  try {
    state.session = await fetchDevToken(state.session.name);
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(state.session));
    if (state.connected) await request('auth', null, { token: state.session.token });
  } catch (e) {
    console.warn('token renewal failed, retrying in 30 s', e);
    clearTimeout(state.renewTimer);
    state.renewTimer = setTimeout(renewToken, 30_000);
  }
}

function scheduleRenewal(expiresAt) {
  const left = Date.parse(expiresAt) - Date.now();
  // Renew at 80% of the remaining life, at least 10 s from now.
  const due = Math.max(10_000, Math.min(left * 0.8, left - 60_000));
  clearTimeout(state.renewTimer);
  state.renewTimer = setTimeout(renewToken, Math.min(due, 2 ** 31 - 1));
}

// ------------------------------------------------------------------ REST

/** A REST call: resolves with {data, headers}. */
async function apiRaw(method, path, body, retried = false) {
  const r = await fetch(API + path, {
    method,
    headers: {
      authorization: `Bearer ${state.session.token}`,
      ...(body ? { 'content-type': 'application/json' } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  if (r.status === 401 && !retried) {
    await renewToken();
    return apiRaw(method, path, body, true);
  }
  if (r.status === 204) return { data: null, headers: r.headers };
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw Object.assign(new Error(data.message || `HTTP ${r.status}`), { code: data.code });
  return { data, headers: r.headers };
}

const api = (method, path, body) => apiRaw(method, path, body).then((r) => r.data);

// ------------------------------------------------------------------ connection
//
// One live connection per tab, over one of two transports; the rest of the
// page sends through `send(frame)` and receives through `onFrame(frame)`:
//  - websocket: `GET /ws`, frames both ways, `auth` first;
//  - http, for proxies that refuse WebSocket upgrades: the server's frames
//    arrive as server-sent events (`GET /events`, opened with a single-use
//    ticket), the client's are POSTed to `/connections/{connection_id}/frames`,
//    one request at a time so that they keep their order.
// A tab starts on the socket. After WS_FAILURES_FOR_HTTP sockets in a row on
// which nothing arrived it moves to HTTP, and from there tries a socket on the
// side every WS_RETRY_MS, moving back as soon as one authenticates.
//
// A connection is {kind, authed, heard, send(frame), close()}; whatever ends
// it calls `closed(conn, code)` (a WebSocket close code).

function wsUrl() {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${API}/ws`;
}

function connect() {
  clearTimeout(state.reconnectTimer);
  const conn = state.mode === 'http' ? openHttp() : openSocket();
  state.conn = conn;
  // A connection that never authenticates (a hung node, a lost handshake, a
  // proxy holding frames back) is dropped.
  setTimeout(() => conn === state.conn && !conn.authed && drop(conn), REQUEST_TIMEOUT_MS);
}

/** Sends one client frame on the live connection, whatever its transport. */
function send(frame) {
  state.conn.send(frame);
}

/** Every server frame of every connection passes here; the live one's go on to onFrame. */
function receive(conn, frame) {
  conn.heard = true;
  if (conn === state.probe) {
    if (frame.type === 'auth_success') adoptProbe(conn, frame.data);
    return;
  }
  if (conn !== state.conn) return;
  if (frame.type === 'auth_success' && !frame.data?.ref) {
    conn.authed = true;
    conn.authedAt = Date.now();
    // A socket that stays up a while proves sockets get through.
    if (conn.kind === 'websocket') {
      setTimeout(() => state.conn === conn && (state.wsFailures = 0), WS_STABLE_MS);
    }
  }
  onFrame(frame);
}

/** Treats a connection as ended now, without waiting for its transport to say so. */
function drop(conn, code = 1006) {
  conn.close();
  closed(conn, code);
}

function closed(conn, code) {
  if (conn === state.probe) {
    state.probe = null;
    return;
  }
  if (conn !== state.conn) return;
  state.conn = null;
  if (conn.kind === 'websocket') {
    // A proxy that refuses upgrades: nothing heard. One that cuts them: a
    // socket that dies without a close frame soon after it authenticated.
    const cut = code === 1006 && Date.now() - (conn.authedAt ?? 0) < WS_STABLE_MS;
    if (!conn.heard || cut) state.wsFailures += 1;
  }
  resetSession();
  if (state.mode === 'websocket' && state.wsFailures >= WS_FAILURES_FOR_HTTP) {
    // Sockets do not get through (a proxy refusing upgrades): HTTP, at once.
    state.mode = 'http';
    state.attempt = 0;
    state.probeTimer = setInterval(probe, WS_RETRY_MS);
    setStatus('connecting');
    connect();
  } else if (code === 4001 || code === 4003) {
    // Refused or expired token: get a fresh one before trying again.
    renewToken().finally(scheduleReconnect);
  } else {
    scheduleReconnect();
  }
}

/** The connection is gone: requests waiting for an answer fail, no chat is
 *  joined any more, and what only a connection tells (typing, streams,
 *  presence) is unknown until the next one. */
function resetSession() {
  state.connected = false;
  for (const { reject, timer } of state.replies.values()) {
    clearTimeout(timer);
    reject(Object.assign(new Error('connection lost'), { code: 'DISCONNECTED' }));
  }
  state.replies.clear();
  clearInterval(state.heartbeat);
  for (const chat of state.chats.values()) {
    chat.joined = false;
    chat.typers.clear();
    chat.present = null;
  }
  state.streams.clear(); // stored answers come back through the replay, pending ones through the catch-up
  state.typing.convId = null;
  renderChatList();
  renderChat();
}

function scheduleReconnect() {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.attempt);
  const delay = Math.min(BACKOFF_MAX_MS, base * (1 + Math.random() * 0.5));
  state.attempt += 1;
  setStatus(state.attempt > 2 ? 'offline' : 'reconnecting');
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = setTimeout(connect, delay);
}

async function onAuthenticated(data) {
  const conn = state.conn;
  state.connected = true;
  state.attempt = 0;
  state.nodeId = data.node_id || '?';
  setStatus('connected');
  scheduleRenewal(data.expires_at);
  state.heartbeat = setInterval(() => {
    request('ping', {}).catch((e) => e.code === 'TIMEOUT' && conn === state.conn && drop(conn));
  }, HEARTBEAT_MS);
  await refreshChats();
  await Promise.all([...state.chats.values()].map(join));
  markRead(state.chats.get(state.openId)); // a mark set while offline
  renderChat();
}

/** Sends a frame with an id; resolves with the frame answering it (`ref`). */
function request(type, data, extra = {}) {
  return new Promise((resolve, reject) => {
    if (!state.connected) {
      reject(Object.assign(new Error('not connected'), { code: 'DISCONNECTED' }));
      return;
    }
    const id = uid();
    const timer = setTimeout(() => {
      state.replies.delete(id);
      reject(Object.assign(new Error(`${type}: no answer`), { code: 'TIMEOUT' }));
    }, REQUEST_TIMEOUT_MS);
    state.replies.set(id, { resolve, reject, timer });
    send({ type, id, ...(data ? { data } : {}), ...extra });
  });
}

/** Sends a frame that needs no answer (typing, mark_read); dropped while offline. */
function fire(type, data) {
  if (state.connected) send({ type, data });
}

// ------------------------------------------------------------------ the WebSocket transport

function openSocket() {
  const ws = new WebSocket(wsUrl());
  const conn = {
    kind: 'websocket',
    authed: false,
    heard: false,
    send: (frame) => ws.send(JSON.stringify(frame)),
    close: () => ws.close(),
  };
  ws.onopen = () => conn.send({ type: 'auth', token: state.session.token });
  ws.onmessage = (e) => receive(conn, JSON.parse(e.data));
  ws.onclose = (e) => closed(conn, e.code);
  return conn;
}

/** On the HTTP transport: a socket tried on the side, adopted if it authenticates. */
function probe() {
  if (state.probe) return;
  const conn = openSocket();
  state.probe = conn;
  setTimeout(() => {
    if (state.probe !== conn) return;
    state.probe = null;
    conn.close();
  }, REQUEST_TIMEOUT_MS);
}

/** The socket tried on the side authenticated: it replaces the HTTP
 *  connection, and the chats are joined again on it (with since_seq, as
 *  after any reconnect). Requests still waiting on HTTP fail and are retried
 *  by their senders. */
function adoptProbe(conn, data) {
  state.probe = null;
  clearInterval(state.probeTimer);
  state.probeTimer = null;
  clearTimeout(state.reconnectTimer);
  state.mode = 'websocket';
  state.conn?.close();
  resetSession();
  conn.authed = true;
  conn.authedAt = Date.now();
  state.wsFailures = 0;
  state.conn = conn;
  onAuthenticated(data);
}

// ------------------------------------------------------------------ the HTTP transport

function openHttp() {
  const conn = {
    kind: 'http',
    authed: false,
    heard: false,
    id: null, // connection_id, from auth_success: where frames are POSTed
    source: null, // the EventSource
    queue: [], // client frames (JSON text) not POSTed yet
    posting: false,
    ended: false,
    send: (frame) => {
      conn.queue.push(JSON.stringify(frame));
      postFrames(conn);
    },
    close: () => {
      conn.ended = true;
      conn.source?.close();
    },
  };
  openEvents(conn);
  return conn;
}

/** A ticket, then the event stream opened with it. */
async function openEvents(conn) {
  let ticket;
  try {
    ({ ticket } = await api('POST', '/tickets'));
  } catch (e) {
    return closed(conn, e.code === 'AUTH_FAILED' || e.code === 'TOKEN_EXPIRED' ? 4001 : 1006);
  }
  if (conn.ended) return;
  const source = new EventSource(`${API}/events?ticket=${encodeURIComponent(ticket)}`);
  conn.source = source;
  source.onmessage = (e) => {
    let frame;
    try {
      frame = JSON.parse(e.data);
    } catch {
      return;
    }
    const d = frame.data || {};
    if (frame.type === 'error' && d.close_code) {
      // The node's last frame before it ends the stream: what a socket's
      // close code would say (1012 restarting, 4003 token expired...).
      source.close();
      closed(conn, d.close_code);
      return;
    }
    if (frame.type === 'auth_success' && !d.ref) conn.id = d.connection_id;
    receive(conn, frame);
  };
  // EventSource would retry by itself, with the same URL, but a ticket is
  // single use: close it and reconnect with a fresh ticket instead.
  source.onerror = () => {
    source.close();
    closed(conn, 1006);
  };
}

/** POSTs the queued frames, one request at a time so that they keep their
 *  order; frames queued meanwhile go together in the next one. Answers
 *  arrive on the event stream. */
async function postFrames(conn) {
  if (conn.posting || conn.ended || !conn.queue.length) return;
  conn.posting = true;
  const batch = takeBatch(conn);
  for (let tries = 1; ; tries++) {
    let r = null;
    try {
      r = await fetch(`${API}/connections/${encodeURIComponent(conn.id)}/frames`, {
        method: 'POST',
        headers: { authorization: `Bearer ${state.session.token}`, 'content-type': 'application/json' },
        body: `[${batch.join(',')}]`,
      });
    } catch {
      // No answer at all: handled below with the failures.
    }
    if (conn.ended) return;
    if (r?.status === 202) break;
    if (r?.status === 413) {
      // One frame over the server's limit (batches stay well below it):
      // answered as a socket would answer a frame it refuses.
      refuseFrames(conn, batch, 'MESSAGE_TOO_LONG', 'frame too large');
      break;
    }
    if (tries < POST_TRIES && [429, 502, 503, 504].includes(r?.status)) {
      const wait = Number(r.headers.get('retry-after')) * 1000 || 1000;
      await new Promise((resolve) => setTimeout(resolve, wait));
      if (conn.ended) return;
      continue;
    }
    // 404 (the connection ended), 401, 403, no answer, a server still failing:
    // the connection is lost. Requests waiting on it fail, and their senders
    // retry them (over REST meanwhile); a new stream is opened.
    return drop(conn, r?.status === 401 ? 4001 : 1006);
  }
  conn.posting = false;
  postFrames(conn);
}

/** The oldest queued frames, as many as fit in one POST (at least one). */
function takeBatch(conn) {
  const batch = [conn.queue.shift()];
  let bytes = utf8Length(batch[0]);
  while (batch.length < BATCH_FRAMES && conn.queue.length) {
    const next = utf8Length(conn.queue[0]);
    if (bytes + next > BATCH_BYTES) break;
    bytes += next;
    batch.push(conn.queue.shift());
  }
  return batch;
}

const utf8 = new TextEncoder();
const utf8Length = (text) => utf8.encode(text).length;

/** Answers the frames among `batch` that wait for a reply with an error, through onFrame. */
function refuseFrames(conn, batch, code, message) {
  for (const text of batch) {
    const { id } = JSON.parse(text);
    if (id) receive(conn, { type: 'error', data: { ref: id, code, message } });
  }
}

function onFrame(frame) {
  const d = frame.data || {};
  if (d.ref && state.replies.has(d.ref)) {
    const { resolve, reject, timer } = state.replies.get(d.ref);
    state.replies.delete(d.ref);
    clearTimeout(timer);
    if (frame.type === 'error') reject(Object.assign(new Error(d.message), { code: d.code }));
    else resolve(d);
    if (frame.type === 'auth_success') scheduleRenewal(d.expires_at);
    if (frame.type !== 'messages') return; // history pages are ingested below too
  }
  switch (frame.type) {
    case 'auth_success':
      if (!d.ref) onAuthenticated(d);
      break;
    case 'message_received':
      ingest(d.message);
      break;
    case 'message_updated':
      onMessageUpdated(d);
      break;
    case 'messages': {
      // A history page (messages only, in their current state). When it
      // was read is unknown here, so a state held from a change wins.
      if (state.chats.has(d.conversation_id)) d.messages.forEach((m) => ingest(m, 0));
      break;
    }
    case 'typing_indicator':
      onTyping(d);
      break;
    case 'stream_queued':
      onStreamQueued(d);
      break;
    case 'stream_start':
      onStreamStart(d);
      break;
    case 'stream_snapshot':
      onStreamSnapshot(d);
      break;
    case 'stream_content':
      onStreamContent(d);
      break;
    case 'stream_complete':
      onStreamComplete(d);
      break;
    case 'stream_error':
      onStreamError(d);
      break;
    case 'conversation_updated':
      onConversationUpdated(d.conversation);
      break;
    case 'read_receipt':
      onReadReceipt(d);
      break;
    case 'presence_changed':
      onPresenceChanged(d);
      break;
    case 'left':
      removeChat(d.conversation_id);
      break;
    case 'error':
      if (d.code !== 'TOKEN_EXPIRED') toast(`${d.code}: ${d.message}`);
      break;
  }
}

// ------------------------------------------------------------------ status pill

const TRANSPORT_NAMES = { websocket: 'websocket', http: 'http stream' };

function setStatus(status) {
  const pill = $('status');
  pill.dataset.state = status;
  if (status === 'connected') {
    const kind = state.conn.kind;
    pill.dataset.nodeId = state.nodeId;
    pill.dataset.transport = kind;
    pill.textContent = `Connected · ${TRANSPORT_NAMES[kind]} · ${state.nodeId}`;
    pill.title = kind === 'http'
      ? `Connected to node ${state.nodeId} over HTTP (an event stream and POSTs): WebSockets do not get through; one is tried every minute`
      : `WebSocket open on node ${state.nodeId}`;
  } else {
    delete pill.dataset.nodeId;
    delete pill.dataset.transport;
    pill.textContent = { connecting: 'Connecting…', reconnecting: 'Reconnecting…', offline: 'Offline · retrying' }[status];
    pill.title = status === 'offline'
      ? 'No connection: messages and changes go over REST meanwhile'
      : `Opening the connection (${TRANSPORT_NAMES[state.mode]})`;
  }
  $('ask').disabled = status !== 'connected';
}

// ------------------------------------------------------------------ presence
//
// Who is present in a chat: the users with a connection joined to it (every
// tab joins all its chats, so in effect the participants who are online).
// `presence` is asked after each join and `presence_changed` keeps it live,
// for the sidebar's dots too, since every chat is joined. Chats with more
// than PRESENCE_LIVE_MAX participants get no `presence_changed`: they are
// asked again every PRESENCE_POLL_MS while open or in view in the sidebar.
// With no connection up presence is unknown, and no dot shows.

async function askPresence(chat) {
  try {
    const d = await request('presence', { conversation_id: chat.id });
    if (!chat.joined) return; // answered after the connection was lost
    chat.present = new Set(d.users);
    scheduleRender(chat);
  } catch (e) {
    // Lost with the connection (the next join asks again), or refused.
    if (e.code !== 'DISCONNECTED') console.warn('presence failed', e);
  }
}

function onPresenceChanged(d) {
  const chat = state.chats.get(d.conversation_id);
  if (!chat?.present) return; // the answer to `presence`, still to come, includes it
  if (d.present) chat.present.add(d.user_id);
  else chat.present.delete(d.user_id);
  scheduleRender(chat);
}

/** Asks again for the presence of the large chats that are shown. */
function pollPresence() {
  if (!state.connected || !reading()) return;
  const view = document.querySelector('.chat-list-wrap').getBoundingClientRect();
  for (const chat of state.chats.values()) {
    if (!chat.joined || chat.participants.length <= PRESENCE_LIVE_MAX) continue;
    const item = document.querySelector(`[data-testid=chat-item][data-chat-id="${chat.id}"]`)?.getBoundingClientRect();
    const inView = item && item.height > 0 && item.bottom > view.top && item.top < view.bottom;
    if (chat.id === state.openId || inView) askPresence(chat);
  }
}

/** The other users present in a chat. */
function othersPresent(chat) {
  return chat.present ? [...chat.present].filter((u) => u !== me()) : [];
}

// ------------------------------------------------------------------ chats
//
// Seqs count log entries (docs/protocol.md, v1.1): a new message and every
// change of one (edit, deletion, reaction) take the next seq. `contig` is
// the last seq up to which every entry is held, so it is what a rejoin
// replays from (`since_seq`) and what a read mark may claim.

function newChat(conv) {
  const lastSeq = conv.last_seq || 0;
  const lastRead = conv.last_read_seq || 0;
  // Replay the unread part and some context, within reason.
  const since = Math.max(0, lastSeq - HISTORY_CAP, Math.min(lastRead, lastSeq - HISTORY_WINDOW));
  return {
    id: conv.id,
    title: conv.title || '',
    ownerId: conv.owner_id || null,
    participants: conv.participants || [],
    assistantId: conv.assistant_id || null,
    updatedAt: conv.updated_at,
    serverSeq: lastSeq, // the highest seq known to exist (REST, joined, frames)
    serverUnread: conv.unread_count ?? null, // the server's count, until the chat is loaded
    lastRead, // this user's read mark, from any tab
    readSent: lastRead,
    windowStart: since, // messages at or below it are not loaded
    contig: since, // every entry up to here is held (since_seq of a rejoin)
    seen: new Set(), // entries held above contig (out of order)
    synced: false, // its messages were loaded once (joined, or a REST page)
    messages: new Map(), // message id -> message, in its current state
    versions: new Map(), // message id -> the seq its held state is at least as new as
    pending: new Map(), // client_msg_id -> {cmid, content, replyTo, state, error}
    replyTo: null, // id of the message the composer answers
    typers: new Map(), // user_id -> expiry timer
    present: null, // ids of the users present (a Set), null while unknown
    streamNotes: new Map(), // message id -> why its (partly stored) answer stopped, from stream_error
    joined: false,
    joining: null,
    joinEpoch: 0, // counts joins: a stale-stream sweep belongs to one
    gapTimer: null,
    gapMark: 0,
    gapTries: 0,
    addedAt: Date.now(),
  };
}

/** Adds or updates a chat from a REST or `conversation_updated` conversation. */
function upsertChat(conv) {
  let chat = state.chats.get(conv.id);
  if (!chat) {
    chat = newChat(conv);
    state.chats.set(conv.id, chat);
    if (state.connected) join(chat);
  } else {
    chat.title = conv.title || '';
    chat.ownerId = conv.owner_id || chat.ownerId;
    chat.participants = conv.participants || chat.participants;
    chat.assistantId = conv.assistant_id || chat.assistantId;
    chat.updatedAt = conv.updated_at || chat.updatedAt;
    chat.serverSeq = Math.max(chat.serverSeq, conv.last_seq || 0);
    if (conv.last_read_seq != null) chat.lastRead = Math.max(chat.lastRead, conv.last_read_seq);
    if (conv.unread_count != null) chat.serverUnread = conv.unread_count;
  }
  return chat;
}

function removeChat(id) {
  state.chats.delete(id);
  for (const s of state.streams.values()) if (s.convId === id) state.streams.delete(s.id);
  if (state.openId === id) openChat(null);
  renderChatList();
}

/** Every page of GET /chats (following Confab-Next-Cursor), then the sidebar. */
async function refreshChats() {
  const asked = Date.now();
  try {
    const list = [];
    let cursor = null;
    for (let n = 0; n < MAX_CHAT_PAGES; n++) {
      const query = `?limit=${CHAT_PAGE}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
      const { data, headers } = await apiRaw('GET', `/chats${query}`);
      list.push(...data);
      cursor = headers.get('confab-next-cursor');
      if (!cursor) break;
    }
    const seen = new Set(list.map((c) => c.id));
    list.forEach(upsertChat);
    // Gone from the list (removed or archived while this tab was offline),
    // unless it appeared after the list was asked for.
    if (!cursor) {
      for (const chat of [...state.chats.values()]) {
        if (!seen.has(chat.id) && chat.addedAt < asked) state.chats.delete(chat.id);
      }
    }
    state.chatsLoaded = true;
    if (state.openId && !state.chats.has(state.openId)) openChat(null);
    renderChatList();
  } catch (e) {
    console.warn('chat list failed', e);
  }
}

function onConversationUpdated(conv) {
  if (conv.archived || !conv.participants.includes(me())) return removeChat(conv.id);
  upsertChat(conv);
  renderChatList();
  if (conv.id === state.openId) renderHeader();
}

/** Joins (or rejoins) with since_seq = the last seq held, so the server
 *  replays exactly the entries this tab has not seen: messages as
 *  `message_received`, changes as `message_updated`. */
function join(chat) {
  if (!state.connected || chat.joined) return Promise.resolve();
  if (!chat.joining) {
    // A join again (a gap being filled): the pending answers held are
    // confirmed by the catch-up that follows the replay (stream_queued,
    // stream_start...); one that ended unseen meanwhile is dropped.
    const epoch = ++chat.joinEpoch;
    let stale = false;
    for (const s of state.streams.values()) {
      if (s.convId === chat.id && s.phase !== 'error') stale = s.stale = true;
    }
    chat.joining = request('join_conversation', { conversation_id: chat.id, since_seq: chat.contig })
      .then((d) => {
        chat.joined = true;
        chat.synced = true;
        chat.participants = d.participants || chat.participants;
        if (d.last_seq > chat.serverSeq) chat.serverSeq = d.last_seq;
        if (chat.serverSeq > chat.contig) scheduleGapFill(chat);
        if (stale) sweepStaleStreams(chat, epoch, d.last_seq || 0);
        if (chat.id === state.openId) renderHeader();
        scheduleRender(chat);
        askPresence(chat);
      })
      .catch((e) => {
        if (e.code === 'FORBIDDEN' || e.code === 'NOT_FOUND') removeChat(chat.id);
        // UNAVAILABLE (the history could not be read), a timeout: try again.
        else if (e.code !== 'DISCONNECTED') setTimeout(() => state.chats.has(chat.id) && join(chat), 2_000);
      })
      .finally(() => (chat.joining = null));
  }
  return chat.joining;
}

function chatTitle(chat) {
  if (chat.title) return chat.title;
  const others = chat.participants.filter((p) => p !== me());
  return others.length ? others.join(', ') : 'Just you';
}

function lastMessage(chat) {
  let best = null;
  for (const m of chat.messages.values()) if (!best || m.seq > best.seq) best = m;
  return best;
}

/** Messages from others after this user's read mark, not deleted. Until the
 *  chat's entries are all here, the server's `unread_count` says it. */
function unreadCount(chat) {
  if (chat.lastRead >= chat.serverSeq) return 0;
  const loaded = chat.synced && chat.contig >= chat.serverSeq;
  if (!loaded && chat.serverUnread != null) return chat.serverUnread;
  let n = 0;
  for (const m of chat.messages.values()) {
    if (m.seq > chat.lastRead && m.sender_id !== me() && !m.deleted) n += 1;
  }
  n += Math.max(0, chat.windowStart - chat.lastRead); // older than what is loaded (at most)
  if (!loaded) n += Math.max(0, chat.serverSeq - Math.max(chat.contig, chat.lastRead)); // known over REST only
  return n;
}

function activity(chat) {
  const m = lastMessage(chat);
  return Date.parse(m ? m.created_at : chat.updatedAt) || 0;
}

async function createChat(body) {
  try {
    const conv = await api('POST', '/chats', body);
    upsertChat(conv);
    openChat(conv.id);
  } catch (e) {
    toast(`Could not create the chat: ${e.message}`);
  }
}

// ------------------------------------------------------------------ the log

/** Stores a message's state unless the one held is newer: a deletion is
 *  final, and a state older than the latest change applied here loses.
 *  `version`: every entry up to it is reflected in `m`. */
function storeMessage(chat, m, version) {
  const old = chat.messages.get(m.id);
  const held = chat.versions.get(m.id) || 0;
  if (old && ((old.deleted && !m.deleted) || held > version)) return false;
  chat.messages.set(m.id, m);
  chat.versions.set(m.id, version);
  if (m.deleted) forgetUi(chat, m.id);
  return true;
}

/** Entry `seq` is held: move `contig` over every entry held in a row. */
function noteSeq(chat, seq) {
  if (seq > chat.contig) chat.seen.add(seq);
  while (chat.seen.delete(chat.contig + 1)) chat.contig += 1;
  if (seq > chat.serverSeq) chat.serverSeq = seq;
  if (chat.serverSeq > chat.contig) scheduleGapFill(chat);
}

/** Every entry up to `seq` is reflected in what is held. */
function advanceTo(chat, seq) {
  if (seq <= chat.contig) return;
  chat.contig = seq;
  for (const s of chat.seen) if (s <= seq) chat.seen.delete(s);
  while (chat.seen.delete(chat.contig + 1)) chat.contig += 1;
}

/** A message: live or replayed (`message_received`, its seq is its entry),
 *  or from a history page (`asOf`: the seq the page reflects at least). */
function ingest(m, asOf = m.seq) {
  const chat = state.chats.get(m.conversation_id);
  if (!chat) return;
  if (m.client_msg_id && m.sender_id === me() && chat.pending.delete(m.client_msg_id)) scheduleRender(chat);
  const fresh = !chat.messages.has(m.id);
  storeMessage(chat, m, asOf);
  if (fresh) {
    chat.windowStart = Math.min(chat.windowStart, m.seq - 1);
    // The stored answer replaces its pending bubble (whichever of
    // message_received and stream_complete comes first); a failure shown
    // on the bubble moves to the message.
    for (const s of state.streams.values()) {
      if (s.messageId !== m.id) continue;
      if (s.phase === 'error') chat.streamNotes.set(m.id, s.error);
      state.streams.delete(s.id);
    }
    dropTyper(chat, m.sender_id);
    // The server moves a sender's read mark to their own message.
    if (m.sender_id === me() && m.message_type === 'user' && m.seq > chat.lastRead) chat.lastRead = m.seq;
  }
  noteSeq(chat, m.seq);
  scheduleRender(chat);
}

/** `message_updated`: an edit, deletion or reaction, with its own seq and
 *  the message's state after it. */
function onMessageUpdated(d) {
  const chat = state.chats.get(d.conversation_id);
  if (!chat) return;
  const m = d.message;
  // A change of a message older than the loaded window only takes its seq.
  if (m && (chat.messages.has(m.id) || m.seq > chat.windowStart)) {
    const fresh = !chat.messages.has(m.id);
    storeMessage(chat, m, d.seq);
    if (fresh) noteSeq(chat, m.seq); // missed, but held now in a newer state
  }
  noteSeq(chat, d.seq);
  scheduleRender(chat);
}

/** A seq skipped: fetch what is missing unless it shows up on its own (a
 *  replay still streaming in counts as showing up). */
function scheduleGapFill(chat, wait = GAP_WAIT_MS) {
  if (chat.gapTimer) return;
  chat.gapMark = chat.contig;
  chat.gapTimer = setTimeout(() => {
    chat.gapTimer = null;
    if (!state.chats.has(chat.id) || chat.serverSeq <= chat.contig) {
      chat.gapTries = 0;
      return;
    }
    if (chat.contig > chat.gapMark || chat.joining) return scheduleGapFill(chat);
    chat.gapTries += 1;
    fillGap(chat);
    scheduleGapFill(chat, Math.min(30_000, GAP_WAIT_MS * 2 ** chat.gapTries));
  }, wait);
}

/** Joined: join again, and the server replays every entry after `contig`,
 *  changes included (history pages hold messages only, so they cannot
 *  tell an edit of an older message). Offline: the window over REST. */
async function fillGap(chat) {
  try {
    if (state.connected) {
      chat.joined = false;
      await join(chat);
    } else if (chat.id === state.openId) {
      await syncWindow(chat);
    }
  } catch (e) {
    console.warn('gap fill failed', e);
  }
}

/** Over REST: every loaded message in its current state, page by page.
 *  The first page's conversation says which seq it reflects at least (its
 *  `last_seq` is read before the page), so every entry up to it is held. */
async function syncWindow(chat) {
  let asOf = chat.serverSeq;
  let after = chat.windowStart;
  for (let n = 0; n < 50; n++) {
    const page = await api('GET', `/chats/${chat.id}?after_seq=${after}&limit=200`);
    if (n === 0 && page.conversation) {
      asOf = Math.max(asOf, page.conversation.last_seq || 0);
      upsertChat(page.conversation);
    }
    page.messages.forEach((m) => ingest(m, asOf));
    if (!page.has_more || !page.messages.length) {
      advanceTo(chat, asOf);
      break;
    }
    after = page.messages[page.messages.length - 1].seq;
  }
  chat.synced = true;
  scheduleRender(chat);
}

async function loadEarlier() {
  const chat = state.chats.get(state.openId);
  if (!chat || chat.windowStart <= 0) return;
  const before = chat.windowStart + 1;
  const asOf = chat.serverSeq;
  const page = await api('GET', `/chats/${chat.id}?before_seq=${before}&limit=${HISTORY_WINDOW}`);
  page.messages.forEach((m) => ingest(m, Math.max(asOf, page.conversation?.last_seq || 0)));
  if (!page.has_more) chat.windowStart = 0;
  renderChat();
}

function sendMessage(content) {
  const chat = state.chats.get(state.openId);
  if (!chat || !content.trim()) return;
  const p = { cmid: uid(), content, replyTo: chat.replyTo, state: 'sending', error: '' };
  chat.replyTo = null;
  chat.pending.set(p.cmid, p);
  stopTyping();
  deliver(chat, p);
  renderChat({ toBottom: true });
}

/** Sends (or resends, with the same client_msg_id) one pending message. */
async function deliver(chat, p) {
  p.state = 'sending';
  scheduleRender(chat);
  const data = { conversation_id: chat.id, content: p.content, client_msg_id: p.cmid };
  if (p.replyTo) data.reply_to = p.replyTo;
  try {
    if (state.connected) {
      try {
        const ack = await request('send_message', data);
        p.state = 'sent';
        if (chat.messages.has(ack.message_id)) chat.pending.delete(p.cmid);
        scheduleRender(chat);
        return;
      } catch (e) {
        if (e.code !== 'DISCONNECTED' && e.code !== 'TIMEOUT') throw e;
      }
    }
    // No connection: over REST (deduplicated by client_msg_id too).
    const { conversation_id: _, ...body } = data;
    ingest(await api('POST', `/chats/${chat.id}/messages`, body));
  } catch (e) {
    p.state = 'failed';
    p.error = e instanceof TypeError ? 'no connection' : e.message; // fetch fails with TypeError
  }
  scheduleRender(chat);
}

/** An edit, deletion or reaction: over the connection, or REST while none is up.
 *  The result arrives as `message_updated` (REST answers it directly).
 *  Resolves true once the server took it. */
async function changeMessage(chat, type, messageId, extra = {}) {
  const verb = { edit_message: 'edit', delete_message: 'delete', add_reaction: 'react', remove_reaction: 'remove the reaction' }[type];
  let retried = false;
  try {
    if (state.connected) {
      try {
        await request(type, { conversation_id: chat.id, message_id: messageId, ...extra });
        return true;
      } catch (e) {
        if (e.code !== 'DISCONNECTED' && e.code !== 'TIMEOUT') throw e;
        retried = true; // it may have been taken: every change but a deletion is idempotent
      }
    }
    const path = `/chats/${chat.id}/messages/${encodeURIComponent(messageId)}`;
    let r;
    if (type === 'edit_message') r = await api('PATCH', path, { content: extra.content });
    else if (type === 'delete_message') r = await api('DELETE', path);
    else r = await api(type === 'add_reaction' ? 'PUT' : 'DELETE', `${path}/reactions/${encodeURIComponent(extra.emoji)}`);
    if (r?.message && r.seq != null) {
      storeMessage(chat, r.message, r.seq);
      noteSeq(chat, r.seq);
      scheduleRender(chat);
    }
    return true;
  } catch (e) {
    if (retried && type === 'delete_message' && e.code === 'NOT_FOUND') return true;
    toast(e instanceof TypeError ? `Could not ${verb}: no connection` : `Could not ${verb}: ${e.message}`);
    return false;
  }
}

const reading = () => document.visibilityState === 'visible';

function markRead(chat) {
  if (!chat || chat.id !== state.openId || !reading()) return;
  const seq = chat.contig;
  if (seq > chat.lastRead) chat.lastRead = seq;
  if (seq <= chat.readSent) return;
  chat.readSent = seq;
  if (state.connected) {
    fire('mark_read', { conversation_id: chat.id, seq });
  } else {
    // REST has a read call too; on failure the next render retries.
    api('POST', `/chats/${chat.id}/read`, { seq }).catch(() => {
      if (chat.readSent === seq) chat.readSent = Math.min(seq - 1, chat.lastRead);
    });
  }
}

function onReadReceipt(d) {
  if (d.user_id !== me()) return;
  const chat = state.chats.get(d.conversation_id);
  if (!chat || d.seq <= chat.lastRead) return;
  chat.lastRead = d.seq;
  renderChatList();
}

// ------------------------------------------------------------------ typing

function onInput() {
  const input = $('input');
  autosize(input);
  if (!input.value.trim()) return stopTyping();
  const now = Date.now();
  const t = state.typing;
  if (t.convId !== state.openId || now - t.sentAt > TYPING_RESEND_MS) {
    if (t.convId && t.convId !== state.openId) stopTyping();
    t.convId = state.openId;
    t.sentAt = now;
    fire('typing', { conversation_id: state.openId, is_typing: true });
  }
  clearTimeout(t.idle);
  t.idle = setTimeout(stopTyping, TYPING_IDLE_MS);
}

function stopTyping() {
  const t = state.typing;
  clearTimeout(t.idle);
  if (t.convId) fire('typing', { conversation_id: t.convId, is_typing: false });
  t.convId = null;
}

function onTyping(d) {
  const chat = state.chats.get(d.conversation_id);
  if (!chat) return;
  dropTyper(chat, d.user_id);
  if (d.is_typing) chat.typers.set(d.user_id, setTimeout(() => dropTyper(chat, d.user_id, true), TYPER_TTL_MS));
  if (chat.id === state.openId) renderTyping();
}

function dropTyper(chat, user, render = false) {
  clearTimeout(chat.typers.get(user));
  chat.typers.delete(user);
  if (render && chat.id === state.openId) renderTyping();
}

// ------------------------------------------------------------------ assistant streams
//
// A pending answer is one bubble per stream, keyed by stream_id, in one of
// three phases: 'queued' (waiting in the assistant's queue: stream_queued,
// with its position), 'running' (stream_start, then the text) and 'error'
// (stream_error: the bubble stays, saying why, until dismissed or until a
// new answer starts in the chat). Its text is `base` (a stream_snapshot:
// every piece up to `baseIndex`, for a tab that joined mid-answer) followed
// by the later pieces in index order; a piece at or below `baseIndex` is a
// duplicate. The stored answer (message_received or stream_complete's
// `message`, whichever comes first) replaces the bubble; a stream_complete
// without one (cancelled while queued, or nothing produced) removes it.

/** The pending answer a stream frame is about, created on first sight; null
 *  when its chat is unknown or its answer is stored already. */
function streamFor(d) {
  const chat = state.chats.get(d.conversation_id);
  if (!chat || typeof d.stream_id !== 'string' || (d.message_id && chat.messages.has(d.message_id))) return null;
  let s = state.streams.get(d.stream_id);
  if (!s) {
    s = {
      id: d.stream_id,
      convId: chat.id,
      messageId: null,
      assistantId: null,
      replyTo: null,
      phase: 'running', // until told otherwise: a frame of a running answer
      started: false, // stream_start (or text) seen: never queued again
      position: null, // while queued: 1 = next to run
      base: '', // the snapshot's text: every piece up to baseIndex
      baseIndex: -1,
      parts: new Map(), // index -> text, for the pieces after baseIndex
      error: null, // {code, text, detail, retryAt} once failed
      cancelling: false,
      stale: false, // not confirmed since this tab joined the chat again
      el: null,
    };
    state.streams.set(s.id, s);
    scheduleRender(chat);
    // A new answer in the chat: the bubbles of earlier failed ones give way.
    for (const o of state.streams.values()) {
      if (o !== s && o.convId === chat.id && o.phase === 'error') state.streams.delete(o.id);
    }
  }
  s.stale = false;
  s.messageId = d.message_id || s.messageId;
  s.assistantId = d.assistant_id || s.assistantId;
  s.replyTo = d.reply_to || s.replyTo;
  return s;
}

function onStreamQueued(d) {
  const s = streamFor(d);
  // A late stream_queued never takes a started (or failed) answer back.
  if (!s || s.started || s.phase === 'error') return;
  s.phase = 'queued';
  s.position = Number.isInteger(d.position) && d.position > 0 ? d.position : null;
  scheduleRender(state.chats.get(s.convId));
}

function onStreamStart(d) {
  const s = streamFor(d);
  if (!s || s.phase === 'error') return;
  s.started = true;
  setRunning(s);
}

/** Catch-up for a tab that joined mid-answer: all the text so far, pieces 0..=index. */
function onStreamSnapshot(d) {
  const s = streamFor(d);
  if (!s || s.phase === 'error' || !Number.isInteger(d.index) || d.index < s.baseIndex) return;
  s.started = true;
  s.base = typeof d.content === 'string' ? d.content : '';
  s.baseIndex = d.index;
  for (const i of s.parts.keys()) if (i <= d.index) s.parts.delete(i);
  if (!setRunning(s)) paintStream(s);
}

function onStreamContent(d) {
  const s = streamFor(d);
  if (!s || s.phase === 'error' || !Number.isInteger(d.index) || d.index <= s.baseIndex) return;
  s.started = true;
  if (typeof d.content === 'string') s.parts.set(d.index, d.content);
  if (!setRunning(s)) paintStream(s);
}

/** Into the running phase; true when that changed it (the chat re-renders). */
function setRunning(s) {
  if (s.phase === 'running') return false;
  s.phase = 'running';
  s.position = null;
  scheduleRender(state.chats.get(s.convId));
  return true;
}

/** The answer's text so far: the snapshot, then the later pieces in index order. */
function streamText(s) {
  const later = [...s.parts.entries()].sort((a, b) => a[0] - b[0]).map((e) => e[1]);
  return s.base + later.join('');
}

/** New text on a shown bubble, in place (Markdown as it grows: an unclosed
 *  fence or ** shows as it stands until closed). */
function paintStream(s) {
  if (!s.el?.isConnected) {
    if (s.convId === state.openId) scheduleRender(state.chats.get(s.convId));
    return;
  }
  const text = streamText(s);
  s.el.querySelector('[data-testid=stream-text]').replaceChildren(...renderMarkdown(text));
  const status = s.el.querySelector('.stream-status');
  if (status) status.hidden = !!text;
  stickToBottom();
}

function onStreamComplete(d) {
  const s = state.streams.get(d.stream_id);
  state.streams.delete(d.stream_id);
  if (d.message) ingest(d.message);
  scheduleRender(state.chats.get(d.conversation_id) || state.chats.get(s?.convId));
}

function onStreamError(d) {
  const chat = state.chats.get(d.conversation_id);
  if (!chat) return;
  let s = state.streams.get(d.stream_id);
  const error = {
    code: d.code,
    text: streamErrorText(d),
    detail: typeof d.message === 'string' ? d.message : '',
    retryAt: d.code === 'RATE_LIMITED' && d.retry_after_ms > 0 ? Date.now() + d.retry_after_ms : 0,
  };
  // The partial answer, if any, is stored before the error: the error goes
  // under it. Otherwise the bubble stays, saying why.
  const stored = (s?.messageId && chat.messages.get(s.messageId)) ||
    [...chat.messages.values()].find((m) => m.metadata?.stream_id === d.stream_id);
  if (stored) {
    state.streams.delete(d.stream_id);
    chat.streamNotes.set(stored.id, error);
  } else {
    s = s || streamFor(d);
    if (!s) return;
    s.phase = 'error';
    s.error = error;
    s.cancelling = false;
    if (error.retryAt) setTimeout(() => scheduleRender(chat), d.retry_after_ms + 50); // Retry enables
  }
  scheduleRender(chat);
}

/** What the page says when an answer fails. */
function streamErrorText(d) {
  const detail = typeof d.message === 'string' && d.message ? `: ${d.message}` : '';
  switch (d.code) {
    case 'UNAVAILABLE':
      return 'The assistant is busy; try again';
    case 'RATE_LIMITED': {
      const secs = Math.ceil((Number(d.retry_after_ms) || 0) / 1000);
      return secs > 0
        ? `The assistant is rate limited; try again in ${secs} s`
        : 'The assistant is rate limited; try again later';
    }
    case 'INTERRUPTED':
      return 'The answer was interrupted; try again';
    case 'PROVIDER_ERROR':
      return `The assistant failed${detail}`;
    default:
      return `The assistant stopped${detail}`;
  }
}

/** 1st, 2nd, 3rd, 4th, ... 11th, 12th, 13th, ... 21st, 22nd, ... */
function ordinal(n) {
  const tens = n % 100;
  if (tens >= 11 && tens <= 13) return `${n}th`;
  return `${n}${{ 1: 'st', 2: 'nd', 3: 'rd' }[n % 10] || 'th'}`;
}

function queuedText(position) {
  if (!position) return 'Queued';
  return position === 1 ? 'Queued (next)' : `Queued (${ordinal(position)})`;
}

/** After a join again: once the replay is in (and the catch-up after it has
 *  had time), the pending answers it did not confirm ended unseen. */
function sweepStaleStreams(chat, epoch, lastSeq, tries = 0) {
  setTimeout(() => {
    if (chat.joinEpoch !== epoch || !chat.joined || state.chats.get(chat.id) !== chat) return;
    if (chat.contig < lastSeq && tries < 10) return sweepStaleStreams(chat, epoch, lastSeq, tries + 1);
    let gone = false;
    for (const s of state.streams.values()) {
      if (s.convId === chat.id && s.stale) {
        state.streams.delete(s.id);
        gone = true;
      }
    }
    if (gone) scheduleRender(chat);
  }, STREAM_STALE_MS);
}

async function askAssistant() {
  try {
    await request('stream_response', { conversation_id: state.openId });
  } catch (e) {
    toast(e.code === 'DISCONNECTED' ? 'The assistant needs the live connection.' : `Assistant: ${e.message}`);
  }
}

/** A failed answer asked again: the same message, the same assistant. */
async function retryStream(s) {
  const chat = state.chats.get(s.convId);
  state.streams.delete(s.id);
  scheduleRender(chat);
  const data = { conversation_id: s.convId };
  if (s.replyTo) data.message_id = s.replyTo;
  if (s.assistantId) data.assistant_id = s.assistantId;
  try {
    await request('stream_response', data);
  } catch (e) {
    toast(e.code === 'DISCONNECTED' ? 'The assistant needs the live connection.' : `Assistant: ${e.message}`);
  }
}

function dismissStream(s) {
  state.streams.delete(s.id);
  scheduleRender(state.chats.get(s.convId));
}

/** Stops an answer, queued or running: `stream_complete` (cancelled) follows. */
async function cancelStream(s) {
  s.cancelling = true;
  scheduleRender(state.chats.get(s.convId));
  try {
    await request('cancel_stream', { stream_id: s.id });
  } catch (e) {
    if (e.code === 'NOT_FOUND') {
      // The stream ended on its own just before the cancel, and its end is on
      // the way; or it ended unseen. Either way its bubble goes.
      setTimeout(() => {
        if (state.streams.get(s.id) === s && s.phase !== 'error') dismissStream(s);
      }, CANCEL_GONE_MS);
      return;
    }
    if (state.streams.get(s.id) === s) {
      s.cancelling = false;
      scheduleRender(state.chats.get(s.convId));
    }
    if (e.code !== 'DISCONNECTED') toast(`Cancel failed: ${e.message}`);
  }
}

// ------------------------------------------------------------------ message actions

function closeMenus() {
  const ui = state.ui;
  const open = ui.actionsFor || ui.pickerFor || ui.confirmDelete;
  ui.actionsFor = ui.pickerFor = ui.confirmDelete = null;
  return !!open;
}

/** A message gone (deleted): no menu, editor or picker left on it. */
function forgetUi(chat, id) {
  const ui = state.ui;
  if ([ui.actionsFor, ui.pickerFor, ui.confirmDelete].includes(id)) closeMenus();
  if (state.editing?.id === id && state.editing.chatId === chat.id) state.editing = null;
}

/** A tap on a bubble opens its action menu (on a phone there is no hover). */
function onBubbleClick(e, m) {
  if (m.deleted || e.target.closest('a, button, textarea, input')) return;
  if (!window.getSelection().isCollapsed) return; // selecting text
  const open = state.ui.actionsFor === m.id;
  closeMenus();
  state.ui.actionsFor = open ? null : m.id;
  renderChat();
}

function canEdit(m) {
  return !m.deleted && m.message_type === 'user' && m.sender_id === me();
}

function canDelete(chat, m) {
  return !m.deleted && ((m.message_type === 'user' && m.sender_id === me()) || chat.ownerId === me());
}

function startEdit(chat, m) {
  closeMenus();
  const input = el('textarea', { className: 'edit-input', 'data-testid': 'edit-input', rows: 1, 'aria-label': 'Edit message' });
  input.value = m.content;
  input.addEventListener('input', () => autosize(input));
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      saveEdit();
    } else if (e.key === 'Escape') {
      e.preventDefault();
      cancelEdit();
    }
  });
  state.editing = { chatId: chat.id, id: m.id, input, busy: false };
  renderChat();
  input.focus();
  input.setSelectionRange(input.value.length, input.value.length);
  autosize(input);
}

async function saveEdit() {
  const ed = state.editing;
  if (!ed || ed.busy) return;
  const chat = state.chats.get(ed.chatId);
  const m = chat?.messages.get(ed.id);
  const content = ed.input.value;
  if (!m || m.deleted || content === m.content) return cancelEdit();
  if (!content.trim()) return toast('A message cannot be empty: delete it instead.');
  ed.busy = true;
  ed.input.readOnly = true;
  const ok = await changeMessage(chat, 'edit_message', m.id, { content });
  if (state.editing !== ed) return;
  if (ok) return cancelEdit();
  ed.busy = false;
  ed.input.readOnly = false;
  ed.input.focus();
}

function cancelEdit() {
  state.editing = null;
  renderChat();
}

function startReply(chat, m) {
  closeMenus();
  chat.replyTo = m.id;
  renderChat();
  $('input').focus();
}

/** Your reaction with `emoji` on or off (a chip you are in takes yours away). */
function toggleReaction(chat, m, emoji) {
  const r = (m.reactions || []).find((x) => x.emoji === emoji);
  const mine = !!r?.user_ids?.includes(me());
  changeMessage(chat, mine ? 'remove_reaction' : 'add_reaction', m.id, { emoji });
}

function scrollToMessage(id) {
  const li = [...$('messages').querySelectorAll('[data-testid=message][data-id]')].find((e) => e.dataset.id === id);
  if (!li) return toast('That message is not loaded.');
  li.scrollIntoView({ block: 'center', behavior: 'smooth' });
  const ui = state.ui;
  ui.flash = id;
  li.classList.add('flash');
  clearTimeout(ui.flashTimer);
  ui.flashTimer = setTimeout(() => {
    ui.flash = null;
    for (const e of $('messages').querySelectorAll('.flash')) e.classList.remove('flash');
  }, 1600);
}

// ------------------------------------------------------------------ rename

function startRename() {
  const chat = state.chats.get(state.openId);
  if (!chat) return;
  state.renaming = chat.id;
  const input = $('rename-input');
  input.value = chat.title;
  input.placeholder = chatTitle(chat);
  renderHeader();
  input.focus();
  input.select();
}

async function saveRename() {
  if (state.renameBusy) return;
  const chat = state.chats.get(state.renaming);
  const title = $('rename-input').value.trim();
  if (!chat || !title || title === chat.title) return endRename();
  state.renameBusy = true;
  try {
    upsertChat(await api('PATCH', `/chats/${chat.id}`, { title }));
    state.renameBusy = false;
    endRename();
    renderChatList();
  } catch (e) {
    state.renameBusy = false;
    toast(`Could not rename: ${e.message}`);
    $('rename-input').focus();
  }
}

function endRename() {
  if (state.renameBusy) return;
  state.renaming = null;
  renderHeader();
}

// ------------------------------------------------------------------ rendering

let renderQueued = new Set();

/** Coalesces the re-renders a burst of frames asks for into one. */
function scheduleRender(chat) {
  if (!chat) return;
  if (renderQueued.size === 0) {
    const run = () => {
      const queued = renderQueued;
      renderQueued = new Set();
      renderChatList();
      if (queued.has(state.openId)) renderChat();
    };
    setTimeout(run, 0);
  }
  renderQueued.add(chat.id);
}

function avatarFor(id) {
  const span = el('span', { className: 'avatar', 'aria-hidden': 'true', text: ([...id][0] || '?').toUpperCase() });
  let h = 0;
  for (const c of id) h = (h * 31 + c.codePointAt(0)) % 360;
  span.style.background = `hsl(${h} 55% 88%)`;
  span.style.color = `hsl(${h} 60% 28%)`;
  return span;
}

function previewOf(m) {
  if (!m) return 'No messages yet';
  return `${senderLabel(m)}: ${m.deleted ? 'message deleted' : snippet(m.content, 120)}`;
}

function renderChatList() {
  const list = $('chat-list');
  const chats = [...state.chats.values()].sort((a, b) => activity(b) - activity(a));
  list.replaceChildren(
    ...chats.map((chat) => {
      const unread = chat.id === state.openId && reading() ? 0 : unreadCount(chat);
      const here = othersPresent(chat);
      return el('li', {},
        el('button', {
          type: 'button',
          className: `chat-item${chat.id === state.openId ? ' active' : ''}`,
          'data-testid': 'chat-item',
          'data-chat-id': chat.id,
          'aria-current': chat.id === state.openId ? 'true' : null,
          onclick: () => openChat(chat.id),
        },
        el('span', { className: 'avatar-wrap' },
          avatarFor(chat.assistantId ? '✦' : chatTitle(chat)),
          here.length ? el('span', { className: 'presence-dot', 'data-testid': 'presence-dot', title: `Here: ${here.join(', ')}` }) : null),
        el('span', { className: 'chat-item-text' },
          el('span', { className: 'chat-item-title', 'data-testid': 'chat-item-title', text: chatTitle(chat) }),
          el('span', { className: 'chat-item-preview', text: previewOf(lastMessage(chat)) })),
        unread > 0 ? el('span', { className: 'badge', 'data-testid': 'unread-badge', text: unread > 99 ? '99+' : unread }) : null));
    }),
  );
  $('chat-list-empty').hidden = chats.length > 0 || !state.chatsLoaded;
}

function openChat(id) {
  if (state.openId !== id) {
    stopTyping();
    closeMenus();
    state.editing = null;
    state.renaming = null;
  }
  state.openId = id;
  if (id) sessionStorage.setItem(OPEN_KEY, id);
  else sessionStorage.removeItem(OPEN_KEY);
  document.body.classList.toggle('chat-open', !!id);
  $('input').value = '';
  renderChatList();
  renderChat({ toBottom: true });
  if (id) $('input').focus();
}

function renderHeader() {
  const chat = state.chats.get(state.openId);
  if (!chat) return;
  const renaming = state.renaming === chat.id;
  $('title-row').hidden = renaming;
  $('rename-form').hidden = !renaming;
  $('chat-title').textContent = chatTitle(chat);
  $('chat-people').replaceChildren(...people(chat));
}

/** The header's participants, each with a presence dot; in a large chat,
 *  how many are here. */
function people(chat) {
  const present = chat.present || new Set();
  const dot = (on) => el('span', { className: `dot${on ? ' on' : ''}`, 'aria-hidden': 'true' });
  let items;
  if (chat.participants.length > PEOPLE_LISTED) {
    const here = chat.participants.filter((p) => present.has(p)).length;
    items = [el('span', { className: 'person', 'data-testid': 'presence-count', 'data-here': here },
      dot(here > 0), `${here} here of ${chat.participants.length}`)];
  } else {
    items = chat.participants.map((p) => {
      const on = present.has(p);
      return el('span', {
        className: 'person', 'data-testid': 'participant', 'data-user': p, 'data-present': String(on),
        title: chat.present ? `${p} ${on ? 'is here' : 'is away'}` : null,
      }, dot(on), p === me() ? `${p} (you)` : p);
    });
  }
  if (chat.assistantId) items.push(el('span', { className: 'person' }, assistantName(chat.assistantId)));
  return items;
}

function renderTyping() {
  const chat = state.chats.get(state.openId);
  const who = chat ? [...chat.typers.keys()] : [];
  const box = $('typing');
  box.textContent = who.length === 0 ? '' : who.length === 1 ? `${who[0]} is typing…` : `${who.join(', ')} are typing…`;
  box.dataset.typers = who.join(',');
}

/** The quoted line of the message `id`: its sender and the start of its text. */
function quoteParts(chat, id) {
  const t = chat.messages.get(id);
  if (!t) return [el('span', { className: 'quote-text muted', text: 'earlier message' })];
  if (t.deleted) return [el('span', { className: 'quote-text muted', text: 'deleted message' })];
  return [el('span', { className: 'quote-sender', text: senderLabel(t) }), el('span', { className: 'quote-text', text: snippet(t.content) })];
}

function renderReplyBar(chat) {
  const bar = $('reply-bar');
  bar.hidden = !chat.replyTo;
  if (chat.replyTo) {
    bar.dataset.target = chat.replyTo;
    $('reply-bar-text').replaceChildren(el('span', { className: 'muted', text: 'Replying to ' }), ...quoteParts(chat, chat.replyTo));
  }
}

function renderChat({ toBottom = false } = {}) {
  const chat = state.chats.get(state.openId);
  $('chat').hidden = !chat;
  $('no-chat').hidden = !!chat;
  if (!chat) return;
  const scroller = $('scroller');
  const nearBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  renderHeader();
  renderTyping();
  renderReplyBar(chat);
  $('ask').disabled = !state.connected;
  $('load-earlier').hidden = chat.windowStart <= 0;

  // The inline editor survives the re-render, with its focus and caret.
  const editor = state.editing?.chatId === chat.id ? state.editing.input : null;
  const focused = editor && document.activeElement === editor ? [editor.selectionStart, editor.selectionEnd] : null;
  const sorted = [...chat.messages.values()].sort((a, b) => a.seq - b.seq);
  const items = sorted.map((m, i) => messageItem(chat, m, sorted[i - 1]));
  for (const s of state.streams.values()) if (s.convId === chat.id) items.push(streamItem(s));
  for (const p of chat.pending.values()) items.push(pendingItem(chat, p));
  $('messages').replaceChildren(...items);
  if (focused && editor.isConnected) {
    editor.focus({ preventScroll: true });
    editor.setSelectionRange(...focused);
  }
  if (toBottom || nearBottom) scroller.scrollTop = scroller.scrollHeight;
  markRead(chat);
}

function stickToBottom() {
  const s = $('scroller');
  if (s.scrollHeight - s.scrollTop - s.clientHeight < 120) s.scrollTop = s.scrollHeight;
}

function timeOf(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? '' : d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

const assistantName = (id) => (!id || id === 'default' ? 'Assistant' : `Assistant ${id}`);

function senderLabel(m) {
  if (m.message_type === 'assistant') return assistantName(m.sender_id);
  return m.sender_id === me() ? 'You' : m.sender_id;
}

function quoteButton(chat, targetId) {
  return el('button', {
    type: 'button',
    className: 'quote',
    'data-testid': 'reply-quote',
    'data-target': targetId,
    title: chat.messages.has(targetId) ? 'Show the message it answers' : 'Not loaded',
    onclick: () => scrollToMessage(targetId),
  }, ...quoteParts(chat, targetId));
}

function actionButton(testId, icon, label, onclick, extra = '') {
  return el('button', { type: 'button', className: extra, 'data-testid': testId, 'aria-label': label, title: label, text: icon, onclick });
}

/** React, reply, edit, delete: shown on hover (desktop), focus, or a tap. */
function actionsBar(chat, m) {
  const confirming = state.ui.confirmDelete === m.id;
  return el('div', { className: 'actions', role: 'toolbar', 'aria-label': 'Message actions', 'data-testid': 'message-actions' },
    actionButton('action-react', '☺', 'Add a reaction', () => {
      const open = state.ui.pickerFor === m.id;
      closeMenus();
      state.ui.actionsFor = m.id;
      state.ui.pickerFor = open ? null : m.id;
      renderChat();
    }),
    actionButton('action-reply', '↩', 'Reply', () => startReply(chat, m)),
    canEdit(m) ? actionButton('action-edit', '✎', 'Edit', () => startEdit(chat, m)) : null,
    !canDelete(chat, m) ? null : confirming
      ? el('button', {
        type: 'button', className: 'danger', 'data-testid': 'action-delete-confirm', text: 'Delete?',
        title: 'Delete for everyone', onclick: () => { closeMenus(); changeMessage(chat, 'delete_message', m.id); renderChat(); },
      })
      : actionButton('action-delete', 'Delete', 'Delete', () => {
        state.ui.actionsFor = m.id;
        state.ui.confirmDelete = m.id;
        renderChat();
      }));
}

function emojiPicker(chat, m) {
  return el('div', { className: 'picker', role: 'group', 'aria-label': 'Reactions', 'data-testid': 'emoji-picker' },
    ...REACTIONS.map((emoji) => el('button', {
      type: 'button', className: 'emoji-option', 'data-testid': 'emoji-option', 'data-emoji': emoji,
      'aria-label': `React with ${emoji}`, text: emoji,
      onclick: () => {
        closeMenus();
        toggleReaction(chat, m, emoji);
        renderChat();
      },
    })));
}

function reactionChips(chat, m) {
  if (m.deleted || !m.reactions?.length) return null;
  return el('div', { className: 'reactions', 'data-testid': 'reactions' },
    ...m.reactions.map((r) => {
      const ids = r.user_ids || [];
      const mine = ids.includes(me());
      const more = r.count > ids.length ? ` and ${r.count - ids.length} more` : '';
      return el('button', {
        type: 'button',
        className: `chip${mine ? ' mine' : ''}`,
        'data-testid': 'reaction-chip',
        'data-emoji': r.emoji,
        'data-count': r.count,
        'data-mine': String(mine),
        'aria-pressed': String(mine),
        title: `${ids.map((u) => (u === me() ? 'you' : u)).join(', ')}${more}`,
        onclick: () => toggleReaction(chat, m, r.emoji),
      }, el('span', { className: 'chip-emoji', text: r.emoji }), el('span', { className: 'chip-count', text: r.count }));
    }));
}

/** One stored message; the sender line is left out when `prev` has the same
 *  sender and is less than five minutes older. */
function messageItem(chat, m, prev) {
  const mine = m.sender_id === me();
  const kind = m.message_type === 'assistant' ? 'assistant' : mine ? 'mine' : 'theirs';
  const cont = prev && prev.sender_id === m.sender_id && prev.message_type === m.message_type &&
    Date.parse(m.created_at) - Date.parse(prev.created_at) < 5 * 60_000;
  const ui = state.ui;
  const editing = state.editing?.chatId === chat.id && state.editing.id === m.id;
  const classes = ['msg', kind, cont && 'cont', m.deleted && 'deleted', editing && 'editing',
    ui.actionsFor === m.id && 'show-actions', ui.flash === m.id && 'flash'].filter(Boolean).join(' ');

  let body;
  if (m.deleted) {
    body = el('div', { className: 'text placeholder', 'data-testid': 'message-text', text: 'message deleted' });
  } else if (editing) {
    body = el('div', { className: 'editor' },
      state.editing.input,
      el('div', { className: 'editor-hint' },
        'Enter to save · Esc to cancel ',
        el('button', { type: 'button', className: 'link', 'data-testid': 'edit-save', text: 'Save', onclick: saveEdit }),
        ' ',
        el('button', { type: 'button', className: 'link', 'data-testid': 'edit-cancel', text: 'Cancel', onclick: cancelEdit })));
  } else {
    body = el('div', { className: 'text md', 'data-testid': 'message-text' }, ...markdown(m.content));
  }
  const bubble = el('div', { className: 'bubble', title: timeOf(m.created_at), onclick: (e) => onBubbleClick(e, m) },
    m.reply_to && !m.deleted ? quoteButton(chat, m.reply_to) : null,
    body,
    m.edited_at && !m.deleted && !editing
      ? el('span', { className: 'edited', 'data-testid': 'message-edited', title: `Edited ${timeOf(m.edited_at)}`, text: '(edited)' })
      : null);

  return el('li', {
    className: classes, 'data-testid': 'message', 'data-seq': m.seq, 'data-id': m.id, 'data-sender': m.sender_id,
    'data-deleted': m.deleted ? 'true' : null, 'data-edited': m.edited_at && !m.deleted ? 'true' : null,
  },
  el('div', { className: 'meta' },
    el('span', { className: 'sender', 'data-testid': 'message-sender', text: senderLabel(m) }),
    el('time', { datetime: m.created_at, text: timeOf(m.created_at) }),
    ['cancelled', 'error'].includes(m.metadata?.finish_reason)
      ? el('span', { className: 'tag', text: m.metadata.finish_reason === 'cancelled' ? 'stopped' : 'interrupted' })
      : null),
  el('div', { className: 'msg-body' },
    bubble,
    m.deleted || editing ? null : actionsBar(chat, m),
    ui.pickerFor === m.id && !m.deleted ? emojiPicker(chat, m) : null),
  streamNote(chat, m),
  citationList(m),
  reactionChips(chat, m));
}

/** A pending answer: queued (with its place), being written, or failed. */
function streamItem(s) {
  const text = streamText(s);
  const failed = s.phase === 'error';
  const buttons = [];
  if (failed) {
    const wait = s.error.retryAt - Date.now();
    buttons.push(
      el('button', {
        type: 'button', className: 'ghost small', 'data-testid': 'stream-retry', disabled: wait > 0,
        title: wait > 0 ? `Possible in ${Math.ceil(wait / 1000)} s` : 'Ask the assistant again', text: 'Retry',
        onclick: () => retryStream(s),
      }),
      el('button', {
        type: 'button', className: 'ghost small', 'data-testid': 'stream-dismiss', 'aria-label': 'Dismiss',
        title: 'Dismiss', text: '✕', onclick: () => dismissStream(s),
      }));
  } else {
    buttons.push(el('button', {
      type: 'button', className: 'ghost small', 'data-testid': 'cancel-stream', disabled: !!s.cancelling,
      text: s.cancelling ? 'Cancelling…' : 'Cancel', onclick: () => cancelStream(s),
    }));
  }
  const status = failed ? s.error.text : s.phase === 'queued' ? queuedText(s.position) : 'Writing…';
  s.el = el('li', {
    className: `msg assistant streaming ${s.phase}`, 'data-testid': 'stream-bubble', 'data-stream-id': s.id,
    'data-stream-state': s.phase, 'data-position': s.phase === 'queued' ? s.position : null,
    'data-message-id': s.messageId, 'data-error-code': failed ? s.error.code : null,
  },
  el('div', { className: 'meta' },
    el('span', { className: 'sender', text: assistantName(s.assistantId) }),
    s.phase === 'running' ? el('span', { className: 'dots', 'aria-label': 'writing' }, el('i'), el('i'), el('i')) : null,
    ...buttons),
  el('div', { className: 'bubble' },
    el('div', {
      className: `stream-status${failed ? ' error' : ''}`, 'data-testid': 'stream-status', 'data-state': s.phase,
      title: failed && s.error.detail ? s.error.detail : null, hidden: s.phase === 'running' && !!text, text: status,
    }),
    el('div', { className: 'text md', 'data-testid': 'stream-text' }, ...renderMarkdown(text))));
  return s.el;
}

/** A citation's link target: http and https URLs only, else null. */
function citationHref(url) {
  if (typeof url !== 'string' || !/^https?:\/\//i.test(url.trim())) return null;
  try {
    const u = new URL(url.trim());
    return u.protocol === 'http:' || u.protocol === 'https:' ? u.href : null;
  } catch {
    return null;
  }
}

/** The sources an assistant answer cites (`metadata.citations`), as links
 *  named by their title, else their host; a URL that is not http(s) is
 *  shown as text. The same URL cited twice is listed once. */
function citationList(m) {
  const list = m.metadata?.citations;
  if (m.deleted || m.message_type !== 'assistant' || !Array.isArray(list)) return null;
  const seen = new Set();
  const items = [];
  for (const c of list) {
    if (items.length >= MAX_CITATIONS) break;
    if (!c || typeof c.url !== 'string' || !c.url.trim() || seen.has(c.url)) continue;
    seen.add(c.url);
    const href = citationHref(c.url);
    const title = typeof c.title === 'string' ? c.title.trim() : '';
    const name = title || (href ? new URL(href).hostname.replace(/^www\./, '') : c.url.trim());
    items.push(el('li', {}, href
      ? el('a', {
        className: 'citation', 'data-testid': 'citation', href, target: '_blank', rel: 'noopener noreferrer',
        title: c.url, text: name,
      })
      : el('span', { className: 'citation-text', 'data-testid': 'citation-text', title: c.url, text: name })));
  }
  if (!items.length) return null;
  return el('ol', { className: 'citations', 'data-testid': 'citations', 'aria-label': 'Sources' }, ...items);
}

/** Why an answer stopped short (its partial text is the stored message). */
function streamNote(chat, m) {
  const note = chat.streamNotes.get(m.id);
  if (!note || m.deleted) return null;
  return el('div', {
    className: 'stream-note', 'data-testid': 'stream-error-note', 'data-error-code': note.code,
    title: note.detail || null, text: note.text,
  });
}

function pendingItem(chat, p) {
  const status = el('div', { className: 'state', 'data-testid': 'message-state' },
    { sending: 'Sending…', sent: 'Sent', failed: `Not sent${p.error ? `: ${p.error}` : ''}` }[p.state]);
  if (p.state === 'failed') {
    status.append(' ', el('button', { type: 'button', className: 'link', 'data-testid': 'retry-button', text: 'Retry', onclick: () => deliver(chat, p) }));
  }
  return el('li', { className: `msg mine pending ${p.state}`, 'data-testid': 'message', 'data-state': p.state, 'data-client-msg-id': p.cmid },
    el('div', { className: 'meta' }, el('span', { className: 'sender', text: 'You' })),
    el('div', { className: 'bubble' },
      p.replyTo ? quoteButton(chat, p.replyTo) : null,
      el('div', { className: 'text md', 'data-testid': 'message-text' }, ...markdown(p.content))),
    status);
}

function autosize(input) {
  input.style.height = 'auto';
  input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
}

// ------------------------------------------------------------------ wiring

function wire() {
  $('signin-form').addEventListener('submit', signIn);
  $('signout').addEventListener('click', signOut);
  $('new-chat-toggle').addEventListener('click', () => toggleNewChat());
  $('new-chat-cancel').addEventListener('click', () => toggleNewChat(false));
  $('new-chat-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const ids = $('new-chat-invite').value.split(',').map((s) => s.trim().toLowerCase()).filter(Boolean);
    createChat({ title: $('new-chat-title').value.trim() || undefined, participant_ids: ids });
    $('new-chat-form').reset();
    toggleNewChat(false);
  });
  $('new-assistant-chat').addEventListener('click', () =>
    createChat({ title: 'Assistant', assistant_id: 'default' }));
  $('invite-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const id = $('invite-id').value.trim().toLowerCase();
    if (!id || !state.openId) return;
    try {
      upsertChat(await api('POST', `/chats/${state.openId}/participants`, { user_id: id }));
      $('invite-id').value = '';
      renderHeader();
    } catch (err) {
      toast(`Could not invite ${id}: ${err.message}`);
    }
  });
  $('chat-title').addEventListener('click', startRename);
  $('rename-button').addEventListener('click', startRename);
  $('rename-form').addEventListener('submit', (e) => {
    e.preventDefault();
    saveRename();
  });
  $('rename-input').addEventListener('keydown', (e) => {
    if (e.key === 'Escape') {
      e.preventDefault();
      endRename();
    }
  });
  $('rename-input').addEventListener('blur', () => state.renaming && saveRename());
  $('reply-cancel').addEventListener('click', () => {
    const chat = state.chats.get(state.openId);
    if (chat) chat.replyTo = null;
    renderChat();
    $('input').focus();
  });
  $('ask').addEventListener('click', askAssistant);
  $('back').addEventListener('click', () => openChat(null));
  $('load-earlier').addEventListener('click', loadEarlier);
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = $('input');
    sendMessage(input.value);
    input.value = '';
    autosize(input);
  });
  $('input').addEventListener('input', onInput);
  $('input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $('composer').requestSubmit();
    } else if (e.key === 'Escape' && state.chats.get(state.openId)?.replyTo) {
      state.chats.get(state.openId).replyTo = null;
      renderChat();
    }
  });
  $('input').addEventListener('blur', stopTyping);
  // A click outside the message list, or Escape, closes an open message menu.
  document.addEventListener('click', (e) => {
    if (e.composedPath().some((n) => n.id === 'messages')) return;
    if (closeMenus()) renderChat();
  });
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && closeMenus()) renderChat();
  });
  document.addEventListener('visibilitychange', () => {
    markRead(state.chats.get(state.openId));
    renderChatList();
  });
}

function toggleNewChat(show = $('new-chat-form').hidden) {
  $('new-chat-form').hidden = !show;
  $('new-chat-toggle').setAttribute('aria-expanded', String(show));
  if (show) $('new-chat-title').focus();
}

function start() {
  $('signin').hidden = true;
  $('app').hidden = false;
  $('me-name').textContent = state.session.name;
  $('me-id').textContent = `@${state.session.user_id}`;
  $('me-avatar').replaceWith(Object.assign(avatarFor(state.session.user_id), { id: 'me-avatar' }));
  setStatus('connecting');
  setInterval(pollPresence, PRESENCE_POLL_MS);
  const saved = sessionStorage.getItem(OPEN_KEY);
  refreshChats().then(() => {
    if (!state.openId && state.chats.has(saved)) openChat(saved);
  });
  connect();
}

wire();
state.session = loadSession();
if (state.session?.token) {
  start();
} else {
  $('signin').hidden = false;
  $('signin-name').focus();
}
