// End-to-end test of the demo page in a real Chromium, against two confab
// nodes behind nginx. Started by tests/browser.rs, which provides:
//   CONFAB_E2E_URL     the balancer's base URL, e.g. http://127.0.0.1:8080
//   CONFAB_E2E_SHOTS   folder for screenshots (written at the end and on failure)
//   CONFAB_E2E_NODES   JSON map node_id -> pid, to SIGKILL the node behind a tab
//   CONFAB_E2E_SCENARIO (optional) `websocket` (the default) or `http`
//   CONFAB_E2E_CHROMIUM (optional) the browser binary, default /usr/bin/chromium
//
// Every step waits for a condition with a timeout; none sleeps.
//
// `websocket`: Alice has two tabs (same user, one browser context), Bob one
// (another context). Besides messages, typing, streaming, presence, unread
// badges and a node kill, it drives the conversation log (docs/protocol.md,
// v1.1) through the page's own controls: edit, reactions, reply, rename,
// delete, and checks that Markdown renders while HTML in a message stays text.
// Then the assistants' queue (docs/protocol.md, v1.1: assistants), with the
// assistants tests/browser.rs configures: `slow` (echo, a word every 250 ms,
// one answer at a time) and `cited` (answers with two URL citations). Alice
// writes in three chats of the slow assistant in quick succession: the first
// answer runs, the others wait showing "Queued (next)" and "Queued (2nd)";
// she stops the first waiting one (its bubble goes, nothing is stored) and
// the other moves up to next; Bob reloads while its answer is being written
// and sees the text so far at once, then the whole answer stored. The cited
// answer lists its sources as links under it. Then `newUser`: a phone
// (390x844) with a non-ASCII name, invites by name, the character counter,
// "jump to latest", dates, dark mode, and the outbox across a cut (a tab
// whose sockets the test holds through `routeWebSocket`, taken offline).
// Then search: Bob, in another chat, types "reuni" in the sidebar's search
// box; Alice's earlier "Réunion..." is the result (chat, sender, snippet as
// text, date), and a click opens the team chat with it in view, highlighted.
// Alice's second tab is signed in by her first (the sign-in is shared),
// and signed out with it at the end.
//
// `http`: behind a proxy that refuses WebSocket upgrades, Alice and Bob (a
// tab each) find themselves on the HTTP transport and chat in real time:
// messages, typing, presence, an assistant answer streaming into both.

import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BASE = must('CONFAB_E2E_URL');
const SHOTS = must('CONFAB_E2E_SHOTS');
const NODES = JSON.parse(must('CONFAB_E2E_NODES'));
const SCENARIO = process.env.CONFAB_E2E_SCENARIO || 'websocket';
const CHROMIUM = process.env.CONFAB_E2E_CHROMIUM || '/usr/bin/chromium';
const STEP_MS = 10_000; // any single wait
const TOTAL_MS = 200_000; // the whole scenario

function must(name) {
  const v = process.env[name];
  if (!v) fail(`${name} is not set (tests/browser.rs sets it)`);
  return v;
}

function fail(msg) {
  console.error(`e2e FAILED: ${msg}`);
  process.exit(1);
}

const started = Date.now();
const log = (msg) => console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s] ${msg}`);

/** Waits until `fn(arg)` is truthy in the page; `what` names it in the error. */
async function until(page, what, fn, arg, ms = STEP_MS) {
  try {
    return await page.waitForFunction(fn, arg, { timeout: ms, polling: 50 });
  } catch (e) {
    throw new Error(`${page.label}: timed out after ${ms} ms waiting for ${what}`);
  }
}

/** Brings a tab to the front before acting in it, as a user would: a
 *  background tab gets about one animation frame a second, and Playwright's
 *  actionability checks wait for frames. */
let frontPage = null;
async function front(page) {
  if (frontPage !== page) await page.bringToFront();
  frontPage = page;
  return page;
}

const click = async (page, testId) => (await front(page)).getByTestId(testId).click();
const fill = async (page, testId, text) => (await front(page)).getByTestId(testId).fill(text);

const pages = [];
const pageErrors = [];

async function openTab(context, label) {
  const page = await context.newPage();
  page.label = label;
  // For the waits below: the open chat's stored message with a given id.
  await page.addInitScript(() => {
    window.e2eMsg = (id) =>
      [...document.querySelectorAll('#messages [data-testid=message][data-seq]')].find((e) => e.dataset.id === id);
    // The open chat's pending answer, as the page shows it; null if none.
    window.e2eBubble = () => {
      const b = document.querySelector('#messages [data-testid=stream-bubble]');
      if (!b) return null;
      const status = b.querySelector('[data-testid=stream-status]');
      return {
        id: b.dataset.streamId,
        state: b.dataset.streamState,
        position: b.dataset.position ?? null,
        status: status && !status.hidden ? status.textContent : null,
        text: b.querySelector('[data-testid=stream-text]').textContent,
        cancel: !!b.querySelector('[data-testid=cancel-stream]:not([disabled])'),
      };
    };
    // The open chat's stored assistant answers: [id, text].
    window.e2eAnswers = () => [...document.querySelectorAll('#messages .msg.assistant[data-testid=message][data-seq]')]
      .map((e) => [e.dataset.id, e.querySelector('[data-testid=message-text]')?.textContent ?? null]);
  });
  page.setDefaultTimeout(STEP_MS);
  page.on('pageerror', (e) => pageErrors.push(`${label}: ${e.message}`));
  // Nothing in a message may ever run script (an alert() would be a dialog).
  page.on('dialog', (d) => {
    pageErrors.push(`${label}: a ${d.type()} dialog opened: ${d.message()}`);
    d.dismiss().catch(() => {});
  });
  page.on('console', (m) => {
    if (m.type() === 'error' && !/WebSocket|Failed to load resource|ERR_CONNECTION|ERR_INTERNET_DISCONNECTED/.test(m.text())) {
      pageErrors.push(`${label} console: ${m.text()}`);
    }
  });
  // Every log entry each socket of the tab received: [socket, seq, type].
  page.e2eEntries = [];
  // Every stream_snapshot any socket of the tab received (reloads included).
  page.e2eSnapshots = [];
  // Frames any socket of the tab received; event streams and frame POSTs of the HTTP transport.
  page.e2eSocketFrames = 0;
  page.e2eStreams = 0;
  page.e2eFramePosts = 0;
  page.on('request', (r) => {
    const path = new URL(r.url()).pathname;
    if (path.endsWith('/chat/events')) page.e2eStreams += 1;
    if (r.method() === 'POST' && /\/connections\/[^/]+\/frames$/.test(path)) page.e2eFramePosts += 1;
  });
  let sockets = 0;
  page.on('websocket', (ws) => {
    const socket = ++sockets;
    ws.on('framereceived', ({ payload }) => {
      page.e2eSocketFrames += 1;
      let f;
      try {
        f = JSON.parse(String(payload));
      } catch {
        return;
      }
      if (f.type === 'message_received') page.e2eEntries.push([socket, f.data.message.conversation_id, f.data.message.seq, f.type]);
      if (f.type === 'message_updated') page.e2eEntries.push([socket, f.data.conversation_id, f.data.seq, f.type]);
      if (f.type === 'stream_snapshot') page.e2eSnapshots.push(f.data);
    });
  });
  pages.push(page);
  return page;
}

/** Opens the page and signs in as `name`, unless the browser is signed in
 *  already (the sign-in is kept across tabs); returns which it was
 *  (`form` or `kept`) once connected. */
async function signIn(page, name) {
  await (await front(page)).goto(BASE);
  const how = await until(page, 'the sign-in form or the app', () =>
    (!document.getElementById('signin').hidden && 'form') || (!document.getElementById('app').hidden && 'kept'))
    .then((h) => h.jsonValue());
  if (how === 'form') {
    await fill(page, 'signin-name', name);
    await click(page, 'signin-button');
  }
  await until(page, `signed in as ${name}`, (n) => document.querySelector('[data-testid=me-name]').textContent === n, name);
  await connected(page);
  return how;
}

/** Waits for the status pill to say connected; returns the node id it shows. */
async function connected(page, notOn) {
  await until(page, `status connected${notOn ? ` (not on ${notOn})` : ''}`, (not) => {
    const pill = document.querySelector('[data-testid=status]');
    return pill.dataset.state === 'connected' && pill.dataset.nodeId && pill.dataset.nodeId !== not;
  }, notOn ?? null);
  return page.getByTestId('status').getAttribute('data-node-id');
}

/** Waits for the status pill to say connected over `transport` (`websocket`:
 *  "Online", or `http`: "Limited connection"), with the node in its tooltip. */
async function over(page, transport) {
  await until(page, `status connected over ${transport}`, ([t, text]) => {
    const pill = document.querySelector('[data-testid=status]');
    return pill.dataset.state === 'connected' && pill.dataset.transport === t && pill.textContent === text &&
      pill.title.includes(pill.dataset.nodeId);
  }, [transport, transport === 'http' ? 'Limited connection' : 'Online']);
}

/** Waits until `page` shows `user` present: a dot by their name in the open
 *  chat's header, and a dot on chat `id` in the sidebar. */
async function seesPresent(page, user, id) {
  await until(page, `${user} present in the header and the sidebar`, ([u, cid]) =>
    document.querySelector(`#chat-people [data-testid=participant][data-user="${u}"]`)?.dataset.present === 'true' &&
    !!document.querySelector(`[data-testid=chat-item][data-chat-id="${cid}"] [data-testid=presence-dot]`), [user, id]);
}

