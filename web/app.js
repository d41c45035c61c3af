// confab demo page, on the @confab/client SDK (clients/js, served at /sdk/).
// The SDK speaks the protocol: the connection over either transport,
// reconnects, the conversation log (seqs, gaps, history, edits), typing,
// presence, read marks, assistant streams and the outbox of unsent messages.
// This file keeps the UI state and renders the SDK's snapshots.
// Plain ES module, no build step. User content only ever goes through
// textContent (Markdown included: it is built as DOM nodes, never as HTML).

import { connect } from '/sdk/index.js';

const API = '/api/v1/chat';
const SESSION_KEY = 'confab.session'; // localStorage: every tab shares the sign-in
const LIMITS_KEY = 'confab.limits'; // localStorage: the server's limits, as the last auth_success told
const OPEN_KEY = 'confab.open'; // sessionStorage: each tab's open chat survives a reload
const DEFAULT_MAX_CHARS = 8000; // until the server says (auth_success.limits.max_message_chars)
const COUNTER_FROM = 0.9; // the character counter shows from this share of the limit on
const TOKEN_KEEP_MS = 10 * 60_000; // a stored token with less life than this is replaced at start
const PRESENCE_LIVE_MAX = 200; // larger chats get no presence_changed...
const PRESENCE_POLL_MS = 30_000; // ...so their presence is asked again this often while shown
const PEOPLE_LISTED = 8; // the header names participants up to this many, else counts them
const NAMES_PER_LOOKUP = 50; // ids per GET /users
const NEAR_BOTTOM_PX = 80; // this close to the bottom, the list follows new messages
const CONTINUE_MS = 5 * 60_000; // a message this soon after the previous one of its sender has no sender line
const REACTIONS = ['👍', '❤️', '😂', '🎉', '😮', '😢', '🙏', '👀'];
const MAX_CITATIONS = 50;
const SEARCH_MIN_CHARS = 2; // shorter queries show the chat list
const SEARCH_DEBOUNCE_MS = 250;
const SEARCH_PAGE = 20;
const FIND_PAGES = 20; // history pages loaded at most to reach a search result (50 messages each)
const FIND_JOIN_MS = 10_000; // how long a result waits for its chat to be joined

// ------------------------------------------------------------------ state

const state = {
  session: null, // {token, user_id, name}
  client: null, // the SDK's Client
  chats: new Map(), // id -> chat (see addChat)
  chatsLoaded: false,
  openId: null,
  wasOnline: false, // for the chat list read again after a reconnect
  maxChars: Number(JSON.parse(localStorage.getItem(LIMITS_KEY) || '{}').max_message_chars) || DEFAULT_MAX_CHARS,
  // Transient UI of the open chat.
  ui: { actionsFor: null, pickerFor: null, confirmDelete: null, flash: null, flashTimer: null },
  editing: null, // {chatId, id, input, busy}: the message being edited inline
  renaming: null, // chat id whose title is being edited
  renameBusy: false,
  cancelling: new Set(), // stream ids whose cancel is on its way
  streamSeen: new Map(), // stream id -> {order, failedAt}: when the page first saw it (and saw it fail)
  streamOrder: 0,
  list: { chatId: null, items: new Map() }, // the open chat's rendered items: key -> {sig, node}
  newBelow: 0, // messages that arrived below while the list was scrolled up
  pinned: true, // the list was at its bottom when last looked: it stays there through resizes
  box: '', // the list's size then (boxOf)
  // Message search (client.search): the query shown, its results so far and the next page's cursor.
  search: { q: '', results: [], cursor: null, busy: false, error: null, run: 0, timer: null, finding: 0 },
};

// The users directory (GET /users?ids=): display names by id, looked up in
// batches as ids show up, kept for the tab's life.
const names = {
  known: new Map(), // id -> name, or null (no name, or never signed in)
  wanted: new Set(), // ids to look up in the next batch
  asking: new Set(), // ids being looked up
  timer: null,
  version: 0, // bumped when names arrive: rendered items that show names depend on it
};

const $ = (id) => document.getElementById(id);

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
    if (c !== null && c !== undefined && c !== false) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
const ICONS = {
  clock: [['circle', { cx: 8, cy: 8, r: 6.25 }], ['path', { d: 'M8 4.5V8l2.5 1.5' }]],
  people: [
    ['circle', { cx: 6, cy: 5.5, r: 2.5 }],
    ['path', { d: 'M1.5 14c0-2.5 2-4.5 4.5-4.5s4.5 2 4.5 4.5' }],
    ['path', { d: 'M10.5 3.2a2.5 2.5 0 0 1 0 4.6M12 9.8c1.5.6 2.5 2.2 2.5 4.2' }],
  ],
};

/** A small line icon, drawn (no emoji font needed): `clock`, `people`. */
function icon(name) {
  const svg = document.createElementNS(SVG_NS, 'svg');
  for (const [k, v] of Object.entries({ viewBox: '0 0 16 16', class: `icon-svg icon-${name}`, 'aria-hidden': 'true' })) svg.setAttribute(k, v);
  for (const [tag, attrs] of ICONS[name]) {
    const shape = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) shape.setAttribute(k, String(v));
    svg.append(shape);
  }
  return svg;
}

function toast(text) {
  const t = $('toast');
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.hidden = true), 5000);
}

const me = () => state.session?.user_id;
const myName = () => state.client?.displayName || state.session?.name || me();
const online = () => state.client?.status.state === 'online';
const reading = () => document.visibilityState === 'visible';

/** Characters as the server counts them (Unicode scalar values, Rust's `chars()`). */
const charCount = (text) => {
  let n = 0;
  for (const _ of text) n += 1;
  return n;
};

/** The user id the server's dev-token route derives from a name
 *  (src/http/dev.rs `user_id_of`): each character lowercased on its own
 *  (Rust's `char::to_lowercase`), letters and digits kept (Rust's
 *  `is_alphanumeric`: Unicode Alphabetic or Numeric), every other run of
 *  characters folded into one `-`, none at either end. "Carol Smith" and
 *  "carol-smith" are both `carol-smith`, "Zoë Q" is `zoë-q`. */
function userIdOf(name) {
  let id = '';
  for (const ch of String(name)) {
    for (const c of ch.toLowerCase()) {
      if (/[\p{Alphabetic}\p{N}]/u.test(c)) id += c;
      else if (id && !id.endsWith('-')) id += '-';
    }
  }
  return id.replace(/-+$/, '');
}

/** Plain words for an SDK error (a ConfabError: `code`, `message`). */
function errorText(e) {
  switch (e?.code) {
    case 'MESSAGE_TOO_LONG':
      return 'too long';
    case 'FORBIDDEN':
      return 'not allowed here';
    case 'NOT_FOUND':
      return 'it is gone';
    case 'RATE_LIMITED':
      return 'too fast; wait a moment';
    case 'DISCONNECTED':
    case 'UNAVAILABLE':
      return 'no connection';
    default:
      return e?.message || String(e);
  }
}

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
//
// The sign-in is kept in localStorage, so every tab of the browser shares
// it: a tab opened later is signed in already, and signing out in one tab
// signs out the others (the `storage` event, see wire()).

function loadSession() {
  try {
    const s = JSON.parse(localStorage.getItem(SESSION_KEY) || 'null');
    return s?.token && s.user_id && s.name ? s : null;
  } catch {
    return null;
  }
}

function saveSession() {
  localStorage.setItem(SESSION_KEY, JSON.stringify(state.session));
}

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

/** Milliseconds until a JWT's `exp` (0 when it cannot be read). */
function lifeLeft(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const { exp } = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), '=')));
    return Math.max(0, exp * 1000 - Date.now());
  } catch {
    return 0;
  }
}

/** The SDK's `token()`: the stored token for the first connection (when it
 *  has a while to live), then a fresh dev token each time the SDK asks
 *  (renewal before expiry, TOKEN_EXPIRED, a refused token). With no
 *  network, the token held is still good until it expires. */
function tokenSource() {
  let first = true;
  return async () => {
    if (first && lifeLeft(state.session.token) > TOKEN_KEEP_MS) {
      first = false;
      return state.session.token;
    }
    first = false;
    try {
      const fresh = await fetchDevToken(state.session.name);
      if (fresh.user_id === state.session.user_id) {
        state.session = fresh;
        saveSession();
      }
    } catch (e) {
      if (!lifeLeft(state.session.token)) throw e;
    }
    return state.session.token;
  };
}

