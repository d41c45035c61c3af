// confab demo client: one WebSocket per tab (docs/protocol.md), REST for the
// chat list, chat creation and as a fallback while the socket is down.
// Plain ES module, no dependencies. User content only ever goes through
// textContent.

const API = '/api/v1/chat';
const SESSION_KEY = 'confab.session';
const OPEN_KEY = 'confab.open'; // the open chat survives a reload too
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10_000;
const REQUEST_TIMEOUT_MS = 10_000; // also the longest wait for auth_success
const HEARTBEAT_MS = 20_000; // a ping unanswered for REQUEST_TIMEOUT_MS drops the socket
const TYPING_RESEND_MS = 2_500; // refresh `typing: true` while typing goes on
const TYPING_IDLE_MS = 3_000; // quiet this long: `typing: false`
const TYPER_TTL_MS = 6_500; // a remote typer expires without news (server typing_ttl + margin)
const POLL_MS = 3_000; // REST fallback polling
const HISTORY_WINDOW = 50; // messages loaded per chat at first
const HISTORY_CAP = 500; // unread messages replayed at most

// ------------------------------------------------------------------ state

const state = {
  session: null, // {token, user_id, name}
  chats: new Map(), // id -> chat (see newChat)
  openId: null,
  ws: null,
  connected: false, // authenticated socket
  nodeId: null,
  attempt: 0,
  reconnectTimer: null,
  heartbeat: null,
  pollTimer: null,
  renewTimer: null,
  replies: new Map(), // frame id -> {resolve, reject, timer}
  streams: new Map(), // stream_id -> {id, convId, messageId, assistantId, parts, el}
  typing: { convId: null, sentAt: 0, idle: null },
  chatsLoaded: false,
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
  location.reload(); // drops the socket, timers and every chat at once
}

/** A fresh dev token for the same name, sent on the socket before the old one expires. */
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

async function api(method, path, body, retried = false) {
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
    return api(method, path, body, true);
  }
  if (r.status === 204) return null;
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw Object.assign(new Error(data.message || `HTTP ${r.status}`), { code: data.code });
  return data;
}

// ------------------------------------------------------------------ socket