/** Creates a chat in `page`, with `invite` (a user id); returns its id once open. */
async function createChat(page, title, invite) {
  await click(page, 'new-chat-toggle');
  await fill(page, 'new-chat-title', title);
  await fill(page, 'new-chat-invite', invite);
  await click(page, 'new-chat-create');
  const open = await until(page, `chat "${title}" open`, (t) =>
    document.querySelector('[data-testid=chat-item][aria-current=true] [data-testid=chat-item-title]')?.textContent === t &&
    document.querySelector('[data-testid=chat-item][aria-current=true]').dataset.chatId, title);
  return open.jsonValue();
}

/** From now on, each page records whether a stream bubble showed partial
 *  text and a Cancel button while the answer streamed. */
async function watchStreams(pages) {
  for (const p of pages) {
    await p.evaluate(() => {
      window.e2eStream = { bubbles: 0, cancel: false, partial: false };
      new MutationObserver(() => {
        const bubble = document.querySelector('[data-testid=stream-bubble]');
        if (!bubble) return;
        window.e2eStream.bubbles += 1;
        window.e2eStream.cancel ||= !!bubble.querySelector('[data-testid=cancel-stream]');
        window.e2eStream.partial ||= bubble.querySelector('[data-testid=stream-text]').textContent.length > 0;
      }).observe(document.getElementById('messages'), { childList: true, subtree: true, characterData: true });
    });
  }
}

/** Asks the echo assistant in `asker` to answer `prompt` (sent already);
 *  waits until every page watched the answer stream in and stored it. */
async function streamedEverywhere(asker, prompt, pages) {
  await click(asker, 'ask-assistant');
  expected.push(prompt);
  for (const p of pages) {
    await until(p, 'the streamed answer, stored', (t) =>
      [...document.querySelectorAll('#messages .msg.assistant[data-seq] [data-testid=message-text]')]
        .some((e) => e.textContent === t), prompt);
    const s = await p.evaluate(() => window.e2eStream);
    if (!s.bubbles || !s.cancel || !s.partial) {
      throw new Error(`${p.label}: no stream bubble with text and a Cancel button was seen while streaming (${JSON.stringify(s)})`);
    }
    if (await p.getByTestId('stream-bubble').count()) throw new Error(`${p.label}: stream bubble left behind`);
  }
}

const chatItem = (page, id) => page.locator(`[data-testid=chat-item][data-chat-id="${id}"]`);

async function openChat(page, id) {
  await chatItem(await front(page), id).click();
  await until(page, `chat ${id} open`, (cid) =>
    document.querySelector(`[data-testid=chat-item][data-chat-id="${cid}"]`)?.getAttribute('aria-current') === 'true', id);
}

/** The open chat's stored messages as [seq, text], in screen order. */
function transcript(page) {
  return page.$$eval('#messages [data-testid=message][data-seq]', (els) =>
    els.map((e) => [Number(e.dataset.seq), e.querySelector('[data-testid=message-text]')?.textContent ?? null]));
}

/** Waits until the open chat shows `text` as a stored message (with a seq). */
function seen(page, text) {
  return until(page, `message "${text}"`, (t) =>
    [...document.querySelectorAll('#messages [data-testid=message][data-seq] [data-testid=message-text]')]
      .some((e) => e.textContent === t), text);
}

const expected = []; // the conversation's messages, in seq order: texts as shown now

/** Types and sends a message in `page`; waits until every tab shows it
 *  (as `shown`: the text its Markdown renders to). */
async function say(page, text, everyone, shown = text) {
  await fill(page, 'message-input', text);
  await click(page, 'send-button');
  expected.push(shown);
  for (const p of everyone) await seen(p, shown);
}

/** Every expected message once, in order, by rising seqs starting at 1
 *  (seqs count log entries, so edits, deletions and reactions leave gaps
 *  between messages). Returns the [seq, text] list for comparing tabs. */
async function assertTranscript(page) {
  const want = [...expected];
  try {
    await until(page, `the transcript of ${want.length} messages`, (w) => {
      const els = [...document.querySelectorAll('#messages [data-testid=message]')];
      if (els.some((e) => !e.dataset.seq)) return false; // a send not settled yet
      const got = els.map((e) => [Number(e.dataset.seq), e.querySelector('[data-testid=message-text]')?.textContent]);
      return got.length === w.length && got[0]?.[0] === 1 &&
        got.every(([seq, text], i) => text === w[i] && (i === 0 || seq > got[i - 1][0]));
    }, want);
  } catch {
    const got = await transcript(page);
    throw new Error(`${page.label}: transcript differs\n  want ${JSON.stringify(want)}\n  got  ${JSON.stringify(got)}`);
  }
  return transcript(page);
}

/** The data-id of the open chat's stored message showing `text`. */
async function messageId(page, text) {
  const handle = await until(page, `message "${text}"`, (t) =>
    [...document.querySelectorAll('#messages [data-testid=message][data-seq]')]
      .find((e) => e.querySelector('[data-testid=message-text]')?.textContent === t)?.dataset.id, text);
  return handle.jsonValue();
}

const msg = (page, id) => page.locator(`#messages [data-testid=message][data-id="${id}"]`);

/** Opens a message's action menu the way a phone does (a tap on the
 *  bubble), then clicks one of its actions. */
async function messageAction(page, id, action) {
  const m = msg(await front(page), id);
  if (!(await m.evaluate((e) => e.classList.contains('show-actions')))) await m.getByTestId('message-text').click();
  await m.getByTestId(action).click();
}


async function screenshots(suffix = '') {
  mkdirSync(SHOTS, { recursive: true });
  for (const p of pages) {
    if (p.isClosed()) continue;
    const file = join(SHOTS, `${p.label}${suffix}.png`);
    await front(p).then(() => p.screenshot({ path: file })).catch(() => {});
    console.log(`screenshot: ${file}`);
  }
}