async function signIn(event) {
  event.preventDefault();
  const name = $('signin-name').value.trim();
  $('signin-error').textContent = '';
  if (!name) return;
  try {
    state.session = await fetchDevToken(name);
    saveSession();
    start();
  } catch (e) {
    $('signin-error').textContent = e.message;
  }
}

function signOut() {
  localStorage.removeItem(SESSION_KEY);
  sessionStorage.removeItem(OPEN_KEY);
  state.client?.close();
  location.reload(); // drops the client, timers and every chat at once
}

/** Another tab signed in, out, or renewed the token. */
function onStorage(e) {
  if (e.key !== SESSION_KEY && e.key !== null) return; // null: the storage was cleared
  const s = loadSession();
  if (!state.session) {
    if (s) {
      state.session = s;
      start();
    }
  } else if (!s || s.user_id !== state.session.user_id) {
    location.reload(); // signed out there (or in as someone else): the same here
  } else {
    state.session = s; // a renewed token
  }
}

// ------------------------------------------------------------------ the client

const rest = (method, path, body) => state.client.rest(method, API + path, body);

function startClient() {
  // The SDK checks lengths against the server's limit by itself (auth_success).
  const client = connect({ url: '', token: tokenSource() });
  state.client = client;
  client.on('status', onStatus);
  client.on('conversation', onConversationUpdated);
  client.on('frame', onFrame);
  client.on('error', (e) => {
    if (e.code !== 'TOKEN_EXPIRED') toast(`Connection: ${e.message || e.code}`);
  });
  onStatus();
}

function onStatus() {
  renderStatus();
  if (online()) {
    // Chats created, joined or left while this tab was away come with a
    // fresh list; the SDK joins the ones it follows again by itself.
    if (state.wasOnline) refreshChats();
    state.wasOnline = true;
  }
  scheduleRender(openChatOf()); // waiting sends say so, Ask follows the connection
}

/** Frames the page reads besides the SDK: the server's limits, and being
 *  removed from a chat. */
function onFrame(f) {
  const d = f.data || {};
  if (f.type === 'auth_success' && !d.ref && Number(d.limits?.max_message_chars) > 0) {
    state.maxChars = Number(d.limits.max_message_chars);
    localStorage.setItem(LIMITS_KEY, JSON.stringify(d.limits));
    updateCounter();
  } else if (f.type === 'left' && !d.ref && d.conversation_id) {
    removeChat(d.conversation_id);
  }
}

// ------------------------------------------------------------------ status pill

/** "Online" (WebSocket), "Limited connection" (HTTP transport),
 *  "Reconnecting… (N s)", "Offline"; the node in the tooltip. */
function renderStatus() {
  const s = state.client.status;
  const pill = $('status');
  let key;
  let text;
  let title;
  if (s.state === 'online') {
    key = 'connected';
    text = s.transport === 'http' ? 'Limited connection' : 'Online';
    title = s.transport === 'http'
      ? `Connected to node ${s.nodeId} over HTTP (an event stream and POSTs): WebSockets do not get through here; one is tried every minute`
      : `Connected to node ${s.nodeId} over a WebSocket`;
  } else if (s.state === 'closed' || !navigator.onLine) {
    key = 'offline';
    text = 'Offline';
    title = s.state === 'closed'
      ? `Disconnected${s.lastError ? ` (${s.lastError.message})` : ''}: sign out and in again`
      : 'No network: messages you write wait here and are sent once back online';
  } else if (s.state === 'reconnecting') {
    key = 'reconnecting';
    const secs = s.retryAt ? Math.ceil((s.retryAt - Date.now()) / 1000) : 0;
    text = secs > 0 ? `Reconnecting… (${secs} s)` : 'Reconnecting…';
    title = `The connection was lost${s.lastError ? ` (${s.lastError.message})` : ''}; messages you write are sent once back`;
  } else {
    key = 'connecting';
    text = 'Connecting…';
    title = 'Opening the connection';
  }
  pill.dataset.state = key;
  if (key === 'connected') {
    pill.dataset.transport = s.transport;
    pill.dataset.nodeId = s.nodeId || '?';
  } else {
    delete pill.dataset.transport;
    delete pill.dataset.nodeId;
  }
  if (pill.textContent !== text) pill.textContent = text;
  pill.title = title;
  $('ask').disabled = key !== 'connected';
}

// ------------------------------------------------------------------ display names

/** A user's display name: theirs from the directory, else the id. */
function nameOf(id) {
  if (!id) return '';
  if (id === me()) return myName();
  const n = names.known.get(id);
  if (n === undefined) wantName(id);
  return n || id;
}

function wantName(id) {
  if (!state.client || names.known.has(id) || names.asking.has(id) || names.wanted.has(id)) return;
  names.wanted.add(id);
  names.timer ??= setTimeout(askNames, 30);
}

/** One batch of ids unknown so far; the page re-renders with the names. */
async function askNames() {
  names.timer = null;
  const ids = [...names.wanted];
  names.wanted.clear();
  for (const id of ids) names.asking.add(id);
  try {
    await lookUpUsers(ids);
  } catch {
    for (const id of ids) names.known.set(id, null); // the lookup failed: their ids are shown
  } finally {
    for (const id of ids) names.asking.delete(id);
  }
  names.version += 1;
  renderAll();
}

/** GET /users?ids=...: the users of `ids` who ever signed in, as a Map
 *  id -> {id, name?, first_seen_at, last_seen_at}; the others are absent.
 *  Their names go to the cache. Throws ConfabError. */
async function lookUpUsers(ids) {
  const found = new Map();
  for (let i = 0; i < ids.length; i += NAMES_PER_LOOKUP) {
    const batch = ids.slice(i, i + NAMES_PER_LOOKUP);
    const r = await rest('GET', `/users?ids=${batch.map(encodeURIComponent).join(',')}`);
    for (const u of r?.users || []) found.set(u.id, u);
  }
  for (const id of ids) {
    const name = found.get(id)?.name;
    names.known.set(id, typeof name === 'string' && name.trim() ? name.trim() : null);
  }
  names.version += 1;
  return found;
}

/** Who of `ids` never signed in (the directory does not know them). */
async function neverSignedIn(ids) {
  const found = await lookUpUsers(ids);
  return ids.filter((id) => !found.has(id));
}


// ------------------------------------------------------------------ chats
//
// Every chat of the list has its SDK Conversation (joined on the
// connection, not just the open one, so that the sidebar's unread badges,
// previews and presence dots stay live). The page keeps, per chat, what
// only the UI needs: the conversation info, the reply being written, the
// draft, and why a partly stored answer stopped.

function addChat(info) {
  const conv = state.client.conversation(info.id);
  const chat = {
    id: info.id,
    info,
    conv,
    snap: conv.getSnapshot(),
    replyTo: null, // id of the message the composer answers
    draft: '',
    streamNotes: new Map(), // message id -> why its (partly stored) answer stopped
    addedAt: Date.now(),
    unsubscribe: null,
  };
  state.chats.set(chat.id, chat);
  chat.unsubscribe = conv.subscribe(() => onSnapshot(chat));
  onSnapshot(chat);
  return chat;
}

/** Adds or updates a chat from the list, a REST answer or `conversation_updated`. */
function upsertChat(info) {
  const chat = state.chats.get(info.id);
  if (!chat) return addChat(info);
  chat.info = { ...chat.info, ...info };
  scheduleRender(chat);
  return chat;
}

function removeChat(id) {
  const chat = state.chats.get(id);
  if (!chat) return;
  state.chats.delete(id);
  chat.unsubscribe();
  chat.conv.close();
  if (state.openId === id) openChat(null);
  renderChatList();
}

const openChatOf = () => state.chats.get(state.openId) || null;

/** Every chat of the user (the SDK reads every page of GET /chats). */
async function refreshChats() {
  const asked = Date.now();
  try {
    const list = await state.client.listConversations();
    const seen = new Set();
    for (const info of list) {
      seen.add(info.id);
      upsertChat(info);
    }
    // Gone from the list (left or archived while this tab was away),
    // unless it appeared after the list was asked for.
    for (const chat of [...state.chats.values()]) {
      if (!seen.has(chat.id) && chat.addedAt < asked) removeChat(chat.id);
    }
    state.chatsLoaded = true;
    renderChatList();
  } catch (e) {
    console.warn('chat list failed', e);
    if (!state.chatsLoaded) setTimeout(refreshChats, 3_000);
  }
}

