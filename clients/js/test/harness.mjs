/**
 * The integration tests' harness: real processes, no mocks.
 *
 * - `startCluster()`: a `redis-server` on a free port and N `confab serve`
 *   node processes sharing it and one SQLite file (the binary is
 *   `$CONFAB_BIN`), each started as tests/common/procs.rs does: listen on
 *   127.0.0.1:0 (or the port it had, on a restart), wait for the port file,
 *   then for `GET /ready` 200.
 * - `startProxy()`: a TCP balancer in front of the nodes, round robin over the
 *   live ones, that can cut every connection (the "network cut"), refuse new
 *   ones for a while (the client stays offline), or refuse WebSocket upgrades
 *   with 403 (a proxy that does not pass them).
 * - `token()`: HS256 JWTs signed with the embedded development secret, so a
 *   test chooses their lifetime.
 * - REST helpers, `waitFor()`, a `WebSocket` that records what the client
 *   sends, a file-backed `OutboxStore`, and `useCluster()`: one cluster per
 *   test file, torn down in `after` even on failure; each test gets a
 *   `Scope` whose clients are closed when it ends, pass or fail; a failing
 *   test prints the nodes' log tail (they log to stdout and stderr).
 *
 * Importing this module has no side effects (node --test may load it as a
 * test file of its own).
 */

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import WS from 'ws';

/** The embedded development secret (config/default.toml). */
export const DEV_SECRET = 'confab-dev-secret-do-not-use-in-production';

/** The confab binary under test. */
export function confabBin() {
  const bin = process.env.CONFAB_BIN;
  if (!bin) {
    throw new Error(
      'CONFAB_BIN is not set: point it at the confab binary (cargo build; CONFAB_BIN=target/debug/confab), ' +
        'or run the tests through `cargo test --test sdk`',
    );
  }
  if (!fs.existsSync(bin)) throw new Error(`CONFAB_BIN=${bin} does not exist`);
  return bin;
}

// ---------------------------------------------------------------------------
// Waiting

/**
 * Polls `fn` every 10 ms until it returns a truthy value, which it returns;
 * throws after `ms` saying what was awaited (`what`: a text, or a function
 * making one then, to show the state it ended in). An error thrown by `fn`
 * ends the wait at once (a node that died will not become ready).
 */