async function overWebSocket(browser) {
  const viewport = { width: 1180, height: 760 };
  const alice = await browser.newContext({ viewport });
  const bob = await browser.newContext({ viewport });
  const a1 = await openTab(alice, 'alice-tab1');
  const a2 = await openTab(alice, 'alice-tab2');
  const b = await openTab(bob, 'bob');
  const all = [a1, a2, b];

  await (await front(a1)).goto(BASE);
  await a1.getByTestId('signin-name').waitFor();
  mkdirSync(SHOTS, { recursive: true });
  await a1.screenshot({ path: join(SHOTS, 'signin.png') });
  await signIn(a1, 'Alice');
  // Alice's second tab is signed in already: the sign-in is kept across tabs.
  if ((await signIn(a2, 'Alice')) !== 'kept') throw new Error('alice-tab2: asked to sign in again in a second tab');
  await signIn(b, 'Bob');
  for (const p of all) await over(p, 'websocket');
  log(`signed in: alice-tab1 on ${await connected(a1)}, alice-tab2 on ${await connected(a2)}, bob on ${await connected(b)}`);

  // Alice creates a chat with Bob; it shows up in every tab.
  const team = await createChat(a1, 'Team', 'bob');
  for (const p of [a2, b]) await openChat(p, team);
  log(`chat ${team} open in every tab`);

  // Presence: Bob sees Alice's dot, Alice (both tabs) Bob's.
  await seesPresent(b, 'alice', team);
  for (const p of [a1, a2]) await seesPresent(p, 'bob', team);
  log('presence dots shown in the header and the sidebar');

  // A message typed in one tab appears in all three.
  await say(a1, 'Hello from Alice, tab one', all);
  await say(b, 'Hi Alice, Bob here', all);
  await say(a2, 'And hello from Alice, tab two', all);
  // An accented word, found later by Bob's search typed without its accent.
  const searched = 'Réunion au café vendredi, apportez les brioches';
  await say(a1, searched, all);
  const searchedId = await messageId(a1, searched);
  log('messages reach every tab');

  // Typing indicators: Bob types, both Alice tabs see it; Alice types in tab
  // one, Bob sees it. Sending ends it.
  await (await front(b)).getByTestId('message-input').pressSequentially('Bob is typ', { delay: 5 });
  for (const p of [a1, a2]) {
    await until(p, 'typing indicator for bob', () =>
      document.querySelector('[data-testid=typing-indicator]').textContent.includes('Bob is typing'));
  }
  // Alice types in tab one: Bob sees it (her own tab two does not show her own typing).
  await (await front(a1)).getByTestId('message-input').pressSequentially('Typing in', { delay: 5 });
  for (const p of [b]) {
    await until(p, 'typing indicator for alice', () =>
      document.querySelector('[data-testid=typing-indicator]').textContent.includes('Alice'));
  }
  await (await front(b)).getByTestId('message-input').press('Enter');
  expected.push('Bob is typ');
  for (const p of all) await seen(p, 'Bob is typ');
  for (const p of [a1, a2]) {
    await until(p, 'bob no longer typing', () =>
      !document.querySelector('[data-testid=typing-indicator]').textContent.includes('Bob'));
  }
  await fill(a1, 'message-input', ''); // emptied: typing stops
  for (const p of [a2, b]) {
    await until(p, 'typing indicator cleared', () =>
      document.querySelector('[data-testid=typing-indicator]').textContent === '');
  }
  log('typing indicators shown and cleared');

  // The echo assistant answers; the answer streams into all three tabs.
  const prompt = 'Please echo these words back one by one so that every tab can watch the answer stream in live';
  await watchStreams(all);
  await say(a1, prompt, all);
  await streamedEverywhere(a1, prompt, all);
  log('assistant answer streamed into every tab');

  // Unread: both Alice tabs look at another chat while Bob writes; reading in
  // tab one clears the badge in tab two.
  await click(a1, 'new-assistant-chat');
  const other = await until(a1, 'the new assistant chat open', (id) => {
    const open = document.querySelector('[data-testid=chat-item][aria-current=true]')?.dataset.chatId;
    return open && open !== id && open;
  }, team).then((h) => h.jsonValue());
  await openChat(a2, other);
  await say(b, 'Are you there, Alice?', [b]);
  await say(b, 'Ping me when you read this', [b]);
  for (const p of [a1, a2]) {
    await until(p, 'unread badge 2 on the team chat', (id) =>
      document.querySelector(`[data-testid=chat-item][data-chat-id="${id}"] [data-testid=unread-badge]`)?.textContent === '2', team);
  }
  // The tab's title counts them too.
  await until(a2, 'the title "(2) confab"', () => document.title === '(2) confab');
  await openChat(a1, team);
  await until(a2, 'unread badge cleared by the read in tab one', (id) =>
    !document.querySelector(`[data-testid=chat-item][data-chat-id="${id}"] [data-testid=unread-badge]`), team);
  await until(a2, 'the title back to "confab"', () => document.title === 'confab');
  await until(a1, 'no badge on the open chat', (id) =>
    !document.querySelector(`[data-testid=chat-item][data-chat-id="${id}"] [data-testid=unread-badge]`), team);
  await openChat(a2, team);
  log('unread badge shown in both Alice tabs, cleared in tab two by reading in tab one');

  // The conversation log. Alice acts in tab one; her tab two and Bob's tab
  // must show each change, through `message_updated` and, for the rename,
  // `conversation_updated`.
  const others = [a2, b];

  // Edit: Alice's first message, inline (Enter saves).
  const firstId = await messageId(a1, expected[0]);
  const editedText = 'Hello from Alice, tab one (now with an edit)';
  await messageAction(a1, firstId, 'action-edit');
  const editor = msg(a1, firstId).getByTestId('edit-input');
  await editor.fill(editedText);
  await editor.press('Enter');
  expected[0] = editedText;
  for (const p of all) {
    await until(p, 'the edited text, marked (edited)', ([id, text]) => {
      const m = window.e2eMsg(id);
      return m?.querySelector('[data-testid=message-text]')?.textContent === text &&
        m.querySelector('[data-testid=message-edited]')?.textContent === '(edited)' && !m.querySelector('textarea');
    }, [firstId, editedText]);
  }
  log('an edit in alice-tab1 shows, marked (edited), in every tab');

  // Reactions: Alice picks 👍 on Bob's message; Bob joins in by clicking the
  // chip, then takes his back by clicking it again.
  const bobsId = await messageId(a1, 'Hi Alice, Bob here');
  const chip = (p, count, mine) => until(p, `a 👍 chip counting ${count}${mine ? ', highlighted' : ', not highlighted'}`,
    ([id, n, m]) => {
      const c = window.e2eMsg(id)?.querySelector('[data-testid=reaction-chip][data-emoji="👍"]');
      return c && c.dataset.count === String(n) && c.dataset.mine === String(m) && c.textContent.includes('👍');
    }, [bobsId, count, mine]);
  await messageAction(a1, bobsId, 'action-react');
  await msg(a1, bobsId).locator('[data-testid=emoji-option][data-emoji="👍"]').click();
  for (const p of [a1, a2]) await chip(p, 1, true);
  await chip(b, 1, false);
  const bobsChip = msg(b, bobsId).locator('[data-testid=reaction-chip][data-emoji="👍"]');
  await front(b);
  await bobsChip.click();
  for (const p of all) await chip(p, 2, true);
  await bobsChip.click();
  for (const p of [a1, a2]) await chip(p, 1, true);
  await chip(b, 1, false);
  log('a reaction from alice-tab1 shows in every tab; Bob adds and removes his with the chip');

  // Reply: Alice answers Bob's message; every tab shows the quote, and a
  // click on it in Bob's tab brings the quoted message into view.
  await messageAction(a1, bobsId, 'action-reply');
  await until(a1, 'the reply bar above the composer', () => {
    const bar = document.querySelector('[data-testid=reply-bar]');
    return !bar.hidden && bar.textContent.includes('Hi Alice, Bob here');
  });
  const replyText = 'Replying to you, Bob';
  await say(a1, replyText, all);
  const replyId = await messageId(a1, replyText);
  for (const p of all) {
    await until(p, 'the quoted message above the reply', ([id, target]) => {
      const q = window.e2eMsg(id)?.querySelector('[data-testid=reply-quote]');
      return q?.dataset.target === target && q.textContent.includes('Hi Alice, Bob here');
    }, [replyId, bobsId]);
  }
  await until(a1, 'the reply bar gone once sent', () => document.querySelector('[data-testid=reply-bar]').hidden);
  await msg(await front(b), replyId).getByTestId('reply-quote').click();
  await until(b, 'the quoted message highlighted', (id) => window.e2eMsg(id)?.classList.contains('flash'), bobsId);
  log('a reply from alice-tab1 shows its quote in every tab; the quote leads to the message');

  // Rename, in the header: every tab's header and sidebar follow.
  await click(a1, 'rename-button');
  await fill(a1, 'rename-input', 'Team log');
  await a1.getByTestId('rename-input').press('Enter');
  for (const p of all) {
    await until(p, 'the new title in the header and the sidebar', (id) =>
      document.querySelector('[data-testid=chat-title]').textContent === 'Team log' &&
      document.querySelector(`[data-testid=chat-item][data-chat-id="${id}"] [data-testid=chat-item-title]`)?.textContent === 'Team log', team);
  }
  log('a rename in alice-tab1 shows in every header and sidebar');

  // Markdown, safely: HTML stays text, **bold** is bold, only http(s) links.
  const raw = '<img src=x onerror=alert(1)> stays text, **bold** is bold, https://example.com/docs is a link, [this](javascript:alert(1)) is not';
  const shown = '<img src=x onerror=alert(1)> stays text, bold is bold, https://example.com/docs is a link, [this](javascript:alert(1)) is not';
  await say(a1, raw, all, shown);
  const mdId = await messageId(a1, shown);
  for (const p of all) {
    await until(p, 'the Markdown rendered, the HTML as text', (id) => {
      const t = window.e2eMsg(id)?.querySelector('[data-testid=message-text]');
      const links = t ? [...t.querySelectorAll('a')] : [];
      return t && !document.querySelector('#messages img') && t.querySelector('strong')?.textContent === 'bold' &&
        t.textContent.includes('<img src=x onerror=alert(1)>') && links.length === 1 &&
        links[0].getAttribute('href') === 'https://example.com/docs' && links[0].target === '_blank' &&
        links[0].rel === 'noopener noreferrer';
    }, mdId);
  }
  log('Markdown renders in every tab; the HTML in the message is plain text');

  // Delete: Alice owns the chat, so she may delete Bob's message (after a
  // confirming second click). The placeholder replaces it everywhere, its
  // reaction goes, and the reply's quote now says it was deleted.
  await messageAction(a1, bobsId, 'action-delete');
  await msg(a1, bobsId).getByTestId('action-delete-confirm').click();
  expected[expected.indexOf('Hi Alice, Bob here')] = 'message deleted';
  for (const p of all) {
    await until(p, 'the deleted placeholder, and the quote saying so', ([id, reply]) => {
      const m = window.e2eMsg(id);
      return m?.dataset.deleted === 'true' && m.querySelector('[data-testid=message-text]').textContent === 'message deleted' &&
        !m.querySelector('[data-testid=reaction-chip]') &&
        window.e2eMsg(reply)?.querySelector('[data-testid=reply-quote]')?.textContent === 'deleted message';
    }, [bobsId, replyId]);
  }
  log('a deletion in alice-tab1 leaves the placeholder in every tab');

  // The assistants' queue, a reload mid-answer, citations: in chats of their own.
  await assistantQueue(a1, a2, b, team);

  // Kill the node behind Alice's tab two: it reconnects to the other node and
  // catches up on what was sent meanwhile, with nothing twice.
  let victimNode = await connected(a2);
  let sender = null;
  for (let attempt = 0; attempt < 6 && !sender; attempt++) {
    for (const p of [a1, b]) if (!sender && (await connected(p)) !== victimNode) sender = p;
    if (!sender) {
      // All three on one node: move Bob (a reload reconnects through the balancer).
      for (let i = 0; i <= attempt; i++) await fetch(`${BASE}/health`);
      await (await front(b)).reload();
      await connected(b);
      await until(b, 'team chat reopened after reload', (id) =>
        document.querySelector('[data-testid=chat-item][aria-current=true]')?.dataset.chatId === id, team);
    }
  }
  if (!sender) throw new Error('could not get a tab onto a node other than alice-tab2\'s');
  const pid = NODES[victimNode];
  if (!pid) throw new Error(`no pid for node ${victimNode} in CONFAB_E2E_NODES`);
  log(`killing ${victimNode} (pid ${pid}) behind alice-tab2; ${sender.label} sends meanwhile`);
  // Every text the status pill shows meanwhile.
  await a2.evaluate(() => {
    const pill = document.querySelector('[data-testid=status]');
    window.e2ePills = [];
    new MutationObserver(() => window.e2ePills.push(pill.textContent))
      .observe(pill, { childList: true, characterData: true, subtree: true });
  });
  process.kill(pid, 'SIGKILL');
  await until(a2, 'status to leave connected', () =>
    document.querySelector('[data-testid=status]').dataset.state !== 'connected');
  // Changes made meanwhile come back in the replay too (`message_updated`):
  // a reaction first (any participant may), then messages and an edit.
  await messageAction(sender, firstId, 'action-react');
  await msg(sender, firstId).locator('[data-testid=emoji-option][data-emoji="🎉"]').click();
  const party = (p) => until(p, 'the 🎉 added while tab two was away', (id) =>
    window.e2eMsg(id)?.querySelector('[data-testid=reaction-chip][data-emoji="🎉"]')?.dataset.count === '1', firstId);
  await party(sender);
  const missed = ['Sent while tab two was away, 1', 'Sent while tab two was away, 2', 'Sent while tab two was away, 3'];
  for (const text of missed) await say(sender, text, [sender]);
  const fixedId = await messageId(sender, missed[1]);
  await messageAction(sender, fixedId, 'action-edit');
  await msg(sender, fixedId).getByTestId('edit-input').fill(`${missed[1]}, corrected`);
  await msg(sender, fixedId).getByTestId('edit-input').press('Enter');
  expected[expected.indexOf(missed[1])] = `${missed[1]}, corrected`;
  await seen(sender, `${missed[1]}, corrected`);
  const stillAway = (await a2.getByTestId('status').getAttribute('data-state')) !== 'connected';
  const newNode = await connected(a2, victimNode);
  const pills = [...new Set(await a2.evaluate(() => window.e2ePills))];
  if (!pills.some((t) => /^Reconnecting… \(\d+ s\)$/.test(t)) || pills.at(-1) !== 'Online') {
    throw new Error(`alice-tab2: the status pill showed ${JSON.stringify(pills)}, not "Reconnecting… (N s)" then "Online"`);
  }
  log(`alice-tab2 reconnected on ${newNode} (messages sent while it was away: ${stillAway ? 'all' : 'some'}); its pill said ${pills.join(' → ')}`);
  await say(sender, 'Welcome back', all);
  for (const p of all) await connected(p, victimNode);
  const lists = [];
  for (const p of all) lists.push(await assertTranscript(p));
  for (const [i, p] of all.entries()) {
    if (JSON.stringify(lists[i]) !== JSON.stringify(lists[0])) {
      throw new Error(`${p.label}: seqs differ from ${all[0].label}'s\n  ${JSON.stringify(lists[0])}\n  ${JSON.stringify(lists[i])}`);
    }
  }
  await until(a2, 'the edit made while away, marked (edited)', (id) =>
    window.e2eMsg(id)?.querySelector('[data-testid=message-edited]'), fixedId);
  for (const p of all) await party(p);
  // Tab two never reloaded: over its two sockets it got every entry of the
  // chat once (a since_seq that lagged behind the changes would replay some twice).
  const got = a2.e2eEntries.filter((e) => e[1] === team);
  const seqs = got.map((e) => e[2]).sort((x, y) => x - y);
  if (!seqs.length || seqs.some((q, i) => q !== i + 1)) {
    throw new Error(`alice-tab2: log entries not each once from 1: ${JSON.stringify(seqs)}`);
  }
  const later = got.filter((e) => e[0] > 1);
  log(`alice-tab2 got entries 1..${seqs.length} once each; its new socket ${later.length} of them ` +
    `(${later.filter((e) => e[3] === 'message_updated').length} message_updated)`);
  log(`every tab shows the same ${expected.length} messages, each once, in seq order (last seq ${lists[0].at(-1)[0]})`);
  if (pageErrors.length) throw new Error(`errors in the page:\n  ${pageErrors.join('\n  ')}`);

  // What a new user meets: a phone, names, the outbox, the counter, dark mode.
  await newUser(browser, a1, b);
  if (pageErrors.length) throw new Error(`errors in the page:\n  ${pageErrors.join('\n  ')}`);

  // Bob, in another chat, searches what Alice wrote much earlier in the team chat.
  await searchFinds(b, team, searchedId);
  if (pageErrors.length) throw new Error(`errors in the page:\n  ${pageErrors.join('\n  ')}`);

  for (const p of all) await openChat(p, team);
  await screenshots();
  // The narrow layout, for a look.
  await (await front(b)).setViewportSize({ width: 390, height: 760 });
  await until(b, 'the list still at its latest message after the resize', () => {
    const s = document.getElementById('scroller');
    return s.clientWidth <= 390 && s.scrollHeight - s.scrollTop - s.clientHeight < 80 &&
      document.querySelector('[data-testid=jump-latest]').hidden;
  });
  await b.screenshot({ path: join(SHOTS, 'bob-narrow.png') });
  await b.getByRole('button', { name: 'Back to chats' }).click();
  await b.screenshot({ path: join(SHOTS, 'bob-narrow-list.png') });

  // Signing out in one tab signs out the other tabs of the browser.
  await click(a1, 'signout');
  for (const p of [a1, a2]) {
    await until(p, 'the sign-in form, after signing out in tab one', () =>
      !document.getElementById('signin').hidden && document.getElementById('app').hidden && document.title === 'confab');
  }
  log('signing out in alice-tab1 signed out alice-tab2 too');
}