/** `conversation_updated`: created, renamed, participants, archived, owner. */
function onConversationUpdated(info, reason) {
  if (info.archived || (Array.isArray(info.participants) && !info.participants.includes(me()))) {
    removeChat(info.id);
    return;
  }
  if (reason === 'participant_added') {
    // Someone new: their name may be newer than what is cached.
    for (const id of info.participants || []) if (names.known.get(id) === null) names.known.delete(id);
  }
  upsertChat(info);
}

/** The SDK changed a conversation's snapshot. */
function onSnapshot(chat) {
  const prev = chat.snap;
  const snap = chat.conv.getSnapshot();
  chat.snap = snap;
  if (snap.info && snap.info !== prev?.info) chat.info = { ...chat.info, ...snap.info };
  if (snap.error && (snap.error.code === 'NOT_FOUND' || snap.error.code === 'FORBIDDEN')) {
    queueMicrotask(() => removeChat(chat.id)); // not ours (any more)
    return;
  }
  settleStreams(chat, snap);
  scheduleRender(chat);
}

/** Failed answers: one whose partial text is stored shows its reason under
 *  that message; the others stay (saying why, with Retry) until dismissed
 *  or until a later answer starts in the chat. */
function settleStreams(chat, snap) {
  let latestLive = -1;
  for (const s of snap.streams) {
    let seen = state.streamSeen.get(s.stream_id);
    if (!seen) state.streamSeen.set(s.stream_id, (seen = { order: state.streamOrder++, failedAt: 0 }));
    if (s.phase === 'failed' && !seen.failedAt) seen.failedAt = Date.now();
    if (s.phase !== 'failed') latestLive = Math.max(latestLive, seen.order);
  }
  const drop = [];
  for (const s of snap.streams) {
    if (s.phase !== 'failed') continue;
    const stored = storedAnswer(snap, s);
    if (stored) {
      chat.streamNotes.set(stored.id, streamError(s));
      drop.push(s.stream_id);
    } else if (state.streamSeen.get(s.stream_id).order < latestLive) {
      drop.push(s.stream_id);
    }
  }
  // Not from inside the SDK's notification: after it.
  if (drop.length) queueMicrotask(() => drop.forEach((id) => chat.conv.dismiss(id)));
}

/** The stored message of a stream's answer, if it is loaded. */
function storedAnswer(snap, s) {
  return snap.messages.find((m) => m.seq > 0 && (
    (s.message_id && m.id === s.message_id) || m.metadata?.stream_id === s.stream_id)) || null;
}

function chatTitle(chat) {
  if (chat.info.title) return chat.info.title;
  const others = (chat.info.participants || []).filter((p) => p !== me()).map(nameOf);
  return others.length ? others.join(', ') : 'Just you';
}

function lastMessage(chat) {
  const list = chat.snap.messages;
  return list.length ? list[list.length - 1] : null;
}

/** Messages from others above the user's read mark (the SDK counts them);
 *  none on the chat being looked at. */
function unreadOf(chat) {
  if (chat.id === state.openId && reading()) return 0;
  const s = chat.snap;
  if (!s.joined && !s.lastSeq && chat.info.unread_count != null) return chat.info.unread_count;
  return s.unread;
}

function activity(chat) {
  const m = lastMessage(chat);
  return Date.parse(m?.created_at || chat.info.updated_at || chat.info.created_at) || 0;
}

async function createChat(body) {
  try {
    const info = await state.client.createConversation(body);
    upsertChat(info);
    openChat(info.id);
    return true;
  } catch (e) {
    toast(`Could not create the chat: ${errorText(e)}`);
    return false;
  }
}

/** The new-chat form: people are invited by name (their ids derived as the
 *  server derives them); names of people who never signed in are refused. */
async function submitNewChat(e) {
  e.preventDefault();
  const error = $('new-chat-error');
  error.textContent = '';
  const wanted = $('new-chat-invite').value.split(',').map((s) => s.trim()).filter(Boolean);
  const blank = wanted.filter((n) => !userIdOf(n));
  if (blank.length) {
    error.textContent = `"${blank[0]}" is not a name: a name needs a letter or a digit.`;
    return;
  }
  const ids = [...new Set(wanted.map(userIdOf))].filter((id) => id !== me());
  if (ids.length) {
    let missing;
    try {
      missing = await neverSignedIn(ids);
    } catch (err) {
      error.textContent = `Could not look those people up: ${errorText(err)}`;
      return;
    }
    if (missing.length) {
      const who = missing.map((id) => wanted.find((n) => userIdOf(n) === id));
      error.textContent = `${who.join(', ')} ${who.length > 1 ? 'have' : 'has'} never signed in: they can be invited once they have.`;
      return;
    }
  }
  const title = $('new-chat-title').value.trim() || undefined;
  if (await createChat({ title, participant_ids: ids })) {
    $('new-chat-form').reset();
    toggleNewChat(false);
  }
}

/** The header's invite: a name, its id derived as the server does; someone
 *  who never signed in is not added, and the page says so. */
async function invite(e) {
  e.preventDefault();
  const chat = openChatOf();
  const raw = $('invite-id').value.trim();
  if (!chat || !raw) return;
  const id = userIdOf(raw);
  if (!id) return inviteNote('error', `"${raw}" is not a name: a name needs a letter or a digit.`);
  if ((chat.info.participants || []).includes(id)) return inviteNote('info', `${nameOf(id)} is in this chat already.`);
  inviteNote('info', `Looking up ${raw}…`);
  try {
    const missing = await neverSignedIn([id]);
    if (missing.length) {
      return inviteNote('error', `${raw} has never signed in, so there is nobody to add yet: ask them to sign in once with that name.`);
    }
    upsertChat(await rest('POST', `/chats/${chat.id}/participants`, { user_id: id }));
    $('invite-id').value = '';
    inviteNote('ok', `${nameOf(id)} was added.`);
  } catch (err) {
    inviteNote('error', `Could not invite ${raw}: ${errorText(err)}`);
  }
}

function inviteNote(kind, text) {
  const note = $('invite-note');
  note.dataset.kind = kind;
  note.textContent = text;
  clearTimeout(inviteNote.timer);
  if (kind === 'ok') inviteNote.timer = setTimeout(() => (note.textContent = ''), 4000);
}

// ------------------------------------------------------------------ sending

function sendMessage() {
  const chat = openChatOf();
  const input = $('input');
  const text = input.value;
  if (!chat || !text.trim()) return;
  const n = charCount(text);
  if (n > state.maxChars) {
    // Kept in the input, to be shortened.
    updateCounter();
    toast(`Too long to send: ${n} characters, the limit is ${state.maxChars}.`);
    return;
  }
  const replyTo = chat.replyTo;
  chat.replyTo = null;
  // Shown at once ('sending'); the SDK's outbox sends it now or once back
  // online, exactly once. A failure shows on the entry itself.
  chat.conv.send(text, replyTo ? { replyTo } : undefined).catch(() => {});
  input.value = '';
  chat.draft = '';
  autosize(input);
  updateCounter();
  renderChat({ toBottom: true });
}

/** Characters left, shown as the limit nears; over it, Send is blocked. */
function updateCounter() {
  const input = $('input');
  const counter = $('counter');
  const n = charCount(input.value);
  const limit = state.maxChars;
  const over = n > limit;
  counter.hidden = n < Math.floor(limit * COUNTER_FROM);
  counter.textContent = over ? `${n - limit} over` : `${limit - n} left`;
  counter.title = `${n} of ${limit} characters${over ? ': shorten it to send' : ''}`;
  counter.dataset.count = n;
  counter.dataset.limit = limit;
  counter.dataset.over = String(over);
  $('send').disabled = over;
  input.setAttribute('aria-invalid', String(over));
}

/** An edit, deletion or reaction through the SDK; true once the server took it. */
async function change(verb, call) {
  try {
    await call();
    return true;
  } catch (e) {
    toast(`Could not ${verb}: ${errorText(e)}`);
    return false;
  }
}

function markRead(chat) {
  if (!chat || chat.id !== state.openId || !reading()) return;
  if (chat.snap.lastSeq > chat.snap.readSeq) chat.conv.markRead(); // the SDK sends only a mark that moves
}