export async function waitFor(fn, what, ms = 10000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${typeof what === 'function' ? what() : what}`);
    }
    await delay(10);
  }
}

/** A plain timer. Only for pacing (a load, an observation window), never to wait for a condition. */
export function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Rejects after `ms` unless `promise` settles first. */
export function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------
// Ports and processes

/** A TCP port on 127.0.0.1 that was free a moment ago (for redis-server). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function redisAnswers(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let got = '';
    const done = (ok) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(1000, () => done(false));
    s.on('error', () => done(false));
    s.on('connect', () => s.write('PING\r\n'));
    s.on('data', (d) => {
      got += d.toString('latin1');
      if (got.includes('\r\n')) done(got.startsWith('+PONG'));
    });
  });
}

/** Keeps the last `max` lines written to a stream. */
class Tail {
  constructor(max = 200) {
    this.max = max;
    this.lines = [];
    this.partial = '';
  }

  push(chunk) {
    // eslint-disable-next-line no-control-regex
    const text = chunk.toString('utf8').replace(/\x1b\[[0-9;]*m/g, '');
    const parts = (this.partial + text).split('\n');
    this.partial = parts.pop();
    this.lines.push(...parts);
    if (this.lines.length > this.max) this.lines.splice(0, this.lines.length - this.max);
  }

  text(n = 40) {
    const all = this.partial ? [...this.lines, this.partial] : this.lines;
    return all.slice(-n).join('\n');
  }
}

/** Resolves when `child` has exited (at once if it already has). */
function exitOf(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

/** A `redis-server` child process. */
export class Redis {
  constructor(port, dir) {
    this.port = port;
    this.dir = dir;
    this.child = null;
  }

  static async start(dir) {
    const r = new Redis(await freePort(), dir);
    await r.restart();
    return r;
  }

  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }

  async restart() {
    if (this.child) throw new Error('redis already running');
    const child = spawn(
      'redis-server',
      ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', this.dir],
      { stdio: ['ignore', 'ignore', 'ignore'] },
    );
    this.child = child;
    const spawnError = new Promise((_, reject) =>
      child.once('error', (e) =>
        reject(new Error(`redis-server could not start (apt-get install redis-server): ${e.message}`)),
      ),
    );
    spawnError.catch(() => {});
    await Promise.race([
      spawnError,
      waitFor(async () => {
        if (child.exitCode !== null) throw new Error(`redis-server exited with ${child.exitCode}`);
        return redisAnswers(this.port);
      }, 'redis to answer PING', 10000),
    ]);
  }

  async kill() {
    const c = this.child;
    this.child = null;
    if (!c) return;
    c.kill('SIGKILL');
    await exitOf(c);
  }
}

/**
 * A `confab serve` process. `url` is its base URL (http://127.0.0.1:PORT);
 * `kill(signal)` signals it and waits for its exit; `restart()` starts it
 * again on the port it had (a balancer names that address).
 */
export class NodeProcess {
  constructor({ id, env, runDir, workDir }) {
    this.id = id;
    this.env = env;
    this.runDir = runDir;
    this.workDir = workDir;
    this.port = 0;
    this.child = null;
    this.tail = new Tail();
    this.starts = 0;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/api/v1/chat/ws`;
  }

  /** True while the process runs. */
  get alive() {
    return this.child !== null && this.child.exitCode === null && this.child.signalCode === null;
  }

  get pid() {
    return this.child?.pid ?? null;
  }

  /** Starts the node on `port` (0: any), waits for its port file then /ready; returns the port. */
  async spawn(port = 0) {
    if (this.alive) throw new Error(`node ${this.id} is already running`);
    const portFile = path.join(this.runDir, 'port');
    await fsp.rm(portFile, { force: true });
    this.starts += 1;
    this.tail.push(`--- ${this.id} start #${this.starts} (port ${port || 'any'}) ---\n`);
    const child = spawn(confabBin(), ['serve', '--port-file', portFile], {
      cwd: this.workDir,
      env: {
        ...process.env,
        CONFAB_SERVER__LISTEN: `127.0.0.1:${port}`,
        CONFAB_SERVER__NODE_ID: this.id,
        RUST_LOG: 'warn',
        ...this.env,
      },
      // The node logs to stdout; both go to the tail.
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    child.stdout.on('data', (d) => this.tail.push(d));
    child.stderr.on('data', (d) => this.tail.push(d));
    child.once('exit', (code, signal) => this.tail.push(`--- ${this.id} exited (code ${code}, signal ${signal}) ---\n`));
    let spawnError = null;
    child.once('error', (e) => {
      spawnError = e;
    });
    await waitFor(
      () => {
        if (spawnError) throw new Error(`starting ${confabBin()}: ${spawnError.message}`);
        if (child.exitCode !== null || child.signalCode !== null) {
          throw new Error(`node ${this.id} exited before listening; stderr:\n${this.tail.text()}`);
        }
        return fs.existsSync(portFile);
      },
      `node ${this.id}'s port file`,
      30000,
    );
    const addr = (await fsp.readFile(portFile, 'utf8')).trim();
    const got = Number(addr.split(':').pop());
    if (!Number.isInteger(got) || got <= 0) throw new Error(`port file holds ${JSON.stringify(addr)}`);
    await waitFor(
      async () => {
        if (!this.alive) throw new Error(`node ${this.id} exited; stderr:\n${this.tail.text()}`);
        const r = await fetch(`http://127.0.0.1:${got}/ready`).catch(() => null);
        if (r) await r.arrayBuffer().catch(() => {});
        return r?.status === 200;
      },
      `node ${this.id} to be ready`,
      30000,
    );
    return got;
  }

  async start() {
    this.port = await this.spawn(0);
    return this;
  }

  /** Starts the node again on the port it had. */
  async restart() {
    const got = await this.spawn(this.port);
    if (got !== this.port) throw new Error(`node ${this.id} restarted on ${got}, not ${this.port}`);
    return this;
  }

  /** Sends `signal` without waiting. */
  signal(signal) {
    if (this.alive) this.child.kill(signal);
  }

  /**
   * Sends `signal` (SIGKILL by default; null: none, wait for the exit only)
   * and waits for the exit (SIGKILL after `ms`).
   */
  async kill(signal = 'SIGKILL', ms = 15000) {
    const c = this.child;
    if (!c) return;
    const exited = exitOf(c);
    if (this.alive && signal) c.kill(signal);
    const timer = setTimeout(() => c.kill('SIGKILL'), ms);
    await exited;
    clearTimeout(timer);
  }

  /** The last lines the node wrote (its log, stdout and stderr, all of its runs). */
  logTail(n = 40) {
    return this.tail.text(n);
  }
}

// ---------------------------------------------------------------------------
// The cluster

/**
 * Redis, `nodes` confab processes (ids n0, n1, ...) sharing it and one SQLite
 * file, all with `env` (CONFAB_* settings) on top of the base settings.
 */
export async function startCluster({ nodes = 2, drainSecs = 1, env = {} } = {}) {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'confab-sdk-'));
  const cluster = new Cluster(dir, drainSecs, env);
  try {
    cluster.redis = await Redis.start(dir);
    for (let i = 0; i < nodes; i++) await cluster.addNode(`n${i}`);
  } catch (e) {
    await cluster.stop();
    throw e;
  }
  return cluster;
}