/** Message search in the sidebar: `page` (in another chat) types "reuni",
 *  a prefix of "Réunion" without its accent; the result names the chat and
 *  Alice and shows the snippet as text; a click opens the chat with the
 *  message in view and highlighted. Escape brings the chat list back. */
async function searchFinds(page, chatId, messageId) {
  const other = await page.evaluate(() =>
    document.querySelector('[data-testid=chat-item][aria-current=true]')?.dataset.chatId);
  if (other === chatId) throw new Error(`${page.label}: expected to be in another chat than ${chatId} before searching`);
  await (await front(page)).getByTestId('search-input').pressSequentially('reuni', { delay: 20 });
  const result = `[data-testid=search-result][data-message-id="${messageId}"]`;
  await until(page, 'the search result for "reuni", the chat list hidden', ([sel, cid]) => {
    const r = document.querySelector(sel);
    return r && r.dataset.chatId === cid &&
      r.querySelector('[data-testid=search-result-title]').textContent === 'Team log' &&
      r.querySelector('[data-testid=search-result-sender]').textContent === 'Alice' &&
      r.querySelector('[data-testid=search-result-snippet]').textContent.includes('Réunion') &&
      r.querySelector('[data-testid=search-result-date]').textContent.length > 0 &&
      !document.querySelector('[data-testid=search-result-snippet] *') && // text, never markup
      document.querySelector('[data-testid=chat-list]').offsetParent === null;
  }, [result, chatId]);
  await page.screenshot({ path: join(SHOTS, 'search-results.png') });
  await page.locator(result).click();
  await until(page, 'the chat open at the message, in view and highlighted', ([cid, id]) => {
    const m = window.e2eMsg(id);
    if (document.querySelector(`[data-testid=chat-item][data-chat-id="${cid}"]`)?.getAttribute('aria-current') !== 'true') return false;
    if (!m?.classList.contains('flash')) return false;
    const box = m.getBoundingClientRect();
    const view = document.getElementById('scroller').getBoundingClientRect();
    return box.top >= view.top - 1 && box.bottom <= view.bottom + 1 && box.height > 0;
  }, [chatId, messageId]);
  await page.screenshot({ path: join(SHOTS, 'search-opened.png') });
  await page.getByTestId('search-input').press('Escape');
  await until(page, 'the chat list back after Escape', () =>
    document.querySelector('[data-testid=search-input]').value === '' &&
    document.querySelector('[data-testid=search-results]').hidden &&
    document.querySelector('[data-testid=chat-list]').offsetParent !== null);
  log('Bob found "Réunion" by "reuni" in the sidebar; the result opened the chat at the message, highlighted');
}