// ------------------------------------------------------------------ assistant answers
//
// The SDK assembles each answer (AssistantStream): queued (with its place),
// running (the text grows, a tab that joins mid-answer gets the text so
// far), failed (the reason, until dismissed). A completed one leaves the
// list: its stored message arrives among the messages.

/** Why an answer failed, for the page: {code, text, detail, retryAt}. */
function streamError(s) {
  const e = s.error || {};
  const seen = state.streamSeen.get(s.stream_id);
  const wait = e.code === 'RATE_LIMITED' && e.retryAfterMs > 0 ? e.retryAfterMs : 0;
  return {
    code: e.code || 'INTERNAL',
    text: streamErrorText(e),
    detail: typeof e.message === 'string' ? e.message : '',
    retryAt: wait ? (seen?.failedAt || Date.now()) + wait : 0,
  };
}

/** What the page says when an answer fails. */
function streamErrorText(e) {
  const detail = typeof e.message === 'string' && e.message ? `: ${e.message}` : '';
  switch (e.code) {
    case 'UNAVAILABLE':
      return 'The assistant is busy; try again';
    case 'RATE_LIMITED': {
      const secs = Math.ceil((Number(e.retryAfterMs) || 0) / 1000);
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

const assistantName = (id) => (!id || id === 'default' ? 'Assistant' : `Assistant ${id}`);

function askAssistant() {
  const chat = openChatOf();
  chat?.conv.ask().catch((e) => toast(`Assistant: ${errorText(e)}`));
}

/** A failed answer asked again: the same message, the same assistant. */
function retryStream(chat, s) {
  chat.conv.dismiss(s.stream_id);
  const options = {};
  if (s.assistant_id) options.assistantId = s.assistant_id;
  if (s.reply_to) options.messageId = s.reply_to;
  chat.conv.ask(options).catch((e) => toast(`Assistant: ${errorText(e)}`));
}

/** Stops an answer, queued or running: it ends by itself (stream_complete,
 *  cancelled); the SDK drops one the server no longer knows. */
function cancelStream(chat, s) {
  state.cancelling.add(s.stream_id);
  scheduleRender(chat);
  chat.conv.cancel(s.stream_id).catch((e) => {
    if (e.code === 'NOT_FOUND') return; // ending anyway
    state.cancelling.delete(s.stream_id);
    scheduleRender(chat);
    toast(`Cancel failed: ${errorText(e)}`);
  });
}

// ------------------------------------------------------------------ message actions

function closeMenus() {
  const ui = state.ui;
  const open = ui.actionsFor || ui.pickerFor || ui.confirmDelete;
  ui.actionsFor = ui.pickerFor = ui.confirmDelete = null;
  return !!open;
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
  return !m.deleted && ((m.message_type === 'user' && m.sender_id === me()) || chat.info.owner_id === me());
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
  const m = chat?.snap.messages.find((x) => x.id === ed.id);
  const content = ed.input.value;
  if (!m || m.deleted || content === m.content) return cancelEdit();
  if (!content.trim()) return toast('A message cannot be empty: delete it instead.');
  if (charCount(content) > state.maxChars) return toast(`Too long: the limit is ${state.maxChars} characters.`);
  ed.busy = true;
  ed.input.readOnly = true;
  const ok = await change('edit', () => chat.conv.edit(m.id, content));
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
  change(mine ? 'remove the reaction' : 'react', () => (mine ? chat.conv.unreact(m.id, emoji) : chat.conv.react(m.id, emoji)));
}

function scrollToMessage(id, { behavior = 'smooth' } = {}) {
  const li = [...$('messages').querySelectorAll('[data-testid=message][data-id]')].find((e) => e.dataset.id === id);
  if (!li) return toast('That message is not loaded.');
  li.scrollIntoView({ block: 'center', behavior });
  const ui = state.ui;
  ui.flash = id;
  li.classList.add('flash');
  clearTimeout(ui.flashTimer);
  ui.flashTimer = setTimeout(() => {
    ui.flash = null;
    for (const e of $('messages').querySelectorAll('.flash')) e.classList.remove('flash');
    renderChat();
  }, 1600);
}

// ------------------------------------------------------------------ search
//
// The sidebar's search box: `client.search()` (GET /search) after a pause in
// typing, results (best first) in place of the chat list, "More" for the
// next page. A result opens its chat at the message: older history pages
// are loaded until it is there (at most FIND_PAGES), then it is scrolled to
// and flashed like a reply's target. Snippets are plain text (textContent).

function onSearchInput() {
  const s = state.search;
  const q = $('search').value.trim();
  clearTimeout(s.timer);
  s.timer = null;
  if (q.length < SEARCH_MIN_CHARS) return endSearch({ keepInput: true });
  if (q === s.q && (s.results.length || s.busy)) return;
  s.timer = setTimeout(() => {
    s.timer = null;
    runSearch(q);
  }, SEARCH_DEBOUNCE_MS);
}

/** Back to the chat list: the results dropped, a search on its way ignored. */
function endSearch({ keepInput = false } = {}) {
  const s = state.search;
  clearTimeout(s.timer);
  Object.assign(s, { q: '', results: [], cursor: null, busy: false, error: null, run: s.run + 1, timer: null });
  if (!keepInput) $('search').value = '';
  renderSearch();
}

/** The first page of `q`, or with `cursor` the next one (appended). */
async function runSearch(q, cursor = null) {
  const s = state.search;
  const run = ++s.run;
  if (!cursor) Object.assign(s, { q, results: [], cursor: null });
  s.busy = true;
  s.error = null;
  renderSearch();
  try {
    const page = await state.client.search(q, { limit: SEARCH_PAGE, ...(cursor ? { cursor } : {}) });
    if (run !== s.run) return; // typed on meanwhile, or closed
    const seen = new Set(s.results.map((r) => r.message.id));
    s.results = [...s.results, ...page.results.filter((r) => !seen.has(r.message.id))];
    s.cursor = page.next_cursor || null;
  } catch (e) {
    if (run !== s.run) return;
    s.error = e;
  }
  s.busy = false;
  renderSearch();
}

function searchMore() {
  const s = state.search;
  if (s.q && s.cursor && !s.busy) runSearch(s.q, s.cursor);
}

/** "14:05" today, else "3 Mar" (with the year when not this one). */
function shortDate(iso) {
  const d = dateOf(iso);
  const today = new Date();
  if (dayKey(d.toISOString()) === dayKey(today.toISOString())) return timeOf(iso);
  return d.toLocaleDateString([], {
    day: 'numeric', month: 'short',
    year: d.getFullYear() === today.getFullYear() ? undefined : 'numeric',
  });
}

function renderSearch() {
  const s = state.search;
  const active = !!s.q;
  $('chat-list-wrap').classList.toggle('searching', active);
  $('search-results').hidden = !active;
  $('search-results').setAttribute('aria-busy', String(s.busy));
  if (!active) {
    $('search-list').replaceChildren();
    return;
  }
  $('search-list').replaceChildren(...s.results.map((r) => {
    const chat = state.chats.get(r.conversation_id);
    const title = chat ? chatTitle(chat) : 'A chat not in your list';
    const m = r.message;
    const text = r.snippet || snippet(m.content, 120);
    return el('li', {},
      el('button', {
        type: 'button',
        className: 'search-result',
        'data-testid': 'search-result',
        'data-chat-id': r.conversation_id,
        'data-message-id': m.id,
        title: `${title}\n${senderLabel(m)}: ${text}\n${dateTimeOf(m.created_at)}`,
        onclick: () => openResult(r),
      },
      el('span', { className: 'search-result-head' },
        el('span', { className: 'search-result-title', 'data-testid': 'search-result-title', text: title }),
        el('time', { className: 'search-result-date', 'data-testid': 'search-result-date', dateTime: m.created_at, text: shortDate(m.created_at) })),
      el('span', { className: 'search-result-sender', 'data-testid': 'search-result-sender', text: senderLabel(m) }),
      el('span', { className: 'search-result-snippet', 'data-testid': 'search-result-snippet', text })));
  }));
  let note = '';
  if (s.busy) note = s.results.length ? 'Loading more…' : 'Searching…';
  else if (s.error?.code === 'NOT_FOUND') note = 'Search is not available on this server.';
  else if (s.error) note = `Search failed: ${errorText(s.error)}`;
  else if (!s.results.length) note = `No messages match “${s.q}”.`;
  $('search-note').textContent = note;
  $('search-note').hidden = !note;
  $('search-note').dataset.kind = s.error ? 'error' : s.busy ? 'busy' : 'info';
  $('search-more').hidden = !s.cursor || s.busy || !!s.error;
}

/** Opens a result's chat at its message, loading older history until it is there. */
async function openResult(r) {
  const chat = state.chats.get(r.conversation_id);
  if (!chat) return toast('That chat is no longer in your list.');
  const id = r.message.id;
  const run = ++state.search.finding;
  openChat(chat.id);
  const here = () => chat.conv.getSnapshot().messages.some((m) => m.id === id);
  const current = () => run === state.search.finding && state.openId === chat.id;
  try {
    await joinedSnapshot(chat);
    for (let page = 0; !here() && page < FIND_PAGES; page++) {
      if (!current() || !chat.conv.getSnapshot().hasOlder) break;
      await chat.conv.loadOlder();
    }
  } catch (e) {
    if (current()) toast(`Could not load earlier messages: ${errorText(e)}`);
    return;
  }
  if (!current()) return;
  chat.snap = chat.conv.getSnapshot();
  renderChat();
  if (!here()) return toast(r.message.deleted ? 'That message was deleted.' : 'That is an earlier message, too far back to show here.');
  scrollToMessage(id, { behavior: 'auto' });
  state.pinned = isNearBottom();
}

/** Resolves once the chat is joined (its first history page asked), or after FIND_JOIN_MS. */
function joinedSnapshot(chat) {
  if (chat.conv.getSnapshot().joined) return Promise.resolve();
  return new Promise((resolve) => {
    let off = null;
    const done = () => {
      clearTimeout(timer);
      off?.();
      resolve();
    };
    const timer = setTimeout(done, FIND_JOIN_MS);
    off = chat.conv.subscribe(() => chat.conv.getSnapshot().joined && done());
  });
}

// ------------------------------------------------------------------ rename

function startRename() {
  const chat = openChatOf();
  if (!chat) return;
  state.renaming = chat.id;
  const input = $('rename-input');
  input.value = chat.info.title || '';
  input.placeholder = chatTitle(chat);
  renderHeader(chat);
  input.focus();
  input.select();
}

async function saveRename() {
  if (state.renameBusy) return;
  const chat = state.chats.get(state.renaming);
  const title = $('rename-input').value.trim();
  if (!chat || !title || title === chat.info.title) return endRename();
  state.renameBusy = true;
  try {
    upsertChat(await rest('PATCH', `/chats/${chat.id}`, { title }));
    state.renameBusy = false;
    endRename();
    renderChatList();
  } catch (e) {
    state.renameBusy = false;
    toast(`Could not rename: ${errorText(e)}`);
    $('rename-input').focus();
  }
}

function endRename() {
  if (state.renameBusy) return;
  state.renaming = null;
  const chat = openChatOf();
  if (chat) renderHeader(chat);
}


// ------------------------------------------------------------------ rendering

let renderQueued = new Set();

/** Coalesces the re-renders a burst of snapshots asks for into one. */
function scheduleRender(chat) {
  if (!chat) return;
  if (renderQueued.size === 0) {
    setTimeout(() => {
      const queued = renderQueued;
      renderQueued = new Set();
      renderChatList();
      if (queued.has(state.openId)) renderChat();
    }, 0);
  }
  renderQueued.add(chat.id);
}

function renderAll() {
  renderChatList();
  renderChat();
  if (state.search.q) renderSearch(); // names arrived
}

function avatarFor(id) {
  const span = el('span', { className: 'avatar', 'aria-hidden': 'true', text: ([...id][0] || '?').toUpperCase() });
  let h = 0;
  for (const c of id) h = (h * 31 + c.codePointAt(0)) % 360;
  span.style.background = `hsl(${h} 55% 88%)`;
  span.style.color = `hsl(${h} 60% 28%)`;
  return span;
}

function senderLabel(m) {
  if (m.message_type === 'assistant') return assistantName(m.sender_id);
  return m.sender_id === me() ? 'You' : nameOf(m.sender_id);
}

function previewOf(m) {
  if (!m) return 'No messages yet';
  return `${senderLabel(m)}: ${m.deleted ? 'message deleted' : snippet(m.content, 120)}`;
}

/** The other users present in a chat. */
function othersPresent(chat) {
  return chat.snap.present.filter((u) => u !== me());
}

function renderChatList() {
  const list = $('chat-list');
  const chats = [...state.chats.values()].sort((a, b) => activity(b) - activity(a));
  list.replaceChildren(
    ...chats.map((chat) => {
      const unread = unreadOf(chat);
      const here = othersPresent(chat);
      const title = chatTitle(chat);
      const preview = previewOf(lastMessage(chat));
      return el('li', {},
        el('button', {
          type: 'button',
          className: `chat-item${chat.id === state.openId ? ' active' : ''}`,
          'data-testid': 'chat-item',
          'data-chat-id': chat.id,
          'aria-current': chat.id === state.openId ? 'true' : null,
          title: `${title}\n${preview}`,
          onclick: () => openChat(chat.id),
        },
        el('span', { className: 'avatar-wrap' },
          avatarFor(chat.info.assistant_id ? '✦' : title),
          here.length ? el('span', { className: 'presence-dot', 'data-testid': 'presence-dot', title: `Here: ${here.map(nameOf).join(', ')}` }) : null),
        el('span', { className: 'chat-item-text' },
          el('span', { className: 'chat-item-title', 'data-testid': 'chat-item-title', text: title }),
          el('span', { className: 'chat-item-preview', 'data-testid': 'chat-item-preview', text: preview })),
        unread > 0 ? el('span', { className: 'badge', 'data-testid': 'unread-badge', text: unread > 99 ? '99+' : unread }) : null));
    }),
  );
  $('chat-list-empty').hidden = chats.length > 0 || !state.chatsLoaded;
  renderTitle();
}

/** "(3) confab": the messages waiting to be read, in every chat. */
function renderTitle() {
  let n = 0;
  for (const chat of state.chats.values()) n += unreadOf(chat);
  const title = n > 0 ? `(${n > 999 ? '999+' : n}) confab` : 'confab';
  if (document.title !== title) document.title = title;
}

function openChat(id) {
  const before = openChatOf();
  if (state.openId !== id) {
    if (before) {
      before.draft = $('input').value;
      before.conv.stopTyping();
    }
    closeMenus();
    state.editing = null;
    state.renaming = null;
    state.newBelow = 0;
    $('chat-head').classList.remove('people-open');
    $('invite-note').textContent = '';
  }
  state.openId = id;
  if (id) sessionStorage.setItem(OPEN_KEY, id);
  else sessionStorage.removeItem(OPEN_KEY);
  document.body.classList.toggle('chat-open', !!id);
  const chat = openChatOf();
  $('input').value = chat?.draft || '';
  updateCounter();
  renderChatList();
  renderChat({ toBottom: true });
  autosize($('input'));
  if (id) $('input').focus();
}

function renderHeader(chat) {
  const renaming = state.renaming === chat.id;
  $('title-row').hidden = renaming;
  $('rename-form').hidden = !renaming;
  const title = chatTitle(chat);
  if ($('chat-title').textContent !== title) $('chat-title').textContent = title;
  $('chat-people').replaceChildren(...people(chat));
  // Phones: the participants are behind one button, "● 3".
  const here = othersPresent(chat).length;
  const toggle = $('people-toggle');
  const count = (chat.info.participants || []).length;
  toggle.replaceChildren(...(here ? [el('span', { className: 'dot', 'aria-hidden': 'true' })] : []), icon('people'), ` ${count}`);
  toggle.setAttribute('aria-label', `${count} ${count === 1 ? 'person' : 'people'}${here ? `, ${here} here` : ''}: show them and invite`);
  toggle.setAttribute('aria-expanded', String($('chat-head').classList.contains('people-open')));
}

/** The header's participants, each with a presence dot; in a large chat,
 *  how many are here. */
function people(chat) {
  const present = new Set(chat.snap.present);
  const known = chat.snap.joined;
  const participants = chat.info.participants || [];
  const dot = (on) => el('span', { className: `dot${on ? ' on' : ''}`, 'aria-hidden': 'true' });
  let items;
  if (participants.length > PEOPLE_LISTED) {
    const here = participants.filter((p) => present.has(p)).length;
    items = [el('span', { className: 'person', 'data-testid': 'presence-count', 'data-here': here },
      dot(here > 0), `${here} here of ${participants.length}`)];
  } else {
    items = participants.map((p) => {
      const on = present.has(p);
      const name = nameOf(p);
      return el('span', {
        className: 'person', 'data-testid': 'participant', 'data-user': p, 'data-present': String(on),
        title: `${name === p ? p : `${name} (${p})`}${known ? (on ? ' is here' : ' is away') : ''}`,
      }, dot(on), p === me() ? `${name} (you)` : name);
    });
  }
  if (chat.info.assistant_id) items.push(el('span', { className: 'person' }, assistantName(chat.info.assistant_id)));
  return items;
}

function renderTyping(chat) {
  const who = chat.snap.typing.filter((u) => u !== me()).map(nameOf);
  const box = $('typing');
  const text = who.length === 0 ? '' : who.length === 1 ? `${who[0]} is typing…` : `${who.join(', ')} are typing…`;
  if (box.textContent !== text) box.textContent = text;
  box.dataset.typers = chat.snap.typing.join(',');
}

/** The quoted line of the message `id`: its sender and the start of its text. */
function quoteParts(chat, id) {
  const t = chat.snap.messages.find((m) => m.id === id);
  if (!t) return [el('span', { className: 'quote-text muted', text: 'earlier message' })];
  if (t.deleted) return [el('span', { className: 'quote-text muted', text: 'deleted message' })];
  return [el('span', { className: 'quote-sender', text: senderLabel(t) }), el('span', { className: 'quote-text', text: snippet(t.content) })];
}

/** What a quote shows, for the signature of the item holding it. */
function quoteSig(chat, id) {
  const t = id && chat.snap.messages.find((m) => m.id === id);
  return t ? [t.deleted, t.sender_id, snippet(t.content)] : id ? 'earlier' : null;
}

function renderReplyBar(chat) {
  const bar = $('reply-bar');
  bar.hidden = !chat.replyTo;
  if (chat.replyTo) {
    bar.dataset.target = chat.replyTo;
    $('reply-bar-text').replaceChildren(el('span', { className: 'muted', text: 'Replying to ' }), ...quoteParts(chat, chat.replyTo));
  }
}

const isNearBottom = (s = $('scroller')) => s.scrollHeight - s.scrollTop - s.clientHeight < NEAR_BOTTOM_PX;
/** The list's size: a scroll that changes it is the layout's, not the user's. */
const boxOf = (s) => `${s.scrollHeight}x${s.clientHeight}`;

function renderChat({ toBottom = false } = {}) {
  const chat = openChatOf();
  $('chat').hidden = !chat;
  $('no-chat').hidden = !!chat;
  if (!chat) {
    state.list = { chatId: null, items: new Map() };
    $('messages').replaceChildren();
    return;
  }
  const scroller = $('scroller');
  const follow = toBottom || isNearBottom(scroller);
  renderHeader(chat);
  renderTyping(chat);
  renderReplyBar(chat);
  $('ask').disabled = !online();
  $('load-earlier').hidden = !chat.snap.hasOlder;

  // The inline editor survives a re-render of its message, with its focus and caret.
  const editor = state.editing?.chatId === chat.id ? state.editing.input : null;
  const focused = editor && document.activeElement === editor ? [editor.selectionStart, editor.selectionEnd] : null;
  const fresh = reconcile(chat, listItems(chat));
  if (focused && editor.isConnected && document.activeElement !== editor) {
    editor.focus({ preventScroll: true });
    editor.setSelectionRange(...focused);
  }
  if (follow) {
    scroller.scrollTop = scroller.scrollHeight;
    state.newBelow = 0;
  } else {
    state.newBelow += fresh;
  }
  state.pinned = follow;
  state.box = boxOf(scroller);
  renderJump();
  markRead(chat);
}

/** Puts the open chat's items in the list, reusing the element of every
 *  item whose signature did not change (so a new message or a piece of a
 *  streamed answer touches only its own element). Returns how many new
 *  messages from others were added after the last one shown before. */
function reconcile(chat, items) {
  const list = $('messages');
  const old = state.list.chatId === chat.id ? state.list.items : new Map();
  const next = new Map();
  let lastOld = -1;
  items.forEach((it, i) => {
    if (old.has(it.key)) lastOld = i;
  });
  let fresh = 0;
  const nodes = items.map((it, i) => {
    const held = old.get(it.key);
    const node = held && held.sig === it.sig ? held.node : it.build();
    next.set(it.key, { sig: it.sig, node });
    if (!held && old.size && i > lastOld && it.counts) fresh += 1;
    return node;
  });
  let cursor = list.firstChild;
  for (const node of nodes) {
    if (node === cursor) cursor = cursor.nextSibling;
    else list.insertBefore(node, cursor);
  }
  while (cursor) {
    const after = cursor.nextSibling;
    cursor.remove();
    cursor = after;
  }
  state.list = { chatId: chat.id, items: next };
  return fresh;
}

/** The open chat as list items {key, sig, build, counts}: a day line before
 *  each day's first message, the messages (stored ones, then ours not
 *  stored yet), then the answers being written. */
function listItems(chat) {
  const snap = chat.snap;
  const items = [];
  const seenBy = seenByOthers(chat);
  let day = null;
  let prev = null;
  for (const m of snap.messages) {
    const d = dayKey(m.created_at);
    if (d !== day) {
      day = d;
      prev = null;
      const label = dayLabel(m.created_at);
      items.push({ key: `day:${d}`, sig: label, counts: false, build: () => el('li', { className: 'day', 'data-testid': 'day-separator', 'data-day': d, text: label }) });
    }
    const stored = m.seq > 0 && m.state === 'sent';
    items.push(stored ? messageItem(chat, m, prev, seenBy?.key === m.key ? seenBy.who : null) : pendingItem(chat, m, prev));
    prev = m;
  }
  for (const s of snap.streams) {
    if (s.phase === 'failed' ? storedAnswer(snap, s) : s.message_id && snap.messages.some((m) => m.id === s.message_id && m.seq > 0)) continue;
    items.push(streamItem(chat, s));
  }
  return items;
}

/** My latest stored message and who else has read it (read receipts). */
function seenByOthers(chat) {
  const mine = [...chat.snap.messages].reverse().find((m) => m.seq > 0 && m.sender_id === me() && !m.deleted);
  if (!mine) return null;
  const who = Object.entries(chat.snap.readBy)
    .filter(([u, seq]) => u !== me() && seq >= mine.seq)
    .map(([u]) => nameOf(u));
  return who.length ? { key: mine.key, who } : null;
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
        title: 'Delete for everyone', onclick: () => {
          closeMenus();
          change('delete', () => chat.conv.delete(m.id));
          renderChat();
        },
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
        title: `${ids.map((u) => (u === me() ? 'you' : nameOf(u))).join(', ')}${more}`,
        onclick: () => toggleReaction(chat, m, r.emoji),
      }, el('span', { className: 'chip-emoji', text: r.emoji }), el('span', { className: 'chip-count', text: r.count }));
    }));
}