export class Cluster {
  constructor(dir, drainSecs, env) {
    this.dir = dir;
    this.drainSecs = drainSecs;
    this.env = env;
    this.redis = null;
    /** @type {NodeProcess[]} */
    this.nodes = [];
    this.proxies = [];
  }

  baseEnv() {
    return {
      CONFAB_DATABASE__URL: `sqlite://${this.dir}/confab.db?mode=rwc`,
      CONFAB_BUS__REDIS_URL: this.redis.url,
      CONFAB_SERVER__DRAIN_SECS: String(this.drainSecs),
      ...this.env,
    };
  }

  /** Starts one more node, with `extra` settings of its own. */
  async addNode(id, extra = {}) {
    const runDir = path.join(this.dir, `run-${id}`);
    await fsp.mkdir(runDir, { recursive: true });
    const node = new NodeProcess({ id, env: { ...this.baseEnv(), ...extra }, runDir, workDir: this.dir });
    this.nodes.push(node);
    await node.start();
    return node;
  }

  node(id) {
    const n = this.nodes.find((x) => x.id === id);
    if (!n) throw new Error(`no node ${id}`);
    return n;
  }

  /** A balancer over `nodes` (default: every node of the cluster). */
  async proxy(options = {}) {
    const nodes = options.nodes ?? this.nodes.slice();
    const p = await startProxy(() => nodes.filter((n) => n.alive).map((n) => n.port), options);
    this.proxies.push(p);
    return p;
  }

  /** Every node's log tail (stdout and stderr), for a failing test's output. */
  logs(n = 40) {
    return this.nodes.map((node) => `===== node ${node.id} (port ${node.port}) log tail =====\n${node.logTail(n)}`).join('\n');
  }

  async stop() {
    for (const p of this.proxies) await p.close().catch(() => {});
    this.proxies = [];
    await Promise.all(this.nodes.map((n) => n.kill('SIGKILL').catch(() => {})));
    if (this.redis) await this.redis.kill().catch(() => {});
    await fsp.rm(this.dir, { recursive: true, force: true }).catch(() => {});
  }
}

// ---------------------------------------------------------------------------
// The balancer

function headerEnd(buf) {
  return buf.indexOf('\r\n\r\n');
}

/**
 * A TCP proxy on a free port, round robin over `upstreams()` (ports), trying
 * the next one when a connect fails.
 *
 * - `cutAll()`: destroys every proxied connection, both ways (a network cut).
 * - `pause()` / `resume()`: while paused, new connections are closed at once
 *   (the client stays offline).
 * - `refuseUpgrades` (option or property): a request whose headers carry
 *   `Upgrade: websocket` is answered `403 Forbidden` and closed; others pass.
 * - `cutOnDownstream(re, {pause})`: the next chunk from a node matching `re`
 *   is not forwarded: every connection is cut there (and the proxy paused).
 */
export async function startProxy(upstreams, { refuseUpgrades = false } = {}) {
  const proxy = new Proxy(upstreams, refuseUpgrades);
  await proxy.listen();
  return proxy;
}