function wsUrl() {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${API}/ws`;
}

function connect() {
  clearTimeout(state.reconnectTimer);
  const ws = new WebSocket(wsUrl());
  state.ws = ws;
  ws.onopen = () => ws.send(JSON.stringify({ type: 'auth', token: state.session.token }));
  ws.onmessage = (e) => ws === state.ws && onFrame(JSON.parse(e.data));
  ws.onclose = (e) => onClose(ws, e);
  // A socket that never authenticates (a hung node, a lost handshake) is dropped.
  setTimeout(() => ws === state.ws && !state.connected && drop(ws), REQUEST_TIMEOUT_MS);
}

/** Treats the socket as closed now, without waiting for a closing handshake. */
function drop(ws) {
  ws.close();
  onClose(ws, { code: 1006 });
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
    state.ws.send(JSON.stringify({ type, id, ...(data ? { data } : {}), ...extra }));
  });
}

/** Sends a frame that needs no answer (typing, mark_read); dropped while offline. */
function fire(type, data) {
  if (state.connected) state.ws.send(JSON.stringify({ type, data }));
}

function onClose(ws, event) {
  if (ws !== state.ws) return;
  state.ws = null;
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
  }
  state.streams.clear(); // stored answers come back through the replay
  state.typing.convId = null;
  renderChat();
  if (event.code === 4001 || event.code === 4003) {
    // Refused or expired token: get a fresh one before trying again.
    renewToken().finally(scheduleReconnect);
  } else {
    scheduleReconnect();
  }
}

function scheduleReconnect() {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.attempt);
  const delay = Math.min(BACKOFF_MAX_MS, base * (1 + Math.random() * 0.5));
  state.attempt += 1;
  // The first retries are quick; beyond that the tab works over REST meanwhile.
  setStatus(state.attempt > 2 ? 'fallback' : 'reconnecting');
  startPolling();
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = setTimeout(connect, delay);
}

async function onAuthenticated(data) {
  state.connected = true;
  state.attempt = 0;
  state.nodeId = data.node_id || '?';
  stopPolling();
  setStatus('connected');
  scheduleRenewal(data.expires_at);
  const ws = state.ws;
  state.heartbeat = setInterval(() => {
    request('ping', {}).catch((e) => e.code === 'TIMEOUT' && ws === state.ws && drop(ws));
  }, HEARTBEAT_MS);
  await refreshChats();
  await Promise.all([...state.chats.values()].map(join));
  markRead(state.chats.get(state.openId)); // a mark set while offline
  renderChat();
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
    case 'messages':
      d.messages.forEach(ingest);
      break;
    case 'typing_indicator':
      onTyping(d);
      break;
    case 'stream_start':
    case 'stream_content':
      onStreamContent(d);
      break;
    case 'stream_complete':
      onStreamEnd(d.stream_id, d.message);
      break;
    case 'stream_error':
      onStreamEnd(d.stream_id, null);
      if (d.conversation_id === state.openId) toast(`Assistant stopped: ${d.message}`);
      break;
    case 'conversation_updated':
      onConversationUpdated(d.conversation);
      break;
    case 'read_receipt':
      onReadReceipt(d);
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

function setStatus(status) {
  const pill = $('status');
  pill.dataset.state = status;
  if (status === 'connected') {
    pill.dataset.nodeId = state.nodeId;
    pill.textContent = `Connected · ${state.nodeId}`;
    pill.title = `WebSocket open on node ${state.nodeId}`;
  } else {
    delete pill.dataset.nodeId;
    pill.textContent = { connecting: 'Connecting…', reconnecting: 'Reconnecting…', fallback: 'REST fallback' }[status];
    pill.title = status === 'fallback'
      ? 'The socket is down: messages go over REST and the chat is polled, while reconnecting'
      : 'Opening the WebSocket';
  }
  $('ask').disabled = status !== 'connected';
}

// ------------------------------------------------------------------ REST fallback

function startPolling() {
  if (state.pollTimer) return;
  state.pollTimer = setInterval(poll, POLL_MS);
}

function stopPolling() {
  clearInterval(state.pollTimer);
  state.pollTimer = null;
}

async function poll() {
  if (state.connected) return stopPolling();
  try {
    await refreshChats();
    const chat = state.chats.get(state.openId);
    if (chat) {
      const page = await api('GET', `/chats/${chat.id}?after_seq=${chat.contig}&limit=200`);
      page.messages.forEach(ingest);
    }
  } catch (e) {
    console.warn('poll failed', e);
  }
}

// ------------------------------------------------------------------ chats

function newChat(conv) {
  const lastSeq = conv.last_seq || 0;
  const lastRead = conv.last_read_seq || 0;
  // Replay the unread part and some context, within reason.
  const since = Math.max(0, lastSeq - HISTORY_CAP, Math.min(lastRead, lastSeq - HISTORY_WINDOW));
  return {
    id: conv.id,
    title: conv.title || '',
    participants: conv.participants || [],
    assistantId: conv.assistant_id || null,
    updatedAt: conv.updated_at,
    serverSeq: lastSeq, // last seq the server reported over REST
    lastRead, // this user's read mark, from any tab
    readSent: lastRead,
    windowStart: since, // messages at or below it are not loaded
    contig: since, // every seq up to here is held (since_seq of a rejoin)
    messages: new Map(), // seq -> message
    ids: new Set(),
    pending: new Map(), // client_msg_id -> {cmid, content, state, error}
    typers: new Map(), // user_id -> expiry timer
    joined: false,
    joining: null,
    gapTimer: null,
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
    chat.participants = conv.participants || chat.participants;
    chat.updatedAt = conv.updated_at || chat.updatedAt;
    chat.serverSeq = Math.max(chat.serverSeq, conv.last_seq || 0);
    if (conv.last_read_seq != null) chat.lastRead = Math.max(chat.lastRead, conv.last_read_seq);
  }
  return chat;
}

function removeChat(id) {
  state.chats.delete(id);
  if (state.openId === id) openChat(null);
  renderChatList();
}

async function refreshChats() {
  const asked = Date.now();
  try {
    const list = await api('GET', '/chats');
    const seen = new Set(list.map((c) => c.id));
    list.forEach(upsertChat);
    // Gone from the list (removed or archived while this tab was offline),
    // unless it appeared after the list was asked for.
    for (const chat of [...state.chats.values()]) {
      if (!seen.has(chat.id) && chat.addedAt < asked) state.chats.delete(chat.id);
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
 *  replays exactly what this tab has not seen. */
function join(chat) {
  if (!state.connected || chat.joined) return Promise.resolve();
  if (!chat.joining) {
    chat.joining = request('join_conversation', { conversation_id: chat.id, since_seq: chat.contig })
      .then((d) => {
        chat.joined = true;
        chat.participants = d.participants || chat.participants;
        if (chat.id === state.openId) renderHeader();
      })
      .catch((e) => {
        if (e.code === 'FORBIDDEN' || e.code === 'NOT_FOUND') removeChat(chat.id);
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

/** Messages from others after this user's read mark. */
function unreadCount(chat) {
  let n = 0;
  for (const m of chat.messages.values()) if (m.seq > chat.lastRead && m.sender_id !== me()) n += 1;
  n += Math.max(0, chat.windowStart - chat.lastRead); // older than what is loaded
  n += Math.max(0, chat.serverSeq - Math.max(chat.contig, chat.lastRead)); // known over REST only
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

// ------------------------------------------------------------------ messages

function ingest(m) {
  const chat = state.chats.get(m.conversation_id);
  if (!chat) return;
  if (m.client_msg_id && m.sender_id === me() && chat.pending.delete(m.client_msg_id)) scheduleRender(chat);
  if (chat.ids.has(m.id) || chat.messages.has(m.seq)) return; // once, by id and seq
  chat.messages.set(m.seq, m);
  chat.ids.add(m.id);
  chat.windowStart = Math.min(chat.windowStart, m.seq - 1);
  for (const s of state.streams.values()) if (s.messageId === m.id) state.streams.delete(s.id);
  dropTyper(chat, m.sender_id);
  while (chat.messages.has(chat.contig + 1)) chat.contig += 1;
  chat.serverSeq = Math.max(chat.serverSeq, m.seq);
  if (chat.serverSeq > chat.contig) scheduleGapFill(chat);
  scheduleRender(chat);
}

/** A seq skipped: ask for what is missing unless it shows up on its own. */
function scheduleGapFill(chat) {
  if (chat.gapTimer) return;
  chat.gapTimer = setTimeout(async () => {
    chat.gapTimer = null;
    if (chat.serverSeq <= chat.contig) return;
    try {
      if (state.connected) {
        await request('load_messages', { conversation_id: chat.id, after_seq: chat.contig, limit: 200 });
      } else {
        const page = await api('GET', `/chats/${chat.id}?after_seq=${chat.contig}&limit=200`);
        page.messages.forEach(ingest);
      }
    } catch (e) {
      console.warn('gap fill failed', e);
    }
  }, 400);
}

async function loadEarlier() {
  const chat = state.chats.get(state.openId);
  if (!chat || chat.windowStart <= 0) return;
  const before = chat.windowStart + 1;
  const page = await api('GET', `/chats/${chat.id}?before_seq=${before}&limit=${HISTORY_WINDOW}`);
  page.messages.forEach(ingest);
  if (!page.has_more) chat.windowStart = 0;
  renderChat();
}

function sendMessage(content) {
  const chat = state.chats.get(state.openId);
  if (!chat || !content.trim()) return;
  const p = { cmid: uid(), content, state: 'sending', error: '' };
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
  try {
    if (state.connected) {
      try {
        const ack = await request('send_message', data);
        p.state = 'sent';
        if (chat.ids.has(ack.message_id)) chat.pending.delete(p.cmid);
        scheduleRender(chat);
        return;
      } catch (e) {
        if (e.code !== 'DISCONNECTED' && e.code !== 'TIMEOUT') throw e;
      }
    }
    // No socket: the REST fallback (deduplicated by client_msg_id too).
    const m = await api('POST', `/chats/${chat.id}/messages`, { content: p.content, client_msg_id: p.cmid });
    ingest(m);
  } catch (e) {
    p.state = 'failed';
    p.error = e instanceof TypeError ? 'no connection' : e.message; // fetch fails with TypeError
  }
  scheduleRender(chat);
}

const reading = () => document.visibilityState === 'visible';

function markRead(chat) {
  if (!chat || chat.id !== state.openId || !reading()) return;
  const seq = chat.contig;
  if (seq > chat.lastRead) chat.lastRead = seq;
  if (seq > chat.readSent && state.connected) {
    chat.readSent = seq;
    fire('mark_read', { conversation_id: chat.id, seq });
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

function onStreamContent(d) {
  const chat = state.chats.get(d.conversation_id);
  if (!chat || chat.ids.has(d.message_id)) return;
  let s = state.streams.get(d.stream_id);
  if (!s) {
    s = { id: d.stream_id, convId: chat.id, messageId: d.message_id, assistantId: d.assistant_id, parts: new Map(), el: null };
    state.streams.set(s.id, s);
    scheduleRender(chat);
  }
  if (d.content !== undefined) s.parts.set(d.index, d.content);
  if (s.el) {
    s.el.querySelector('.text').textContent = streamText(s);
    stickToBottom();
  }
}

/** The frames received so far, in index order (one that joined late starts mid-way). */
function streamText(s) {
  return [...s.parts.entries()].sort((a, b) => a[0] - b[0]).map((e) => e[1]).join('');
}

function onStreamEnd(streamId, message) {
  const s = state.streams.get(streamId);
  state.streams.delete(streamId);
  if (message) ingest(message);
  if (s) scheduleRender(state.chats.get(s.convId));
}

async function askAssistant() {
  try {
    await request('stream_response', { conversation_id: state.openId });
  } catch (e) {
    toast(e.code === 'DISCONNECTED' ? 'The assistant needs the live connection.' : `Assistant: ${e.message}`);
  }
}

async function cancelStream(s) {
  s.cancelling = true;
  scheduleRender(state.chats.get(s.convId));
  try {
    await request('cancel_stream', { stream_id: s.id });
  } catch (e) {
    // NOT_FOUND: the stream ended on its own just before the cancel.
    if (e.code !== 'NOT_FOUND') toast(`Cancel failed: ${e.message}`);
  }
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

function renderChatList() {
  const list = $('chat-list');
  const chats = [...state.chats.values()].sort((a, b) => activity(b) - activity(a));
  list.replaceChildren(
    ...chats.map((chat) => {
      const last = lastMessage(chat);
      const unread = chat.id === state.openId && reading() ? 0 : unreadCount(chat);
      const preview = last ? `${senderLabel(last)}: ${last.content}` : 'No messages yet';
      return el('li', {},
        el('button', {
          type: 'button',
          className: `chat-item${chat.id === state.openId ? ' active' : ''}`,
          'data-testid': 'chat-item',
          'data-chat-id': chat.id,
          'aria-current': chat.id === state.openId ? 'true' : null,
          onclick: () => openChat(chat.id),
        },
        avatarFor(chat.assistantId ? '✦' : chatTitle(chat)),
        el('span', { className: 'chat-item-text' },
          el('span', { className: 'chat-item-title', text: chatTitle(chat) }),
          el('span', { className: 'chat-item-preview', text: preview })),
        unread > 0 ? el('span', { className: 'badge', 'data-testid': 'unread-badge', text: unread > 99 ? '99+' : unread }) : null));
    }),
  );
  $('chat-list-empty').hidden = chats.length > 0 || !state.chatsLoaded;
}

function openChat(id) {
  if (state.openId !== id) stopTyping();
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
  $('chat-title').textContent = chatTitle(chat);
  const people = chat.participants.map((p) => (p === me() ? `${p} (you)` : p));
  if (chat.assistantId) people.push(assistantName(chat.assistantId));
  $('chat-people').textContent = people.join(' · ');
}

function renderTyping() {
  const chat = state.chats.get(state.openId);
  const who = chat ? [...chat.typers.keys()] : [];
  const box = $('typing');
  box.textContent = who.length === 0 ? '' : who.length === 1 ? `${who[0]} is typing…` : `${who.join(', ')} are typing…`;
  box.dataset.typers = who.join(',');
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
  $('ask').disabled = !state.connected;
  $('load-earlier').hidden = chat.windowStart <= 0;

  const sorted = [...chat.messages.values()].sort((a, b) => a.seq - b.seq);
  const items = sorted.map((m, i) => messageItem(m, sorted[i - 1]));
  for (const s of state.streams.values()) if (s.convId === chat.id) items.push(streamItem(s));
  for (const p of chat.pending.values()) items.push(pendingItem(chat, p));
  $('messages').replaceChildren(...items);
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

/** One stored message; the sender line is left out when `prev` has the same
 *  sender and is less than five minutes older. */
function messageItem(m, prev) {
  const mine = m.sender_id === me();
  const kind = m.message_type === 'assistant' ? 'assistant' : mine ? 'mine' : 'theirs';
  const cont = prev && prev.sender_id === m.sender_id && prev.message_type === m.message_type &&
    Date.parse(m.created_at) - Date.parse(prev.created_at) < 5 * 60_000;
  return el('li', { className: `msg ${kind}${cont ? ' cont' : ''}`, 'data-testid': 'message', 'data-seq': m.seq, 'data-id': m.id, 'data-sender': m.sender_id },
    el('div', { className: 'meta' },
      el('span', { className: 'sender', 'data-testid': 'message-sender', text: senderLabel(m) }),
      el('time', { datetime: m.created_at, text: timeOf(m.created_at) }),
      ['cancelled', 'error'].includes(m.metadata?.finish_reason)
        ? el('span', { className: 'tag', text: m.metadata.finish_reason === 'cancelled' ? 'stopped' : 'interrupted' })
        : null),
    el('div', { className: 'bubble text', 'data-testid': 'message-text', title: timeOf(m.created_at), text: m.content }));
}

function streamItem(s) {
  const cancel = el('button', {
    type: 'button', className: 'ghost small', 'data-testid': 'cancel-stream', disabled: !!s.cancelling,
    text: s.cancelling ? 'Cancelling…' : 'Cancel', onclick: () => cancelStream(s),
  });
  s.el = el('li', { className: 'msg assistant streaming', 'data-testid': 'stream-bubble', 'data-stream-id': s.id },
    el('div', { className: 'meta' },
      el('span', { className: 'sender', text: assistantName(s.assistantId) }),
      el('span', { className: 'dots', 'aria-label': 'writing' }, el('i'), el('i'), el('i')),
      cancel),
    el('div', { className: 'bubble text', 'data-testid': 'stream-text', text: streamText(s) }));
  return s.el;
}

function pendingItem(chat, p) {
  const status = el('div', { className: 'state', 'data-testid': 'message-state' },
    { sending: 'Sending…', sent: 'Sent', failed: `Not sent${p.error ? `: ${p.error}` : ''}` }[p.state]);
  if (p.state === 'failed') {
    status.append(' ', el('button', { type: 'button', className: 'link', 'data-testid': 'retry-button', text: 'Retry', onclick: () => deliver(chat, p) }));
  }
  return el('li', { className: `msg mine pending ${p.state}`, 'data-testid': 'message', 'data-state': p.state, 'data-client-msg-id': p.cmid },
    el('div', { className: 'meta' }, el('span', { className: 'sender', text: 'You' })),
    el('div', { className: 'bubble text', 'data-testid': 'message-text', text: p.content }),
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
    }
  });
  $('input').addEventListener('blur', stopTyping);
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