function quoteButton(chat, targetId) {
  const loaded = chat.snap.messages.some((m) => m.id === targetId);
  return el('button', {
    type: 'button',
    className: 'quote',
    'data-testid': 'reply-quote',
    'data-target': targetId,
    title: loaded ? 'Show the message it answers' : 'Not loaded',
    onclick: () => scrollToMessage(targetId),
  }, ...quoteParts(chat, targetId));
}

/** The foot of a bubble: "(edited)" and the time. */
function stamp(m, extra = null) {
  return el('span', { className: 'stamp' },
    m.edited_at && !m.deleted
      ? el('span', { className: 'edited', 'data-testid': 'message-edited', title: `Edited ${dateTimeOf(m.edited_at)}`, text: '(edited)' })
      : null,
    extra,
    el('time', { 'data-testid': 'message-time', datetime: m.created_at, title: dateTimeOf(m.created_at), text: timeOf(m.created_at) }));
}

/** Whether `m` goes on from `prev` (the same sender, less than five minutes
 *  later): then it has no sender line. */
const continues = (prev, m) => !!prev && prev.sender_id === m.sender_id && prev.message_type === m.message_type &&
  Date.parse(m.created_at) - Date.parse(prev.created_at) < CONTINUE_MS;

/** One stored message. */
function messageItem(chat, m, prev, seenBy) {
  const mine = m.sender_id === me();
  const cont = continues(prev, m);
  const ui = state.ui;
  const editing = state.editing?.chatId === chat.id && state.editing.id === m.id;
  const note = chat.streamNotes.get(m.id);
  const flags = [ui.actionsFor === m.id, ui.pickerFor === m.id, ui.confirmDelete === m.id, ui.flash === m.id, editing];
  const sig = JSON.stringify([m.id, m.seq, m.content, m.deleted, m.edited_at, m.reactions, m.metadata?.finish_reason,
    m.metadata?.citations, m.reply_to && quoteSig(chat, m.reply_to), cont, flags, note?.text, seenBy, chat.info.owner_id,
    names.version, timeOf(m.created_at)]);
  return {
    key: m.key || m.id,
    sig,
    counts: !mine,
    build: () => buildMessage(chat, m, { mine, cont, editing, note, seenBy }),
  };
}