export class Proxy {
  constructor(upstreams, refuseUpgrades) {
    this.upstreams = upstreams;
    this.refuseUpgrades = refuseUpgrades;
    this.paused = false;
    this.rr = 0;
    /** Live pairs: {client, upstream}. */
    this.conns = new Set();
    /** Counters, for assertions. */
    this.stats = { accepted: 0, refusedWhilePaused: 0, upgradesRefused: 0, cuts: 0 };
    this.downstreamTrap = null;
    this.server = net.createServer({ allowHalfOpen: true }, (c) => this.onConnection(c));
  }

  listen() {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, '127.0.0.1', () => {
        this.port = this.server.address().port;
        resolve();
      });
    });
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/api/v1/chat/ws`;
  }

  pause() {
    this.paused = true;
  }

  resume() {
    this.paused = false;
  }

  /** Destroys every proxied connection, both ways. */
  cutAll() {
    this.stats.cuts += 1;
    for (const pair of this.conns) this.destroyPair(pair);
    this.conns.clear();
  }

  /**
   * Cuts every connection at the next chunk from a node that matches `re`
   * (tested on its latin1 text), without forwarding it; with `pause`, the
   * proxy is paused in the same moment. Resolves once it happened.
   */
  cutOnDownstream(re, { pause = false } = {}) {
    return new Promise((resolve) => {
      this.downstreamTrap = { re, pause, resolve };
    });
  }

  destroyPair(pair) {
    for (const s of [pair.client, pair.upstream]) {
      if (!s || s.destroyed) continue;
      if (typeof s.resetAndDestroy === 'function' && s.readyState !== 'opening') s.resetAndDestroy();
      else s.destroy();
    }
  }

  onConnection(client) {
    client.on('error', () => {});
    if (this.paused) {
      this.stats.refusedWhilePaused += 1;
      client.destroy();
      return;
    }
    this.stats.accepted += 1;
    const pair = { client, upstream: null };
    this.conns.add(pair);
    let pending = [];
    let decided = !this.refuseUpgrades;
    let connected = false;
    const onData = (d) => {
      if (connected) {
        pair.upstream.write(d);
        return;
      }
      pending.push(d);
      if (decided) return;
      const head = Buffer.concat(pending);
      if (headerEnd(head) < 0 && head.length < 65536) return;
      decided = true;
      const headers = head.subarray(0, Math.max(headerEnd(head), 0) || head.length).toString('latin1');
      if (/^upgrade:[ \t]*websocket[ \t]*$/im.test(headers)) {
        this.stats.upgradesRefused += 1;
        this.conns.delete(pair);
        client.end('HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 9\r\nConnection: close\r\n\r\nForbidden');
        client.removeListener('data', onData);
        client.resume();
        return;
      }
      this.connectUpstream(pair, pending, () => {
        connected = true;
        pending = [];
      });
    };
    client.on('data', onData);
    client.on('end', () => {
      if (connected) pair.upstream.end();
    });
    client.on('close', () => {
      this.conns.delete(pair);
      if (pair.upstream && !pair.upstream.destroyed) pair.upstream.destroy();
    });
    if (decided) {
      this.connectUpstream(pair, pending, () => {
        connected = true;
        pending = [];
      });
    }
  }

  /** Connects `pair.client` to the next live upstream (trying each once), then writes `pending`. */
  connectUpstream(pair, pending, onConnected) {
    const ports = this.upstreams();
    const order = ports.length ? ports.map((_, i) => ports[(this.rr + i) % ports.length]) : [];
    this.rr = ports.length ? (this.rr + 1) % ports.length : 0;
    const attempt = (i) => {
      if (pair.client.destroyed) return;
      if (i >= order.length) {
        pair.client.destroy();
        return;
      }
      const up = net.connect({ port: order[i], host: '127.0.0.1', allowHalfOpen: true });
      let open = false;
      up.once('connect', () => {
        open = true;
        if (pair.client.destroyed) {
          up.destroy();
          return;
        }
        pair.upstream = up;
        for (const d of pending) up.write(d);
        onConnected();
        if (pair.client.readableEnded) up.end();
      });
      up.on('error', () => {
        if (!open) attempt(i + 1);
      });
      up.on('data', (d) => {
        const trap = this.downstreamTrap;
        if (trap && trap.re.test(d.toString('latin1'))) {
          this.downstreamTrap = null;
          if (trap.pause) this.paused = true;
          this.cutAll();
          trap.resolve();
          return;
        }
        if (!pair.client.destroyed) pair.client.write(d);
      });
      up.on('end', () => {
        if (!pair.client.destroyed) pair.client.end();
      });
      up.on('close', () => {
        if (open && !pair.client.destroyed) pair.client.destroy();
      });
    };
    attempt(0);
  }

  async close() {
    this.cutAll();
    await new Promise((resolve) => this.server.close(() => resolve()));
  }
}

// ---------------------------------------------------------------------------
// Tokens

function b64url(data) {
  return Buffer.from(data).toString('base64url');
}

/**
 * An HS256 JWT for `sub`, signed with the development secret (or `secret`):
 * `ttlSecs` from now (3600; negative: already expired), `name` if given.
 */
export function token(sub, { ttlSecs = 3600, name, secret = DEV_SECRET } = {}) {
  const iat = Math.floor(Date.now() / 1000);
  const claims = { sub, iat, exp: iat + ttlSecs };
  if (name !== undefined) claims.name = name;
  const head = b64url(JSON.stringify({ typ: 'JWT', alg: 'HS256' }));
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

// ---------------------------------------------------------------------------
// REST

/** A REST call as `user` against `base`; returns the parsed body; throws on an unexpected status. */
export async function rest(base, user, method, path_, body, { expect } = {}) {
  const r = await fetch(`${base}${path_}`, {
    method,
    headers: {
      authorization: `Bearer ${token(user)}`,
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
    },
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  const ok = expect ? [].concat(expect).includes(r.status) : r.ok;
  if (!ok) throw new Error(`${method} ${path_} as ${user}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** Creates a conversation owned by `owner` with `others`; returns its id. */