/** The page as a new user meets it. Zoë Q (a non-ASCII name) on a phone
 *  (390x844): a chat with a long title and a long preview fits the screen
 *  and Sign out stays visible; the chat's header is one compact line.
 *  Alice invites by name: "Carol Smith" (signed in once) is added as
 *  `carol-smith`, shown "Carol Smith"; a name that never signed in is
 *  refused, saying so. Names show instead of ids. The character counter
 *  blocks an over-long message and keeps its text. "Jump to latest" counts
 *  the messages that arrived below. Dark mode follows the system. And the
 *  outbox: Alice's tab, cut off, keeps two messages waiting, then sends each
 *  once when back. Returns nothing; every tab is left on a chat of its own. */
async function newUser(browser, a1, b) {
  // Carol Smith signs in once (over the dev token route, as the page does),
  // and so do two people whose names fold in ways a whole-string
  // lowercase would get wrong (a final sigma; a titlecase digraph, ½).
  const signInOnce = (name) => fetch(`${BASE}/api/v1/dev/token`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name }),
  }).then((r) => r.json()).then((t) => t.user_id);
  const carol = await signInOnce('Carol Smith');
  if (carol !== 'carol-smith') throw new Error(`Carol Smith signed in as ${JSON.stringify(carol)}`);
  const tricky = [];
  for (const name of ['ΣΊΣΥΦΟΣ', 'Ǆemal 2½!']) tricky.push([name, await signInOnce(name)]);

  // Zoë Q, on a phone.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const z = await openTab(phone, 'zoe-phone');
  await signIn(z, 'Zoë Q');
  const zoe = await z.evaluate(() => JSON.parse(localStorage.getItem('confab.session')).user_id);
  if (zoe !== 'zoë-q') throw new Error(`Zoë Q signed in as ${JSON.stringify(zoe)}`);

  // Alice starts a chat with a long title, inviting by name.
  const longTitle = 'A chat whose title is far too long to fit on the screen of any phone, even held sideways';
  const chat = await createChat(a1, longTitle, 'Bob, Zoë Q');
  const longWord = `${'Supercalifragilisticexpialidocious'.repeat(6)} and a preview that goes on and on`;
  await send(a1, longWord);
  await until(a1, 'Zoë shown by her name among the participants', () =>
    document.querySelector('#chat-people [data-testid=participant][data-user="zoë-q"]')?.textContent === 'Zoë Q');
  await until(z, 'the long chat in the phone\'s list, with its long preview', ([id, word]) =>
    document.querySelector(`[data-testid=chat-item][data-chat-id="${id}"] [data-testid=chat-item-preview]`)?.textContent
      .startsWith(`Alice: ${word.slice(0, 40)}`), [chat, longWord]);
  const list = await z.evaluate((id) => {
    const w = document.documentElement.clientWidth;
    const wide = [...document.querySelectorAll('.sidebar, .sidebar *')]
      .filter((e) => { const r = e.getBoundingClientRect(); return r.width > 0 && (r.right > w + 0.5 || r.left < -0.5); })
      .map((e) => e.className || e.tagName);
    const out = document.querySelector('[data-testid=signout]').getBoundingClientRect();
    const title = document.querySelector(`[data-testid=chat-item][data-chat-id="${id}"] [data-testid=chat-item-title]`);
    return {
      w, scroll: document.documentElement.scrollWidth, wide: wide.slice(0, 5),
      signout: out.width > 0 && out.left >= 0 && out.right <= w && out.top >= 0 && out.bottom <= window.innerHeight,
      ellipsized: title.scrollWidth > title.clientWidth && title.getBoundingClientRect().right <= w,
    };
  }, chat);
  if (list.scroll > list.w || list.wide.length || !list.signout || !list.ellipsized) {
    throw new Error(`zoe-phone: the chat list does not fit a 390 px screen: ${JSON.stringify(list)}`);
  }
  await (await front(z)).screenshot({ path: join(SHOTS, 'phone-list.png') });
  log('on a 390 px phone the list fits: a long title and preview are cut short, Sign out stays in view');

  await openChat(z, chat);
  const head = await z.evaluate(() => {
    const h = document.querySelector('.chat-head').getBoundingClientRect();
    const t = document.querySelector('[data-testid=chat-title]').getBoundingClientRect();
    return {
      height: h.height, screen: window.innerHeight, titleLines: Math.round(t.height / 20),
      people: getComputedStyle(document.querySelector('[data-testid=chat-participants]')).display === 'none' ||
        getComputedStyle(document.querySelector('[data-testid=people-panel]')).display === 'none',
      scroll: document.documentElement.scrollWidth, w: document.documentElement.clientWidth,
    };
  });
  if (head.height > 0.15 * head.screen || head.titleLines > 1 || !head.people || head.scroll > head.w) {
    throw new Error(`zoe-phone: the chat header is not one compact line: ${JSON.stringify(head)}`);
  }
  await send(z, 'Grüße von Zoë');
  await z.screenshot({ path: join(SHOTS, 'phone-chat.png') });
  await click(z, 'people-toggle');
  await until(z, 'the participants shown under the header', () =>
    getComputedStyle(document.querySelector('[data-testid=people-panel]')).display !== 'none' &&
    [...document.querySelectorAll('#chat-people [data-testid=participant]')].some((e) => e.textContent === 'Zoë Q (you)'));
  await z.screenshot({ path: join(SHOTS, 'phone-people.png') });
  await click(z, 'people-toggle');
  log(`on the phone the chat header is one line, ${Math.round(head.height)} px of ${head.screen}; the participants open from a button`);

  // Names, not ids: Zoë's message as Alice and Bob see it.
  await openChat(b, chat);
  for (const p of [a1, b]) {
    await until(p, 'Zoë\'s message, from "Zoë Q"', () =>
      [...document.querySelectorAll('#messages [data-testid=message][data-seq]')].some((m) =>
        m.querySelector('[data-testid=message-text]').textContent === 'Grüße von Zoë' &&
        m.querySelector('[data-testid=message-sender]').textContent === 'Zoë Q'));
  }
  log('Zoë Q is shown by her name, not her id zoë-q');

  // Invite by name: Carol Smith signed in once, so she is found and added.
  await fill(a1, 'invite-input', 'Carol Smith');
  await click(a1, 'invite-button');
  for (const p of [a1, b]) {
    await until(p, 'carol-smith among the participants, shown "Carol Smith"', () =>
      document.querySelector('#chat-people [data-testid=participant][data-user="carol-smith"]')?.textContent === 'Carol Smith');
  }
  // The page derives ids exactly as the server does.
  for (const [name, id] of tricky) {
    await fill(a1, 'invite-input', name);
    await click(a1, 'invite-button');
    await until(a1, `${name} added as ${id}`, ([n, u]) =>
      document.querySelector(`#chat-people [data-testid=participant][data-user="${u}"]`)?.textContent === n, [name, id]);
  }
  // Someone who never signed in: nobody is added, and the page says why.
  await fill(a1, 'invite-input', 'Nobody Signed In');
  await click(a1, 'invite-button');
  await until(a1, 'the invite refused: never signed in', () => {
    const note = document.querySelector('[data-testid=invite-note]');
    return note.dataset.kind === 'error' && note.textContent.includes('never signed in');
  });
  const members = (await rest(a1, 'GET', `/chats/${chat}`)).conversation?.participants;
  if (!members || members.includes('nobody-signed-in') || !members.includes('carol-smith') || members.some((m) => m.includes(' '))) {
    throw new Error(`participants after the invites: ${JSON.stringify(members)}`);
  }
  log(`invited by name: "Carol Smith" added as carol-smith and shown by her name, ${tricky.map(([n, u]) => `"${n}" as ${u}`).join(', ')}; ` +
    `"Nobody Signed In" refused (participants ${members.join(', ')})`);

  // The character counter: over the server's limit Send is blocked and the text stays.
  const limit = Number(await a1.getByTestId('char-counter').getAttribute('data-limit'));
  const tooLong = 'x'.repeat(limit + 25);
  await fill(a1, 'message-input', tooLong);
  await until(a1, 'the counter saying 25 over, Send disabled', () => {
    const c = document.querySelector('[data-testid=char-counter]');
    return !c.hidden && c.dataset.over === 'true' && c.textContent === '25 over' &&
      document.querySelector('[data-testid=send-button]').disabled;
  });
  await a1.getByTestId('message-input').press('Enter');
  await a1.getByTestId('send-button').click({ force: true }).catch(() => {});
  const kept = await a1.getByTestId('message-input').inputValue();
  const unsent = await a1.locator('#messages [data-testid=message]:not([data-seq])').count();
  if (kept !== tooLong || unsent) throw new Error(`the over-long message: input kept ${kept.length} characters, ${unsent} sent`);
  await a1.screenshot({ path: join(SHOTS, 'counter.png') });
  await fill(a1, 'message-input', '');
  log(`${limit + 25} characters (the limit is ${limit}): the counter says so, nothing is sent, the text stays`);

  // Jump to latest: Bob scrolled up sees how many new messages came below.
  for (let i = 1; i <= 18; i++) await rest(a1, 'POST', `/chats/${chat}/messages`, { content: `Filler ${i}` });
  await seen(b, 'Filler 18');
  await (await front(b)).evaluate(() => {
    const s = document.getElementById('scroller');
    s.scrollTop = 0;
    s.dispatchEvent(new Event('scroll'));
  });
  await until(b, 'the jump button while scrolled up', () => !document.querySelector('[data-testid=jump-latest]').hidden);
  for (const content of ['Below, one', 'Below, two']) await rest(a1, 'POST', `/chats/${chat}/messages`, { content });
  await until(b, 'the jump button counting 2 new', () => {
    const j = document.querySelector('[data-testid=jump-latest]');
    return !j.hidden && j.dataset.count === '2' && j.textContent.includes('2 new');
  });
  await b.screenshot({ path: join(SHOTS, 'jump-latest.png') });
  await click(b, 'jump-latest');
  await until(b, 'at the latest, the button gone', () => {
    const s = document.getElementById('scroller');
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80 && document.querySelector('[data-testid=jump-latest]').hidden &&
      [...document.querySelectorAll('#messages [data-testid=message-text]')].at(-1)?.textContent === 'Below, two';
  });
  const dated = await b.evaluate(() => ({
    days: [...document.querySelectorAll('#messages [data-testid=day-separator]')].map((d) => d.textContent),
    untimed: [...document.querySelectorAll('#messages [data-testid=message]')].filter((m) => !m.querySelector('[data-testid=message-time]')).length,
  }));
  if (dated.days.join() !== 'Today' || dated.untimed) throw new Error(`day separators and times: ${JSON.stringify(dated)}`);
  log('"Jump to latest" showed 2 new messages below and took Bob there; the day says "Today", every message its time');

  // Dark mode follows the system.
  const background = () => b.evaluate(() => {
    const lum = (e) => {
      const [r, g, bl] = getComputedStyle(e).backgroundColor.match(/\d+/g).map(Number);
      return (0.2126 * r + 0.7152 * g + 0.0722 * bl) / 255;
    };
    return [lum(document.body), lum(document.querySelector('.sidebar')), lum(document.querySelector('.chat-head'))];
  });
  await b.emulateMedia({ colorScheme: 'dark' });
  const dark = await background();
  await b.screenshot({ path: join(SHOTS, 'bob-dark.png') });
  await b.emulateMedia({ colorScheme: 'light' });
  const light = await background();
  if (dark.some((l) => l > 0.2) || light.some((l) => l < 0.8)) {
    throw new Error(`backgrounds (luminance): dark ${JSON.stringify(dark)}, light ${JSON.stringify(light)}`);
  }
  log(`dark mode follows the system: backgrounds ${dark.map((l) => l.toFixed(2)).join('/')} dark, ${light.map((l) => l.toFixed(2)).join('/')} light`);
  await phone.close();

  // The outbox across a cut: a tab of Alice's whose sockets the test holds.
  const cutOff = await browser.newContext({ viewport: { width: 1180, height: 760 } });
  let cut = false;
  const held = [];
  await cutOff.routeWebSocket(/\/api\/v1\/chat\/ws$/, (ws) => {
    if (cut) return ws.close({ code: 3000, reason: 'cut' });
    held.push(ws.connectToServer());
    held.push(ws);
  });
  const c = await openTab(cutOff, 'alice-cut');
  await signIn(c, 'Alice');
  await openChat(c, chat);
  cut = true;
  await cutOff.setOffline(true);
  for (const ws of held.splice(0)) await ws.close({ code: 3000, reason: 'cut' }).catch(() => {});
  await until(c, 'status "Offline"', () => {
    const pill = document.querySelector('[data-testid=status]');
    return pill.dataset.state === 'offline' && pill.textContent === 'Offline';
  });
  const offline = ['Written offline, one', 'Written offline, two'];
  for (const text of offline) {
    await fill(c, 'message-input', text);
    await click(c, 'send-button');
  }
  await until(c, 'both messages waiting for the connection', (texts) => texts.every((t) =>
    [...document.querySelectorAll('#messages [data-testid=message][data-state=sending][data-waiting=true]')]
      .some((m) => m.querySelector('[data-testid=message-text]').textContent === t &&
        m.querySelector('[data-testid=message-state]').textContent.includes('Waiting for connection'))), offline);
  await c.screenshot({ path: join(SHOTS, 'outbox-waiting.png') });
  cut = false;
  await cutOff.setOffline(false);
  for (const p of [c, b, a1]) {
    await until(p, 'both offline messages stored, each once, in order', (texts) => {
      const shown = [...document.querySelectorAll('#messages [data-testid=message]')]
        .map((m) => [m.dataset.seq, m.querySelector('[data-testid=message-text]').textContent])
        .filter(([, t]) => texts.includes(t));
      return shown.length === 2 && shown.every(([seq], i) => seq && shown[i][1] === texts[i]);
    }, offline, 30_000);
  }
  const stored = (await rest(a1, 'GET', `/chats/${chat}`)).messages.filter((m) => offline.includes(m.content));
  if (stored.map((m) => m.content).join('|') !== offline.join('|')) {
    throw new Error(`the offline messages stored: ${JSON.stringify(stored.map((m) => [m.seq, m.content]))}`);
  }
  log(`cut off, alice-cut kept two messages waiting; back online they were stored once each (seqs ${stored.map((m) => m.seq).join(', ')}) and Bob got each once`);
  await cutOff.close();
}