function buildMessage(chat, m, { mine, cont, editing, note, seenBy }) {
  const kind = m.message_type === 'assistant' ? 'assistant' : mine ? 'mine' : 'theirs';
  const ui = state.ui;
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
  const bubble = el('div', { className: 'bubble', onclick: (e) => onBubbleClick(e, m) },
    m.reply_to && !m.deleted ? quoteButton(chat, m.reply_to) : null,
    body,
    editing ? null : stamp(m));
  const finish = m.metadata?.finish_reason;
  return el('li', {
    className: classes, 'data-testid': 'message', 'data-seq': m.seq, 'data-id': m.id, 'data-sender': m.sender_id,
    'data-deleted': m.deleted ? 'true' : null, 'data-edited': m.edited_at && !m.deleted ? 'true' : null,
  },
  el('div', { className: 'meta' },
    el('span', { className: 'sender', 'data-testid': 'message-sender', text: senderLabel(m) }),
    ['cancelled', 'error'].includes(finish)
      ? el('span', { className: 'tag', text: finish === 'cancelled' ? 'stopped' : 'interrupted' })
      : null),
  el('div', { className: 'msg-body' },
    bubble,
    m.deleted || editing ? null : actionsBar(chat, m),
    ui.pickerFor === m.id && !m.deleted ? emojiPicker(chat, m) : null),
  note && !m.deleted
    ? el('div', { className: 'stream-note', 'data-testid': 'stream-error-note', 'data-error-code': note.code, title: note.detail || null, text: note.text })
    : null,
  citationList(m),
  reactionChips(chat, m),
  seenBy ? el('div', { className: 'seen', 'data-testid': 'seen-by', text: `Seen by ${seenBy.join(', ')}` }) : null);
}