export async function createChat(base, owner, others = [], extra = {}) {
  const c = await rest(base, owner, 'POST', '/api/v1/chat/chats', { participant_ids: others, ...extra }, { expect: 201 });
  return c.id;
}

/** The conversation as the server has it (`last_seq`, participants...). */
export async function getChat(base, user, id) {
  const r = await rest(base, user, 'GET', `/api/v1/chat/chats/${id}?limit=1`);
  return r.conversation;
}

/** Every stored message of a conversation, oldest first, read over REST. */
export async function history(base, user, id) {
  const all = [];
  let after = 0;
  for (;;) {
    const r = await rest(base, user, 'GET', `/api/v1/chat/chats/${id}?after_seq=${after}&limit=200`);
    all.push(...r.messages);
    if (!r.has_more || r.messages.length === 0) return all;
    after = r.messages[r.messages.length - 1].seq;
  }
}

/** Sends a message over REST (201, or 200 for a duplicate client_msg_id). */
export async function restSend(base, user, id, content, extra = {}) {
  return rest(base, user, 'POST', `/api/v1/chat/chats/${id}/messages`, { content, ...extra }, { expect: [200, 201] });
}

/** How many stored messages carry each client_msg_id. */
export function countByClientMsgId(messages) {
  const counts = new Map();
  for (const m of messages) {
    if (m.client_msg_id) counts.set(m.client_msg_id, (counts.get(m.client_msg_id) ?? 0) + 1);
  }
  return counts;
}

// ---------------------------------------------------------------------------
// WebSockets

/**
 * A `WebSocket` constructor for the SDK: `ws`'s, recording every frame the
 * client sends (parsed) in `log.sent` and counting sockets opened; `onSend`
 * runs after a frame was handed to the socket (a test can cut the network
 * right there).
 */
export function spyWebSocket() {
  const log = { sent: [], opened: 0, sockets: [], onSend: null };
  class SpyWebSocket extends WS {
    constructor(...args) {
      super(...args);
      log.opened += 1;
      log.sockets.push(this);
    }

    send(data, ...rest) {
      let frame;
      try {
        frame = JSON.parse(typeof data === 'string' ? data : Buffer.from(data).toString('utf8'));
      } catch {
        frame = { raw: String(data) };
      }
      log.sent.push(frame);
      super.send(data, ...rest);
      if (log.onSend) log.onSend(frame, this);
    }
  }
  return { WebSocket: SpyWebSocket, log };
}

/** Opens a plain `ws` socket; resolves once open, rejects with the handshake's error. */
export function openRawSocket(url) {
  return new Promise((resolve, reject) => {
    const s = new WS(url);
    s.once('open', () => resolve(s));
    s.once('error', reject);
    s.once('unexpected-response', (_req, res) => {
      reject(new Error(`Unexpected server response: ${res.statusCode}`));
      res.resume();
      s.terminate();
    });
  });
}

