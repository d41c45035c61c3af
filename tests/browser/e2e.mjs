// End-to-end test of the demo page in a real Chromium, against two confab
// nodes behind nginx. Started by tests/browser.rs, which provides:
//   CONFAB_E2E_URL     the balancer's base URL, e.g. http://127.0.0.1:8080
//   CONFAB_E2E_SHOTS   folder for screenshots (written at the end and on failure)
//   CONFAB_E2E_NODES   JSON map node_id -> pid, to SIGKILL the node behind a tab
//   CONFAB_E2E_CHROMIUM (optional) the browser binary, default /usr/bin/chromium
//
// Alice has two tabs (same user, one browser context), Bob one (another
// context). Every step waits for a condition with a timeout; none sleeps.

import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BASE = must('CONFAB_E2E_URL');
const SHOTS = must('CONFAB_E2E_SHOTS');
const NODES = JSON.parse(must('CONFAB_E2E_NODES'));
const CHROMIUM = process.env.CONFAB_E2E_CHROMIUM || '/usr/bin/chromium';
const STEP_MS = 10_000; // any single wait
const TOTAL_MS = 90_000; // the whole scenario

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
async function until(page, what, fn, arg) {
  try {
    return await page.waitForFunction(fn, arg, { timeout: STEP_MS, polling: 50 });
  } catch (e) {
    throw new Error(`${page.label}: timed out after ${STEP_MS} ms waiting for ${what}`);
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
  page.setDefaultTimeout(STEP_MS);
  page.on('pageerror', (e) => pageErrors.push(`${label}: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/WebSocket|Failed to load resource|ERR_CONNECTION/.test(m.text())) {
      pageErrors.push(`${label} console: ${m.text()}`);
    }
  });
  pages.push(page);
  return page;
}

async function signIn(page, name) {
  await (await front(page)).goto(BASE);
  await fill(page, 'signin-name', name);
  await click(page, 'signin-button');
  await connected(page);
}

/** Waits for the status pill to say connected; returns the node id it shows. */
async function connected(page, notOn) {
  await until(page, `status connected${notOn ? ` (not on ${notOn})` : ''}`, (not) => {
    const pill = document.querySelector('[data-testid=status]');
    return pill.dataset.state === 'connected' && pill.dataset.nodeId && pill.dataset.nodeId !== not;
  }, notOn ?? null);
  return page.getByTestId('status').getAttribute('data-node-id');
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
    els.map((e) => [Number(e.dataset.seq), e.querySelector('[data-testid=message-text]').textContent]));
}

/** Waits until the open chat shows `text` as a stored message (with a seq). */
function seen(page, text) {
  return until(page, `message "${text}"`, (t) =>
    [...document.querySelectorAll('#messages [data-testid=message][data-seq] [data-testid=message-text]')]
      .some((e) => e.textContent === t), text);
}

const expected = []; // the conversation, in seq order: texts

/** Types and sends a message in `page`; waits until every tab shows it. */
async function say(page, text, everyone) {
  await fill(page, 'message-input', text);
  await click(page, 'send-button');
  expected.push(text);
  for (const p of everyone) await seen(p, text);
}

async function assertTranscript(page) {
  const want = expected.map((t, i) => [i + 1, t]);
  await until(page, `${want.length} messages`, (n) =>
    document.querySelectorAll('#messages [data-testid=message][data-seq]').length >= n &&
    !document.querySelector('#messages [data-testid=message]:not([data-seq])'), want.length);
  const got = await transcript(page);
  const same = JSON.stringify(got) === JSON.stringify(want);
  if (!same) {
    throw new Error(`${page.label}: transcript differs\n  want ${JSON.stringify(want)}\n  got  ${JSON.stringify(got)}`);
  }
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

async function scenario(browser) {
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
  await signIn(a2, 'Alice');
  await signIn(b, 'Bob');
  log(`signed in: alice-tab1 on ${await connected(a1)}, alice-tab2 on ${await connected(a2)}, bob on ${await connected(b)}`);

  // Alice creates a chat with Bob; it shows up in every tab.
  await click(a1, 'new-chat-toggle');
  await fill(a1, 'new-chat-title', 'Team');
  await fill(a1, 'new-chat-invite', 'bob');
  await click(a1, 'new-chat-create');
  const team = await a1.locator('[data-testid=chat-item][aria-current=true]').getAttribute('data-chat-id');
  for (const p of [a2, b]) await openChat(p, team);
  log(`chat ${team} open in every tab`);

  // A message typed in one tab appears in all three.
  await say(a1, 'Hello from Alice, tab one', all);
  await say(b, 'Hi Alice, Bob here', all);
  await say(a2, 'And hello from Alice, tab two', all);
  log('messages reach every tab');

  // Typing indicators: Bob types, both Alice tabs see it; Alice types in tab
  // one, her tab two and Bob see it. Sending ends it.
  await (await front(b)).getByTestId('message-input').pressSequentially('Bob is typ', { delay: 5 });
  for (const p of [a1, a2]) {
    await until(p, 'typing indicator for bob', () =>
      document.querySelector('[data-testid=typing-indicator]').textContent.includes('bob is typing'));
  }
  await (await front(a1)).getByTestId('message-input').pressSequentially('Typing in', { delay: 5 });
  for (const p of [a2, b]) {
    await until(p, 'typing indicator for alice', () =>
      document.querySelector('[data-testid=typing-indicator]').textContent.includes('alice'));
  }
  await (await front(b)).getByTestId('message-input').press('Enter');
  expected.push('Bob is typ');
  for (const p of all) await seen(p, 'Bob is typ');
  for (const p of [a1, a2]) {
    await until(p, 'bob no longer typing', () =>
      !document.querySelector('[data-testid=typing-indicator]').textContent.includes('bob'));
  }
  await fill(a1, 'message-input', ''); // emptied: typing stops
  for (const p of [a2, b]) {
    await until(p, 'typing indicator cleared', () =>
      document.querySelector('[data-testid=typing-indicator]').textContent === '');
  }
  log('typing indicators shown and cleared');

  // The echo assistant answers; the answer streams into all three tabs.
  const prompt = 'Please echo these words back one by one so that every tab can watch the answer stream in live';
  for (const p of all) {
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
  await say(a1, prompt, all);
  await click(a1, 'ask-assistant');
  expected.push(prompt);
  for (const p of all) {
    await until(p, 'the streamed answer, stored', (t) =>
      [...document.querySelectorAll('#messages .msg.assistant[data-seq] [data-testid=message-text]')]
        .some((e) => e.textContent === t), prompt);
    const s = await p.evaluate(() => window.e2eStream);
    if (!s.bubbles || !s.cancel || !s.partial) {
      throw new Error(`${p.label}: no stream bubble with text and a Cancel button was seen while streaming (${JSON.stringify(s)})`);
    }
    if (await p.getByTestId('stream-bubble').count()) throw new Error(`${p.label}: stream bubble left behind`);
  }
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
  await openChat(a1, team);
  await until(a2, 'unread badge cleared by the read in tab one', (id) =>
    !document.querySelector(`[data-testid=chat-item][data-chat-id="${id}"] [data-testid=unread-badge]`), team);
  await until(a1, 'no badge on the open chat', (id) =>
    !document.querySelector(`[data-testid=chat-item][data-chat-id="${id}"] [data-testid=unread-badge]`), team);
  await openChat(a2, team);
  log('unread badge shown in both Alice tabs, cleared in tab two by reading in tab one');

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
  process.kill(pid, 'SIGKILL');
  await until(a2, 'status to leave connected', () =>
    document.querySelector('[data-testid=status]').dataset.state !== 'connected');
  const missed = ['Sent while tab two was away, 1', 'Sent while tab two was away, 2', 'Sent while tab two was away, 3'];
  for (const text of missed) await say(sender, text, [sender]);
  const stillAway = (await a2.getByTestId('status').getAttribute('data-state')) !== 'connected';
  const newNode = await connected(a2, victimNode);
  log(`alice-tab2 reconnected on ${newNode} (messages sent while it was away: ${stillAway ? 'all' : 'some'})`);
  await say(sender, 'Welcome back', all);
  for (const p of all) await connected(p, victimNode);
  for (const p of all) await assertTranscript(p);
  log(`every tab shows seqs 1..${expected.length}, each once, in order`);
  if (pageErrors.length) throw new Error(`errors in the page:\n  ${pageErrors.join('\n  ')}`);

  await screenshots();
  // The narrow layout, for a look.
  await (await front(b)).setViewportSize({ width: 390, height: 760 });
  await b.screenshot({ path: join(SHOTS, 'bob-narrow.png') });
  await b.getByRole('button', { name: 'Back to chats' }).click();
  await b.screenshot({ path: join(SHOTS, 'bob-narrow-list.png') });
}

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
  await scenario(browser);
  log('e2e passed');
} catch (e) {
  console.error(`e2e FAILED: ${e.message}`);
  if (pageErrors.length) console.error(`errors in the page:\n  ${pageErrors.join('\n  ')}`);
  await screenshots('-failure');
  process.exitCode = 1;
} finally {
  clearTimeout(timer);
  await browser?.close();
}