/** One of ours not stored yet: sending (waiting for the connection, when
 *  there is none: the SDK's outbox sends it once back), or failed. */
function pendingItem(chat, m, prev) {
  const waiting = m.state === 'sending' && !online();
  const cont = continues(prev, m);
  const sig = JSON.stringify([m.state, waiting, cont, m.content, m.reply_to && quoteSig(chat, m.reply_to), m.error?.code, timeOf(m.created_at)]);
  return { key: m.key, sig, counts: false, build: () => buildPending(chat, m, waiting, cont) };
}

function buildPending(chat, m, waiting, cont) {
  let status;
  if (m.state === 'failed') {
    const retryable = !['MESSAGE_TOO_LONG', 'FORBIDDEN', 'NOT_FOUND', 'INVALID_FRAME'].includes(m.error?.code);
    status = el('div', { className: 'state', 'data-testid': 'message-state', title: m.error?.message || null },
      `Not sent: ${errorText(m.error)} `,
      retryable
        ? el('button', { type: 'button', className: 'link', 'data-testid': 'retry-button', text: 'Retry', onclick: () => chat.conv.retry(m.key) })
        : el('button', {
          type: 'button', className: 'link', 'data-testid': 'edit-unsent', text: 'Edit',
          title: 'Back into the input, to change it', onclick: () => {
            chat.conv.discard(m.key);
            $('input').value = m.content;
            autosize($('input'));
            updateCounter();
            $('input').focus();
          },
        }),
      el('button', { type: 'button', className: 'link', 'data-testid': 'discard-button', text: 'Discard', onclick: () => chat.conv.discard(m.key) }));
  } else if (waiting) {
    status = el('div', {
      className: 'state', 'data-testid': 'message-state', 'data-waiting': 'true',
      title: 'Waiting for connection: it is sent by itself once back online',
    }, icon('clock'), 'Waiting for connection');
  } else {
    status = el('div', { className: 'state', 'data-testid': 'message-state', text: 'Sending…' });
  }
  return el('li', {
    className: `msg mine pending ${m.state}${cont ? ' cont' : ''}`, 'data-testid': 'message', 'data-state': m.state,
    'data-client-msg-id': m.client_msg_id || m.key, 'data-waiting': waiting ? 'true' : null,
  },
  el('div', { className: 'meta' }, el('span', { className: 'sender', text: 'You' })),
  el('div', { className: 'bubble' },
    m.reply_to ? quoteButton(chat, m.reply_to) : null,
    el('div', { className: 'text md', 'data-testid': 'message-text' }, ...markdown(m.content)),
    stamp(m)),
  status);
}

/** A pending answer: queued (with its place), being written, or failed. */
function streamItem(chat, s) {
  const failed = s.phase === 'failed';
  const phase = failed ? 'error' : s.phase;
  const error = failed ? streamError(s) : null;
  const wait = error ? Math.max(0, Math.ceil((error.retryAt - Date.now()) / 1000)) : 0;
  const cancelling = state.cancelling.has(s.stream_id);
  const sig = JSON.stringify([phase, s.position, s.text, s.message_id, s.assistant_id, cancelling, error?.text, wait]);
  return { key: `stream:${s.stream_id}`, sig, counts: false, build: () => buildStream(chat, s, { phase, error, wait, cancelling }) };
}