/** The signed-in user's token, as the page keeps it (shared by the browser's tabs). */
const tokenOf = (page) => page.evaluate(() => JSON.parse(localStorage.getItem('confab.session')).token);

/** A REST call with the token of the user signed in to `page`. */
async function rest(page, method, path, body) {
  const res = await fetch(`${BASE}/api/v1/chat${path}`, {
    method,
    headers: { authorization: `Bearer ${await tokenOf(page)}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
  return res.json();
}

/** Types and sends a message in `page`'s open chat; waits until it is stored
 *  (outside the team chat: not part of `expected`). */
async function send(page, text) {
  await fill(page, 'message-input', text);
  await click(page, 'send-button');
  await seen(page, text);
}

/** Waits until `page` has chat `id` open with its pending answer waiting at
 *  `position`, saying so (`status`), with an enabled Cancel button; returns
 *  the bubble's stream id. */
async function queuedIn(page, id, position, status, streamId = null) {
  const h = await until(page, `"${status}" (position ${position}) on the pending answer in chat ${id}`, ([cid, pos, text, sid]) => {
    if (document.querySelector('[data-testid=chat-item][aria-current=true]')?.dataset.chatId !== cid) return false;
    const b = window.e2eBubble();
    return b && b.state === 'queued' && b.position === String(pos) && b.status === text && b.cancel &&
      !b.text && (!sid || b.id === sid) && b.id;
  }, [id, position, status, streamId]);
  return h.jsonValue();
}

/** The queue of the `slow` assistant (one answer at a time), a reload
 *  mid-answer, and the `cited` assistant's sources. Alice acts in tab one,
 *  her tab two and Bob watch; every chat is created over REST with its
 *  assistant (the page's own button only makes chats of the default one),
 *  then driven through the page. Leaves every tab on `team`. */
async function assistantQueue(a1, a2, b, team) {
  const all = [a1, a2, b];
  const words = (tag, n) => `${tag} ${Array.from({ length: n }, (_, i) => `word${i + 1}`).join(' ')}`;
  // At 250 ms a word: the first answer runs 10 s, long enough for the two
  // requests after it to wait while the page is looked at; the third 8 s.
  const prompts = [words('First question,', 40), words('Second question,', 12), words('Third question,', 32)];
  const slow = [];
  for (const title of ['Slow one', 'Slow two', 'Slow three']) {
    slow.push((await rest(a1, 'POST', '/chats', { title, participant_ids: ['bob'], assistant_id: 'slow' })).id);
  }
  const [q1, q2, q3] = slow;
  const sources = (await rest(a1, 'POST', '/chats', { title: 'Sources', participant_ids: ['bob'], assistant_id: 'cited' })).id;
  // Tab two watches chat two, Bob chat three; tab one writes in each in turn.
  await openChat(a2, q2);
  await openChat(b, q3);
  await openChat(a1, q1);
  await send(a1, prompts[0]);
  await until(a1, 'the first answer being written, not queued', () => {
    const bub = window.e2eBubble();
    return bub?.state === 'running' && bub.cancel;
  });
  await openChat(a1, q2);
  await send(a1, prompts[1]);
  const waiting2 = await queuedIn(a2, q2, 1, 'Queued (next)');
  await queuedIn(a1, q2, 1, 'Queued (next)', waiting2);
  await openChat(a1, q3);
  await send(a1, prompts[2]);
  const waiting3 = await queuedIn(b, q3, 2, 'Queued (2nd)');
  await queuedIn(a1, q3, 2, 'Queued (2nd)', waiting3);
  await queuedIn(a2, q2, 1, 'Queued (next)', waiting2);
  for (const [p, name] of [[a2, 'queue-next'], [b, 'queue-2nd']]) {
    await (await front(p)).screenshot({ path: join(SHOTS, `${name}.png`) });
  }
  log('the slow assistant writes one answer; the two asked after it wait, shown "Queued (next)" and "Queued (2nd)"');

  // Alice stops the first waiting request in tab two: its bubble goes
  // everywhere, and the other one moves up.
  await (await front(a2)).locator(`[data-testid=stream-bubble][data-stream-id="${waiting2}"] [data-testid=cancel-stream]`).click();
  await until(a2, 'the cancelled request\'s bubble gone', () => !window.e2eBubble());
  for (const p of [b, a1]) await queuedIn(p, q3, 1, 'Queued (next)', waiting3);
  log('a waiting request cancelled in alice-tab2: its bubble is gone, the last one is next');

  // The first answer ends, the third runs. Bob reloads while it is being
  // written: the text so far is there at once (a stream_snapshot), before
  // the answer is stored.
  const before = await until(b, 'the third answer being written, a few words in', ([sid, full]) => {
    const bub = window.e2eBubble();
    return bub?.id === sid && bub.state === 'running' && bub.text.split(' ').length >= 4 && full.startsWith(bub.text) && bub.text;
  }, [waiting3, prompts[2]], 25_000).then((h) => h.jsonValue());
  const snapshots = b.e2eSnapshots.length;
  await (await front(b)).reload();
  const after = await until(b, 'the answer so far, right after the reload', ([cid, sid]) => {
    if (document.querySelector('[data-testid=chat-item][aria-current=true]')?.dataset.chatId !== cid) return false;
    const bub = window.e2eBubble();
    return bub?.id === sid && bub.text ? { text: bub.text, state: bub.state, stored: window.e2eAnswers().length } : false;
  }, [q3, waiting3]).then((h) => h.jsonValue());
  if (!after.text.startsWith(before) || !prompts[2].startsWith(after.text) || after.text === prompts[2] ||
      after.state !== 'running' || after.stored) {
    throw new Error(`bob: after the reload the bubble first showed ${JSON.stringify(after)}, ` +
      `not the partial answer (more than ${JSON.stringify(before)}) still being written`);
  }
  const snapshot = b.e2eSnapshots.slice(snapshots).find((d) => d.stream_id === waiting3);
  if (!snapshot || !snapshot.content.startsWith(before)) {
    throw new Error(`bob: no stream_snapshot with the text so far after the reload: ${JSON.stringify(b.e2eSnapshots.slice(snapshots))}`);
  }
  log(`bob reloaded mid-answer: ${before.split(' ').length} words before, ${after.text.split(' ').length} shown at once after`);
  const answer = await until(b, 'the whole third answer, stored', (full) => {
    const done = window.e2eAnswers();
    return !window.e2eBubble() && done.length === 1 && done[0][1] === full && done;
  }, prompts[2], 20_000).then((h) => h.jsonValue());
  await until(a1, 'the whole third answer, stored', ([id, full]) => !window.e2eBubble() &&
    window.e2eMsg(id)?.querySelector('[data-testid=message-text]').textContent === full, [answer[0][0], prompts[2]]);

  // What is stored: the first and third answers in full; nothing for the
  // cancelled one, in the page or on the server.
  const stored = async (id) => (await rest(a1, 'GET', `/chats/${id}`)).messages.filter((m) => m.message_type === 'assistant');
  for (const [id, prompt] of [[q1, prompts[0]], [q3, prompts[2]]]) {
    const answers = await stored(id);
    if (answers.length !== 1 || answers[0].content !== prompt || answers[0].metadata?.finish_reason !== 'stop') {
      throw new Error(`chat ${id}: stored answers ${JSON.stringify(answers)}, want the whole echo of its question`);
    }
  }
  if ((await stored(q2)).length) throw new Error(`the cancelled request left an answer: ${JSON.stringify(await stored(q2))}`);
  const leftover = await a2.evaluate(() => ({ bubble: window.e2eBubble(), answers: window.e2eAnswers() }));
  if (leftover.bubble || leftover.answers.length) throw new Error(`alice-tab2: chat two shows ${JSON.stringify(leftover)}`);
  log('the answers stored equal the questions echoed; nothing stored for the cancelled one');

  // Sources: the cited answer lists its citations under it, as links.
  await openChat(b, sources);
  await openChat(a1, sources);
  await send(a1, 'Where does that come from?');
  const want = [['https://example.com/a', 'Example A'], ['https://example.org/b', 'example.org']];
  for (const p of [a1, b]) {
    await until(p, 'the cited answer with its two sources as links', (w) => {
      const m = document.querySelector('#messages .msg.assistant[data-seq]');
      const links = m ? [...m.querySelectorAll('ol.citations a.citation')] : [];
      return m?.querySelector('[data-testid=message-text]').textContent === 'The answer is forty two' &&
        JSON.stringify(links.map((a) => [a.getAttribute('href'), a.textContent])) === JSON.stringify(w) &&
        links.every((a) => a.target === '_blank' && a.rel === 'noopener noreferrer');
    }, want);
  }
  await (await front(a1)).screenshot({ path: join(SHOTS, 'citations.png') });
  log('the cited answer shows its sources as links, in both tabs');

  for (const p of all) await openChat(p, team);
}

// Behind a proxy that refuses WebSocket upgrades (tests/lb/nginx-no-websocket.conf):
// the page moves to the HTTP transport by itself, and stays real-time on it.
async function overHttp(browser) {
  const viewport = { width: 1180, height: 760 };
  const a = await openTab(await browser.newContext({ viewport }), 'alice');
  const b = await openTab(await browser.newContext({ viewport }), 'bob');
  const both = [a, b];
  await signIn(a, 'Alice');
  await signIn(b, 'Bob');
  for (const p of both) await over(p, 'http');
  log(`both on the HTTP transport: alice on ${await connected(a)}, bob on ${await connected(b)}`);

  const chat = await createChat(a, 'Over HTTP', 'bob');
  await openChat(b, chat);
  // Presence, while the chat is open in both: each sees the other's dot.
  await seesPresent(b, 'alice', chat);
  await seesPresent(a, 'bob', chat);
  log('presence dots shown in the header and the sidebar');

  await say(a, 'Hello from Alice, no WebSocket needed', both);
  await say(b, 'Hi Alice, Bob here, over HTTP too', both);
  log('messages reach both tabs');

  // Typing, each way; an emptied input ends it.
  await (await front(b)).getByTestId('message-input').pressSequentially('Bob is typ', { delay: 5 });
  await until(a, 'typing indicator for bob', () =>
    document.querySelector('[data-testid=typing-indicator]').textContent.includes('Bob is typing'));
  await (await front(a)).getByTestId('message-input').pressSequentially('Alice is typ', { delay: 5 });
  await until(b, 'typing indicator for alice', () =>
    document.querySelector('[data-testid=typing-indicator]').textContent.includes('Alice is typing'));
  await fill(a, 'message-input', '');
  await fill(b, 'message-input', '');
  for (const p of both) {
    await until(p, 'typing indicator cleared', () =>
      document.querySelector('[data-testid=typing-indicator]').textContent === '');
  }
  log('typing shown to the other tab, and cleared');

  const prompt = 'Echo these words back one by one over the HTTP transport so both tabs watch it stream';
  await watchStreams(both);
  await say(a, prompt, both);
  await streamedEverywhere(a, prompt, both);
  log('assistant answer streamed into both tabs');

  // Sends in quick succession, queued behind each other's POSTs: stored in
  // the order they were sent.
  for (const text of ['First of three quick ones', 'Second of three', 'Third of three']) {
    await fill(a, 'message-input', text);
    await click(a, 'send-button');
    expected.push(text);
  }
  const lists = [await assertTranscript(a), await assertTranscript(b)];
  if (JSON.stringify(lists[0]) !== JSON.stringify(lists[1])) {
    throw new Error(`seqs differ between the tabs\n  ${JSON.stringify(lists[0])}\n  ${JSON.stringify(lists[1])}`);
  }
  log(`both tabs show the same ${expected.length} messages, in the order sent`);

  // The node behind Alice's stream drains (SIGTERM): the stream's last frame
  // says 1012, and the page opens a new one, with a fresh ticket, on the
  // other node, catching up on what Bob sent meanwhile.
  const victim = await connected(a);
  const streams = a.e2eStreams;
  log(`draining ${victim} (pid ${NODES[victim]}) behind alice's stream`);
  process.kill(NODES[victim], 'SIGTERM');
  await until(a, 'status to leave connected', () =>
    document.querySelector('[data-testid=status]').dataset.state !== 'connected');
  if ((await connected(b)) !== victim) await say(b, 'Sent while Alice was away', [b]);
  await connected(a, victim);
  await over(a, 'http');
  await connected(b, victim);
  await say(b, 'Welcome back, Alice', both);
  if (a.e2eStreams <= streams) throw new Error('alice: no new event stream was opened');
  const after = [await assertTranscript(a), await assertTranscript(b)];
  if (JSON.stringify(after[0]) !== JSON.stringify(after[1])) {
    throw new Error(`seqs differ between the tabs\n  ${JSON.stringify(after[0])}\n  ${JSON.stringify(after[1])}`);
  }
  log(`alice back on ${await connected(a)} over a new stream; both tabs show the same ${expected.length} messages`);

  for (const p of both) {
    await over(p, 'http');
    if (p.e2eSocketFrames) throw new Error(`${p.label}: a socket got ${p.e2eSocketFrames} frames through the proxy`);
    if (!p.e2eFramePosts) throw new Error(`${p.label}: no frame was POSTed`);
  }
  log(`no socket got through; frame POSTs: alice ${a.e2eFramePosts}, bob ${b.e2eFramePosts}`);
  if (pageErrors.length) throw new Error(`errors in the page:\n  ${pageErrors.join('\n  ')}`);
  await screenshots();
}

const scenarios = { websocket: overWebSocket, http: overHttp };
if (!scenarios[SCENARIO]) fail(`unknown CONFAB_E2E_SCENARIO ${SCENARIO} (websocket or http)`);

const timer = setTimeout(async () => {
  console.error(`e2e FAILED: the scenario took longer than ${TOTAL_MS / 1000} s`);
  await screenshots('-timeout');
  process.exit(1);
}, TOTAL_MS);

// Failure shots of an earlier run would mislead.
mkdirSync(SHOTS, { recursive: true });
for (const f of readdirSync(SHOTS)) if (/-(failure|timeout)\.png$/.test(f)) rmSync(join(SHOTS, f));

let browser;
try {
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
  await scenarios[SCENARIO](browser);
  log(`e2e (${SCENARIO}) passed`);
} catch (e) {
  console.error(`e2e FAILED: ${e.message}`);
  if (pageErrors.length) console.error(`errors in the page:\n  ${pageErrors.join('\n  ')}`);
  await screenshots('-failure');
  process.exitCode = 1;
} finally {
  clearTimeout(timer);
  await browser?.close();
}
