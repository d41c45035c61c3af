// The peer confab-bench compares confab with: one Socket.IO 4 node, set up
// as its users set it up. One Node process per node, rooms, the Redis
// adapter (node-redis clients, as the adapter's README shows) so that a
// room spans the nodes, JWT auth in an `io.use` middleware, WebSocket
// transport only.
//
// Environment:
//   PORT        port to listen on, 127.0.0.1 only (0 or unset: the system picks one)
//   REDIS_URL   the Redis the nodes share (default redis://127.0.0.1:6379)
//   PORT_FILE   where to write `127.0.0.1:PORT` once listening (written to a
//               temporary file, then renamed, so a reader never sees half of it)
//   JWT_SECRET  HS256 secret (default: confab's embedded development secret,
//               so the bench's tokens work on both)
//
// Events, each answered through a Socket.IO ack when the client asks for one:
//   join {room}           -> socket.join(room); ack {ok: true}
//   send {room, content}  -> emits `message` to the room, on every node, with a
//                            message shaped like confab's `message_received`;
//                            ack {id, seq}
"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const http = require("node:http");
const path = require("node:path");

const { createAdapter } = require("@socket.io/redis-adapter");
const jwt = require("jsonwebtoken");
const { createClient } = require("redis");
const { Server } = require("socket.io");

const DEV_SECRET = "confab-dev-secret-do-not-use-in-production";
const secret = process.env.JWT_SECRET || DEV_SECRET;
const port = Number(process.env.PORT || 0);
const redisUrl = process.env.REDIS_URL || "redis://127.0.0.1:6379";
const portFile = process.env.PORT_FILE;

// Seq per room, counted by this process (a real app would take it from its
// store; the bench sends each room's messages through one node).
const seqs = new Map();

function nextSeq(room) {
  const seq = (seqs.get(room) || 0) + 1;
  seqs.set(room, seq);
  return seq;
}

function writePortFile(file, address) {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  fs.writeFileSync(tmp, address);
  fs.renameSync(tmp, file);
}

async function main() {
  const pubClient = createClient({ url: redisUrl });
  const subClient = pubClient.duplicate();
  for (const client of [pubClient, subClient]) {
    client.on("error", (err) => console.error("redis:", err.message));
  }
  await Promise.all([pubClient.connect(), subClient.connect()]);

  const httpServer = http.createServer();
  const io = new Server(httpServer, {
    transports: ["websocket"],
    serveClient: false,
    adapter: createAdapter(pubClient, subClient),
  });

  io.use((socket, next) => {
    const token = socket.handshake.auth && socket.handshake.auth.token;
    if (typeof token !== "string") {
      return next(new Error("AUTH_REQUIRED"));
    }
    try {
      const claims = jwt.verify(token, secret, { algorithms: ["HS256"] });
      if (typeof claims.sub !== "string" || claims.sub === "") {
        return next(new Error("AUTH_FAILED"));
      }
      socket.data.user = claims.sub;
      return next();
    } catch (err) {
      return next(new Error(err.name === "TokenExpiredError" ? "TOKEN_EXPIRED" : "AUTH_FAILED"));
    }
  });

  io.on("connection", (socket) => {
    socket.on("join", (data, ack) => {
      const room = data && data.room;
      if (typeof room !== "string" || room === "") {
        if (typeof ack === "function") ack({ ok: false, error: "room required" });
        return;
      }
      socket.join(room);
      if (typeof ack === "function") ack({ ok: true });
    });

    socket.on("send", (data, ack) => {
      const room = data && data.room;
      if (typeof room !== "string" || room === "" || typeof data.content !== "string") {
        if (typeof ack === "function") ack({ ok: false, error: "room and content required" });
        return;
      }
      const message = {
        id: crypto.randomUUID(),
        conversation_id: room,
        seq: nextSeq(room),
        user_id: socket.data.user,
        content: data.content,
        role: "user",
        message_type: "user",
        created_at: new Date().toISOString(),
      };
      io.to(room).emit("message", message);
      if (typeof ack === "function") ack({ id: message.id, seq: message.seq });
    });
  });

  httpServer.listen(port, "127.0.0.1", () => {
    const address = `127.0.0.1:${httpServer.address().port}`;
    if (portFile) writePortFile(portFile, address);
    console.log(`listening on ${address}`);
  });

  const stop = () => {
    io.close();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