function buildStream(chat, s, { phase, error, wait, cancelling }) {
  const text = s.text || '';
  const buttons = [];
  if (error) {
    buttons.push(
      el('button', {
        type: 'button', className: 'ghost small', 'data-testid': 'stream-retry', disabled: wait > 0,
        title: wait > 0 ? `Possible in ${wait} s` : 'Ask the assistant again', text: 'Retry',
        onclick: () => retryStream(chat, s),
      }),
      el('button', {
        type: 'button', className: 'ghost small', 'data-testid': 'stream-dismiss', 'aria-label': 'Dismiss',
        title: 'Dismiss', text: '✕', onclick: () => chat.conv.dismiss(s.stream_id),
      }));
  } else {
    buttons.push(el('button', {
      type: 'button', className: 'ghost small', 'data-testid': 'cancel-stream', disabled: cancelling,
      text: cancelling ? 'Cancelling…' : 'Cancel', onclick: () => cancelStream(chat, s),
    }));
  }
  const status = error ? error.text : phase === 'queued' ? queuedText(s.position) : 'Writing…';
  return el('li', {
    className: `msg assistant streaming ${phase}`, 'data-testid': 'stream-bubble', 'data-stream-id': s.stream_id,
    'data-stream-state': phase, 'data-position': phase === 'queued' ? s.position : null,
    'data-message-id': s.message_id, 'data-error-code': error ? error.code : null,
  },
  el('div', { className: 'meta' },
    el('span', { className: 'sender', text: assistantName(s.assistant_id || chat.info.assistant_id) }),
    phase === 'running' ? el('span', { className: 'dots', 'aria-label': 'writing' }, el('i'), el('i'), el('i')) : null,
    ...buttons),
  el('div', { className: 'bubble' },
    el('div', {
      className: `stream-status${error ? ' error' : ''}`, 'data-testid': 'stream-status', 'data-state': phase,
      title: error?.detail || null, hidden: phase === 'running' && !!text, text: status,
    }),
    el('div', { className: 'text md', 'data-testid': 'stream-text' }, ...renderMarkdown(text))));
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

/** "Jump to latest", while the list is scrolled up: with how many new
 *  messages arrived below meanwhile. */
function renderJump() {
  const jump = $('jump');
  const away = !isNearBottom();
  jump.hidden = !away;
  jump.dataset.count = state.newBelow;
  const label = state.newBelow ? `${state.newBelow} new` : null;
  const want = `${away}|${label}`;
  if (jump.dataset.shown === want) return;
  jump.dataset.shown = want;
  jump.replaceChildren(el('span', { 'aria-hidden': 'true', text: '↓' }), ' Latest',
    ...(label ? [el('span', { className: 'count', 'data-testid': 'jump-count', text: label })] : []));
  jump.title = label ? `${label} below: jump to the latest` : 'Jump to the latest message';
}

function jumpToLatest() {
  const s = $('scroller');
  s.scrollTop = s.scrollHeight;
  state.newBelow = 0;
  state.pinned = true;
  renderJump();
  $('input').focus({ preventScroll: true });
}

async function loadEarlier() {
  const chat = openChatOf();
  if (!chat) return;
  const button = $('load-earlier');
  const scroller = $('scroller');
  button.disabled = true;
  try {
    await chat.conv.loadOlder();
  } catch (e) {
    toast(`Could not load earlier messages: ${errorText(e)}`);
  } finally {
    button.disabled = false;
  }
  // Render now and keep the messages in view where they were.
  const fromBottom = scroller.scrollHeight - scroller.scrollTop;
  chat.snap = chat.conv.getSnapshot();
  renderChat();
  scroller.scrollTop = scroller.scrollHeight - fromBottom;
}

/** Grows a textarea with its text, up to 160 px (its own height when empty or not shown). */
function autosize(input) {
  input.style.height = '';
  if (!input.value || !input.offsetParent) return;
  input.style.height = 'auto';
  input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
}

// ------------------------------------------------------------------ dates

const dateOf = (iso) => {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? new Date() : d;
};

/** The local day of a timestamp, as YYYY-MM-DD. */
function dayKey(iso) {
  const d = dateOf(iso);
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;
}

/** "Today", "Yesterday", else the date ("Monday, 3 March"; the year when not this one). */
function dayLabel(iso) {
  const d = dateOf(iso);
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (dayKey(d.toISOString()) === dayKey(today.toISOString())) return 'Today';
  if (dayKey(d.toISOString()) === dayKey(yesterday.toISOString())) return 'Yesterday';
  return d.toLocaleDateString([], {
    weekday: 'long', day: 'numeric', month: 'long',
    year: d.getFullYear() === today.getFullYear() ? undefined : 'numeric',
  });
}

const timeOf = (iso) => dateOf(iso).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
const dateTimeOf = (iso) => dateOf(iso).toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' });


// ------------------------------------------------------------------ presence
//
// The SDK keeps each chat's present users live (`presence` after every
// join, then `presence_changed`). Chats of more than PRESENCE_LIVE_MAX
// participants get no `presence_changed`: they are asked again every
// PRESENCE_POLL_MS while open or in view in the sidebar.

function pollPresence() {
  if (!online() || !reading()) return;
  const view = document.querySelector('.chat-list-wrap').getBoundingClientRect();
  for (const chat of state.chats.values()) {
    if (!chat.snap.joined || (chat.info.participants || []).length <= PRESENCE_LIVE_MAX) continue;
    const item = document.querySelector(`[data-testid=chat-item][data-chat-id="${chat.id}"]`)?.getBoundingClientRect();
    const inView = item && item.height > 0 && item.bottom > view.top && item.top < view.bottom;
    if (chat.id === state.openId || inView) chat.conv.refreshPresence().catch(() => {});
  }
}

/** Once a second: the reconnect countdown, Retry buttons waiting out a rate limit. */
function tick() {
  if (!state.client) return;
  if (state.client.status.state === 'reconnecting') renderStatus();
  const chat = openChatOf();
  if (chat?.snap.streams.some((s) => s.phase === 'failed')) scheduleRender(chat);
}

// ------------------------------------------------------------------ wiring

function wire() {
  $('signin-form').addEventListener('submit', signIn);
  $('signout').addEventListener('click', signOut);
  window.addEventListener('storage', onStorage);
  $('new-chat-toggle').addEventListener('click', () => toggleNewChat());
  $('new-chat-cancel').addEventListener('click', () => toggleNewChat(false));
  $('new-chat-form').addEventListener('submit', submitNewChat);
  $('new-assistant-chat').addEventListener('click', () => createChat({ title: 'Assistant', assistant_id: 'default' }));
  $('invite-form').addEventListener('submit', invite);
  $('people-toggle').addEventListener('click', () => {
    const open = $('chat-head').classList.toggle('people-open');
    $('people-toggle').setAttribute('aria-expanded', String(open));
    if (open) $('invite-id').focus();
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
    const chat = openChatOf();
    if (chat) chat.replyTo = null;
    renderChat();
    $('input').focus();
  });
  $('ask').addEventListener('click', askAssistant);
  $('back').addEventListener('click', () => openChat(null));
  $('load-earlier').addEventListener('click', loadEarlier);
  $('jump').addEventListener('click', jumpToLatest);
  $('search').addEventListener('input', onSearchInput);
  $('search').addEventListener('keydown', (e) => {
    if (e.key !== 'Escape') return;
    e.preventDefault();
    endSearch();
  });
  $('search-more').addEventListener('click', searchMore);
  // A list at its bottom stays there when the window or the list's contents
  // resize (a phone turned, the keyboard shown, a code block laid out): a
  // scroll that comes with a new size is the layout's, not the user's.
  const keepPinned = () => {
    const scroller = $('scroller');
    const now = boxOf(scroller);
    if (now !== state.box) {
      state.box = now;
      if (state.pinned && !isNearBottom(scroller)) scroller.scrollTop = scroller.scrollHeight;
    } else {
      state.pinned = isNearBottom(scroller);
    }
    if (state.pinned) state.newBelow = 0;
    renderJump();
  };
  $('scroller').addEventListener('scroll', keepPinned, { passive: true });
  if (typeof ResizeObserver === 'function') {
    const watch = new ResizeObserver(keepPinned);
    watch.observe($('scroller'));
    watch.observe($('messages'));
  } else {
    window.addEventListener('resize', keepPinned);
  }
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    sendMessage();
  });
  $('input').addEventListener('input', () => {
    const input = $('input');
    autosize(input);
    updateCounter();
    const chat = openChatOf();
    if (!chat) return;
    if (input.value.trim()) chat.conv.typing();
    else chat.conv.stopTyping();
  });
  $('input').addEventListener('keydown', (e) => {
    const chat = openChatOf();
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $('composer').requestSubmit();
    } else if (e.key === 'Escape' && chat?.replyTo) {
      chat.replyTo = null;
      renderChat();
    }
  });
  $('input').addEventListener('blur', () => openChatOf()?.conv.stopTyping());
  // A click outside the message list, or Escape, closes an open message menu.
  document.addEventListener('click', (e) => {
    const path = e.composedPath();
    if (!path.some((n) => n.id === 'chat-head')) $('chat-head').classList.remove('people-open');
    if (path.some((n) => n.id === 'messages')) return;
    if (closeMenus()) renderChat();
  });
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape') return;
    $('chat-head').classList.remove('people-open');
    if (closeMenus()) renderChat();
  });
  document.addEventListener('visibilitychange', () => {
    markRead(openChatOf());
    renderChatList();
  });
  // The browser's own idea of the network: "Offline" at once, waiting sends say so.
  for (const type of ['online', 'offline']) {
    window.addEventListener(type, () => {
      if (!state.client) return;
      renderStatus();
      scheduleRender(openChatOf());
    });
  }
}

function toggleNewChat(show = $('new-chat-form').hidden) {
  $('new-chat-form').hidden = !show;
  $('new-chat-toggle').setAttribute('aria-expanded', String(show));
  $('new-chat-error').textContent = '';
  if (show) $('new-chat-title').focus();
}

function start() {
  $('signin').hidden = true;
  $('app').hidden = false;
  startClient();
  $('me-name').textContent = myName();
  $('me-id').textContent = `@${state.session.user_id}`;
  $('me-avatar').replaceWith(Object.assign(avatarFor(myName()), { id: 'me-avatar' }));
  updateCounter();
  setInterval(pollPresence, PRESENCE_POLL_MS);
  setInterval(tick, 1000);
  const saved = sessionStorage.getItem(OPEN_KEY);
  refreshChats().then(() => {
    if (!state.openId && state.chats.has(saved)) openChat(saved);
  });
}

wire();
state.session = loadSession();
if (state.session) {
  start();
} else {
  $('signin').hidden = false;
  $('signin-name').focus();
}