export { WS as WebSocket };

// ---------------------------------------------------------------------------
// node:test glue

/**
 * One cluster for a test file: started in `before`, stopped in `after`.
 * `h.test(name, fn)` runs `fn(scope, t)`; what the test registers with
 * `scope.track(client)` / `scope.defer(fn)` is closed when it ends, pass or
 * fail; a failure prints the nodes' stderr tail.
 */
export function useCluster(options = {}) {
  const h = {
    /** @type {Cluster} */
    cluster: null,
    test(name, opts, fn) {
      if (typeof opts === 'function') {
        fn = opts;
        opts = {};
      }
      test(name, { timeout: 60000, ...opts }, async (t) => {
        const scope = new Scope();
        const started = Date.now();
        try {
          await fn(scope, t);
        } catch (e) {
          console.error(`\n### ${name} failed after ${Date.now() - started} ms: ${e?.stack ?? e}`);
          if (h.cluster) console.error(h.cluster.logs());
          throw e;
        } finally {
          await scope.close();
        }
      });
    },
  };
  before(async () => {
    h.cluster = await startCluster(options);
  });
  after(async () => {
    if (h.cluster) await h.cluster.stop();
    h.cluster = null;
    watchForLeaks();
  });
  return h;
}

/** What one test made: closed when it ends, pass or fail, last made first. */
export class Scope {
  constructor() {
    this.cleanups = [];
  }

  /** Closes `closable` (anything with close()) when the test ends; returns it. */
  track(closable) {
    this.cleanups.push(() => closable.close());
    return closable;
  }

  /** Runs `fn` when the test ends. */
  defer(fn) {
    this.cleanups.push(fn);
  }

  async close() {
    const fns = this.cleanups.splice(0).reverse();
    for (const fn of fns) {
      try {
        await fn();
      } catch (e) {
        console.error('cleanup failed:', e);
      }
    }
  }
}

/**
 * After the last test of a file everything is closed, so the process should
 * exit by itself. If something still keeps it alive (a timer or socket the
 * SDK did not release on close()), say what after 5 s and exit with 1
 * rather than hang the run. The timer is unref'd: it only fires if the
 * process would otherwise not exit.
 */
function watchForLeaks() {
  const t = setTimeout(() => {
    const left = process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap');
    console.error(`the test process did not exit 5 s after its last test; still active: ${left.join(', ')}`);
    process.exit(1);
  }, 5000);
  t.unref();
}

/**
 * A test-only file-backed `OutboxStore`: one JSON file holding each user's
 * pending messages, oldest first. It shows the seam a React Native or
 * Electron app would fill with its own storage.
 */
export class FileOutbox {
  constructor(file) {
    this.file = file;
    this.chain = Promise.resolve();
  }

  /** Serializes operations on the file. */
  run(op) {
    const next = this.chain.then(op, op);
    this.chain = next.catch(() => {});
    return next;
  }

  async read() {
    try {
      return JSON.parse(await fsp.readFile(this.file, 'utf8'));
    } catch (e) {
      if (e.code === 'ENOENT') return {};
      throw e;
    }
  }

  async write(all) {
    const tmp = `${this.file}.tmp`;
    await fsp.writeFile(tmp, JSON.stringify(all, null, 2));
    await fsp.rename(tmp, this.file);
  }

  load(userId) {
    return this.run(async () => (await this.read())[userId] ?? []);
  }

  put(userId, m) {
    return this.run(async () => {
      const all = await this.read();
      const list = (all[userId] ??= []);
      const i = list.findIndex((x) => x.client_msg_id === m.client_msg_id);
      if (i >= 0) list[i] = m;
      else list.push(m);
      await this.write(all);
    });
  }

  remove(userId, clientMsgId) {
    return this.run(async () => {
      const all = await this.read();
      all[userId] = (all[userId] ?? []).filter((x) => x.client_msg_id !== clientMsgId);
      await this.write(all);
    });
  }

  /** What the file holds for `userId`, read directly. */
  peek(userId) {
    try {
      return JSON.parse(fs.readFileSync(this.file, 'utf8'))[userId] ?? [];
    } catch {
      return [];
    }
  }
}
