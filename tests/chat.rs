//! One node over real connections: tabs and users in a shared chat see the
//! same conversation; bad input gets errors and changes nothing. Most
//! tests run on both transports (`name::websocket`, `name::http`); those
//! about WebSocket framing run on sockets only.

mod common;

use common::{messages, start_node};
use serde_json::json;

on_every_transport! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_tabs_and_a_friend_see_messages_typing_and_receipts() {
        let node = start_node(|_| {}).await;
        let mut a1 = node.connect("alice").await;
        let mut a2 = node.connect("alice").await;
        let mut b1 = node.connect("bob").await;
        let conv = node.create_chat("alice", &["bob"]).await;

        for c in [&mut a1, &mut a2, &mut b1] {
            let upd = c.next_of("conversation_updated").await;
            assert_eq!(upd["data"]["reason"], "created");
            assert_eq!(upd["data"]["conversation"]["id"], conv.as_str());
            let joined = c.join(&conv, None).await;
            assert_eq!(joined["data"]["last_seq"], 0);
            assert_eq!(joined["data"]["participants"], json!(["alice", "bob"]));
        }

        // A message reaches everyone once, the sender's own tabs included.
        let (ack, before) = a1
            .request(
                "send_message",
                json!({"conversation_id": conv, "content": "hello"}),
            )
            .await;
        assert_eq!(ack["data"]["seq"], 1);
        assert_eq!(ack["data"]["duplicate"], false);
        let own = match before.iter().find(|f| f["type"] == "message_received") {
            Some(m) => m.clone(),
            None => a1.next_of("message_received").await,
        };
        assert_eq!(own["data"]["message"]["id"], ack["data"]["message_id"]);
        for c in [&mut a2, &mut b1] {
            let m = c.next_of("message_received").await;
            assert_eq!(m["data"]["message"]["content"], "hello");
            assert_eq!(m["data"]["message"]["sender_id"], "alice");
            assert_eq!(m["data"]["message"]["id"], ack["data"]["message_id"]);
            assert!(m["data"].get("ref").is_none(), "broadcasts carry no ref");
        }

        // Typing goes to every other socket, not back to its own.
        let (typing_ack, before) = a1
            .request(
                "typing",
                json!({"conversation_id": conv, "is_typing": true}),
            )
            .await;
        assert_eq!(typing_ack["type"], "ack");
        assert!(
            before.iter().all(|f| f["type"] != "typing_indicator"),
            "{before:?}"
        );
        for c in [&mut a2, &mut b1] {
            let t = c.next_of("typing_indicator").await;
            assert_eq!(t["data"]["user_id"], "alice");
            assert_eq!(t["data"]["is_typing"], true);
        }
        let seen_by_sender = a1.sync().await;
        assert!(seen_by_sender
            .iter()
            .all(|f| f["type"] != "typing_indicator"));

        // Sending ends the typing.
        a1.say(&conv, "done typing").await;
        let t = b1.next_of("typing_indicator").await;
        assert_eq!(t["data"]["is_typing"], false);

        // Bob reads: everyone, alice's tabs included, sees the receipt.
        let (ack, before) = b1
            .request("mark_read", json!({"conversation_id": conv, "seq": 2}))
            .await;
        assert_eq!(ack["type"], "ack");
        let own: Vec<_> = before
            .iter()
            .filter(|f| f["type"] == "read_receipt")
            .collect();
        assert_eq!(own.len(), 1, "{before:?}");
        for c in [&mut a1, &mut a2] {
            let r = c.next_of("read_receipt").await;
            assert_eq!(r["data"]["user_id"], "bob");
            assert_eq!(r["data"]["seq"], 2);
        }
    }
}

on_every_transport! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_receipts_clear_badges_in_tabs_not_joined() {
        let node = start_node(|_| {}).await;
        let conv = node.create_chat("alice", &["bob"]).await;
        let mut bob = node.connect("bob").await;
        bob.join(&conv, None).await;
        bob.say(&conv, "one").await;
        let mut sidebar = node.connect("alice").await; // not joined
        let mut reader = node.connect("alice").await;
        reader.join(&conv, None).await;
        let (_, mut frames) = reader
            .request("mark_read", json!({"conversation_id": conv, "seq": 1}))
            .await;
        let r = sidebar.next_of("read_receipt").await;
        assert_eq!(r["data"]["seq"], 1);
        // Exactly once on the joined tab.
        frames.extend(reader.sync().await);
        assert_eq!(
            frames
                .iter()
                .filter(|f| f["type"] == "read_receipt")
                .count(),
            1,
            "{frames:?}"
        );
        // The stored mark shows in the listing.
        let (_, list) = node.rest("alice", "GET", "/api/v1/chat/chats", None).await;
        assert_eq!(list[0]["last_read_seq"], 1);
    }
}

on_every_transport! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn non_participants_are_forbidden_and_unknown_chats_not_found() {
        let node = start_node(|_| {}).await;
        let conv = node.create_chat("alice", &["bob"]).await;
        let mut carol = node.connect("carol").await;
        for (kind, data) in [
            ("join_conversation", json!({"conversation_id": conv})),
            (
                "send_message",
                json!({"conversation_id": conv, "content": "let me in"}),
            ),
            ("load_messages", json!({"conversation_id": conv})),
            (
                "typing",
                json!({"conversation_id": conv, "is_typing": true}),
            ),
            ("mark_read", json!({"conversation_id": conv, "seq": 1})),
        ] {
            let (reply, _) = carol.request(kind, data).await;
            assert_eq!(reply["type"], "error", "{kind}");
            assert_eq!(reply["data"]["code"], "FORBIDDEN", "{kind}: {reply}");
        }
        let missing = uuid::Uuid::now_v7().to_string();
        let (reply, _) = carol
            .request("join_conversation", json!({"conversation_id": missing}))
            .await;
        assert_eq!(reply["data"]["code"], "NOT_FOUND");
        let (status, body) = node
            .rest("carol", "GET", &format!("/api/v1/chat/chats/{conv}"), None)
            .await;
        assert_eq!((status, body["code"].as_str()), (403, Some("FORBIDDEN")));
        let (status, _) = node
            .rest(
                "carol",
                "POST",
                &format!("/api/v1/chat/chats/{conv}/messages"),
                Some(json!({"content": "x"})),
            )
            .await;
        assert_eq!(status, 403);
        // Nothing was stored.
        let (_, page) = node
            .rest("alice", "GET", &format!("/api/v1/chat/chats/{conv}"), None)
            .await;
        assert_eq!(page["messages"], json!([]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_frames_get_errors_and_the_socket_keeps_working() {
    let node = start_node(|_| {}).await;
    let conv = node.create_chat("alice", &[]).await;
    let mut c = node.connect("alice").await;
    c.join(&conv, None).await;
    // Her own arrival is announced to the conversation, her tab included.
    let here = c.next_of("presence_changed").await;
    assert_eq!(here["data"]["user_id"], "alice");

    c.send_text("this is not json".into()).await;
    assert_eq!(c.next().await["data"]["code"], "INVALID_FRAME");
    c.send(json!({"type": "send_message", "id": "m1", "data": {"content": "no conversation"}}))
        .await;
    let e = c.next().await;
    assert_eq!(
        (e["data"]["code"].as_str(), e["data"]["ref"].as_str()),
        (Some("INVALID_FRAME"), Some("m1"))
    );
    c.send(
        json!({"type": "send_message", "id": "m2", "data": {"conversation_id": 5, "content": "x"}}),
    )
    .await;
    assert_eq!(c.next().await["data"]["code"], "INVALID_FRAME");
    c.send(json!({"type": "teleport", "id": "u1", "data": {}}))
        .await;
    let e = c.next().await;
    assert_eq!(
        (e["data"]["code"].as_str(), e["data"]["ref"].as_str()),
        (Some("UNKNOWN_TYPE"), Some("u1"))
    );
    c.send(json!({"type": "stream_response", "id": "s1", "data": {"assistant_id": "default"}}))
        .await;
    assert_eq!(c.next().await["data"]["code"], "INVALID_FRAME");
    let too_long = "x".repeat(node.node.settings.limits.max_message_chars + 1);
    let (e, _) = c
        .request(
            "send_message",
            json!({"conversation_id": conv, "content": too_long}),
        )
        .await;
    assert_eq!(e["data"]["code"], "MESSAGE_TOO_LONG");
    let (e, _) = c
        .request(
            "send_message",
            json!({"conversation_id": conv, "content": "  "}),
        )
        .await;
    assert_eq!(e["data"]["code"], "INVALID_FRAME");
    let (e, _) = c
        .request(
            "send_message",
            json!({"conversation_id": conv, "content": "hi", "message_type": "assistant"}),
        )
        .await;
    assert_eq!(e["data"]["code"], "INVALID_FRAME");

    // None of that stored anything; the socket still works.
    let ack = c.say(&conv, "still here").await;
    assert_eq!(ack["data"]["seq"], 1);
    let (pong, _) = c.request("ping", json!({"t": 42})).await;
    assert_eq!(pong["type"], "pong");
    assert_eq!(pong["data"]["t"], 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_closes_with_1009_and_touches_no_one_else() {
    let node = start_node(|s| s.limits.max_frame_bytes = 2048).await;
    let conv = node.create_chat("alice", &["bob"]).await;
    let mut bob = node.connect("bob").await;
    bob.join(&conv, None).await;
    let mut c = node.connect("alice").await;
    let huge = json!({"type": "send_message", "data": {"conversation_id": conv, "content": "y".repeat(4096)}});
    c.send(huge).await;
    let closed = c.closed().await;
    assert_eq!(closed.code, Some(1009));
    // Bob's socket is fine and nothing was stored.
    let (pong, before) = bob.request("ping", json!({})).await;
    assert_eq!(pong["type"], "pong");
    assert!(messages(&before).is_empty());
    let (_, page) = node
        .rest("bob", "GET", &format!("/api/v1/chat/chats/{conv}"), None)
        .await;
    assert_eq!(page["conversation"]["last_seq"], 0);
}

on_every_transport! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_is_rate_limited() {
        let node = start_node(|s| {
            s.limits.send_burst = 5;
            s.limits.send_rate_per_sec = 1.0;
        })
        .await;
        let conv = node.create_chat("alice", &[]).await;
        let mut c = node.connect("alice").await;
        let mut limited = None;
        let mut stored = 0;
        for i in 0..20 {
            let (reply, _) = c
                .request(
                    "send_message",
                    json!({"conversation_id": conv, "content": format!("m{i}")}),
                )
                .await;
            match reply["type"].as_str() {
                Some("ack") => stored += 1,
                _ => {
                    limited = Some(reply);
                    break;
                }
            }
        }
        let limited = limited.expect("the flood was limited");
        assert_eq!(limited["data"]["code"], "RATE_LIMITED");
        assert!(limited["data"]["retry_after_ms"].as_u64().unwrap() > 0);
        assert!(
            (5..=6).contains(&stored),
            "burst of 5 allowed, got {stored}"
        );
        // REST shares the same bucket and says when to retry.
        let (status, body) = node
            .rest(
                "alice",
                "POST",
                &format!("/api/v1/chat/chats/{conv}/messages"),
                Some(json!({"content": "x"})),
            )
            .await;
        assert_eq!((status, body["code"].as_str()), (429, Some("RATE_LIMITED")));
    }
}

on_every_transport! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resend_with_the_same_client_msg_id_stores_one_message() {
        let node = start_node(|_| {}).await;
        let conv = node.create_chat("alice", &["bob"]).await;
        let mut bob = node.connect("bob").await;
        bob.join(&conv, None).await;
        let mut a = node.connect("alice").await;
        let send = json!({"conversation_id": conv, "content": "once", "client_msg_id": "c-1"});
        let (first, _) = a.request("send_message", send.clone()).await;
        let (again, _) = a.request("send_message", send.clone()).await;
        assert_eq!(first["data"]["duplicate"], false);
        assert_eq!(again["data"]["duplicate"], true);
        assert_eq!(first["data"]["message_id"], again["data"]["message_id"]);
        assert_eq!(first["data"]["seq"], again["data"]["seq"]);
        // After a reconnect, over REST this time: still the original.
        let (status, body) = node
            .rest(
                "alice",
                "POST",
                &format!("/api/v1/chat/chats/{conv}/messages"),
                Some(json!({"content": "once", "client_msg_id": "c-1"})),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(body["id"], first["data"]["message_id"]);
        a.say(&conv, "next").await;
        let (_, before) = bob
            .until(|f| f["data"]["message"]["content"] == "next")
            .await;
        assert_eq!(messages(&before), vec![(1, "once".to_string())]);
    }
}

on_every_transport! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn since_seq_replay_is_exact_while_new_messages_arrive() {
        let node = start_node(|s| s.limits.send_burst = 1000).await;
        let conv = node.create_chat("alice", &["bob"]).await;
        let mut a = node.connect("alice").await;
        for i in 1..=300 {
            a.say(&conv, &format!("m{i}")).await;
        }
        // Alice keeps sending while bob rejoins from seq 5.
        let conv2 = conv.clone();
        let writer = tokio::spawn(async move {
            for i in 301..=400 {
                a.say(&conv2, &format!("m{i}")).await;
            }
            a
        });
        let mut bob = node.connect("bob").await;
        let joined = bob.join(&conv, Some(5)).await;
        assert!(joined["data"]["last_seq"].as_i64().unwrap() >= 300);
        let mut a = writer.await.unwrap();
        a.say(&conv, "last").await;
        let (_, frames) = bob
            .until(|f| f["data"]["message"]["content"] == "last")
            .await;
        let seqs: Vec<i64> = messages(&frames).iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            (6..=400).collect::<Vec<_>>(),
            "replay then live: in order, none missing, none twice"
        );
    }
}

on_every_transport! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rest_and_websocket_sends_interleave_in_one_seq_order() {
        let node = start_node(|s| s.limits.send_burst = 1000).await;
        let conv = node.create_chat("alice", &["bob"]).await;
        let mut bob = node.connect("bob").await;
        bob.join(&conv, None).await;
        let mut a = node.connect("alice").await;
        for i in 0..20 {
            if i % 2 == 0 {
                a.say(&conv, &format!("ws{i}")).await;
            } else {
                let (status, body) = node
                    .rest(
                        "alice",
                        "POST",
                        &format!("/api/v1/chat/chats/{conv}/messages"),
                        Some(json!({"content": format!("rest{i}")})),
                    )
                    .await;
                assert_eq!(status, 201, "{body}");
                assert_eq!(body["seq"], i + 1);
            }
        }
        let (_, frames) = bob.until(|f| f["data"]["message"]["seq"] == 20).await;
        let mut got = messages(&frames);
        got.push((20, "rest19".into()));
        let want: Vec<(i64, String)> = (0..20)
            .map(|i| {
                (
                    i + 1,
                    if i % 2 == 0 {
                        format!("ws{i}")
                    } else {
                        format!("rest{i}")
                    },
                )
            })
            .collect();
        assert_eq!(got, want);
        // History agrees.
        let (_, page) = node
            .rest(
                "bob",
                "GET",
                &format!("/api/v1/chat/chats/{conv}?after_seq=0&limit=200"),
                None,
            )
            .await;
        assert_eq!(page["messages"].as_array().unwrap().len(), 20);
        let (reply, _) = bob
            .request(
                "load_messages",
                json!({"conversation_id": conv, "before_seq": 11, "limit": 5}),
            )
            .await;
        let seqs: Vec<i64> = reply["data"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs, vec![6, 7, 8, 9, 10]);
        assert_eq!(reply["data"]["has_more"], true);
    }
}

on_every_transport! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conversation_updates_reach_every_tab_of_every_participant() {
        let node = start_node(|_| {}).await;
        let conv = node.create_chat("alice", &["bob"]).await;
        let mut a1 = node.connect("alice").await;
        let mut a2 = node.connect("alice").await;
        let mut carol = node.connect("carol").await;

        let (status, _) = node
            .rest(
                "bob",
                "POST",
                &format!("/api/v1/chat/chats/{conv}/participants"),
                Some(json!({"user_id": "carol"})),
            )
            .await;
        assert_eq!(status, 200);
        for c in [&mut a1, &mut a2, &mut carol] {
            let u = c.next_of("conversation_updated").await;
            assert_eq!(u["data"]["reason"], "participant_added");
            assert_eq!(
                u["data"]["conversation"]["participants"],
                json!(["alice", "bob", "carol"])
            );
        }

        // Carol joins, then is removed: she is told and hears nothing more.
        carol.join(&conv, None).await;
        let (status, _) = node
            .rest(
                "alice",
                "DELETE",
                &format!("/api/v1/chat/chats/{conv}/participants/carol"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        let (u, mut frames) = carol.until(|f| f["type"] == "conversation_updated").await;
        assert_eq!(u["data"]["reason"], "participant_removed");
        a1.join(&conv, None).await;
        a1.say(&conv, "carol is gone").await;
        frames.extend(carol.sync().await);
        assert!(frames.iter().any(|f| f["type"] == "left"), "{frames:?}");
        assert!(messages(&frames).is_empty(), "{frames:?}");
        let (e, _) = carol
            .request(
                "send_message",
                json!({"conversation_id": conv, "content": "hey"}),
            )
            .await;
        assert_eq!(e["data"]["code"], "FORBIDDEN");

        // Only the owner archives.
        let (status, _) = node
            .rest("bob", "DELETE", &format!("/api/v1/chat/chats/{conv}"), None)
            .await;
        assert_eq!(status, 403);
        let (status, _) = node
            .rest(
                "alice",
                "DELETE",
                &format!("/api/v1/chat/chats/{conv}"),
                None,
            )
            .await;
        assert_eq!(status, 204);
        for c in [&mut a1, &mut a2] {
            let u = c
                .until(|f| f["type"] == "conversation_updated" && f["data"]["reason"] == "archived")
                .await
                .0;
            assert_eq!(u["data"]["conversation"]["archived"], true);
        }
        let (e, _) = a1
            .request(
                "send_message",
                json!({"conversation_id": conv, "content": "too late"}),
            )
            .await;
        assert_eq!(e["data"]["code"], "FORBIDDEN");
        let (_, list) = node.rest("alice", "GET", "/api/v1/chat/chats", None).await;
        assert_eq!(list, json!([]));
    }
}

on_every_transport! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_quiet_or_vanished_typer_is_reported_stopped() {
        let node = start_node(|s| s.limits.typing_ttl_secs = 0.3).await;
        let conv = node.create_chat("alice", &["bob"]).await;
        let mut bob = node.connect("bob").await;
        bob.join(&conv, None).await;
        let mut alice = node.connect("alice").await;
        alice
            .send(json!({"type": "typing_start", "data": {"conversation_id": conv}}))
            .await;
        assert_eq!(
            bob.next_of("typing_indicator").await["data"]["is_typing"],
            true
        );
        // Quiet past typing_ttl: the server says false by itself.
        assert_eq!(
            bob.next_of("typing_indicator").await["data"]["is_typing"],
            false
        );

        alice
            .send(json!({"type": "typing", "data": {"conversation_id": conv, "is_typing": true}}))
            .await;
        assert_eq!(
            bob.next_of("typing_indicator").await["data"]["is_typing"],
            true
        );
        drop(alice);
        let stop = bob.next_of("typing_indicator").await;
        assert_eq!(stop["data"]["is_typing"], false);
        assert_eq!(stop["data"]["user_id"], "alice");
    }
}

on_every_transport! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leaving_stops_the_conversation_events() {
        let node = start_node(|_| {}).await;
        let conv = node.create_chat("alice", &["bob"]).await;
        let mut bob = node.connect("bob").await;
        bob.join(&conv, None).await;
        let (left, _) = bob
            .request("leave_conversation", json!({"conversation_id": conv}))
            .await;
        assert_eq!(left["type"], "left");
        let mut alice = node.connect("alice").await;
        alice.join(&conv, None).await;
        alice.say(&conv, "anyone?").await;
        let frames = bob.sync().await;
        assert!(messages(&frames).is_empty(), "{frames:?}");
    }
}

on_every_transport! {
    /// A socket may send without waiting for acks: its sends are stored in the
    /// order it sent them, each is acknowledged once and in that order, a twin
    /// copy in the burst is a duplicate, and a bad send in the middle fails
    /// alone. A frame of another kind waits for them. A second tab sees every
    /// message once, in seq order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipelined_sends_keep_their_order_and_each_get_one_answer() {
        let node = start_node(|s| {
            s.limits.send_burst = 1000;
            s.limits.send_rate_per_sec = 1000.0;
        })
        .await;
        let conv = node.create_chat("alice", &[]).await;
        let mut tab = node.connect("alice").await;
        tab.join(&conv, None).await;
        let mut a = node.connect("alice").await;
        const N: usize = 100;
        for i in 0..N {
            let data = match i {
                // Empty content is refused on its own.
                40 => json!({"conversation_id": conv, "content": " "}),
                // A second copy of send 10, while the first may be in flight.
                50 => json!({"conversation_id": conv, "content": "m10", "client_msg_id": "c10"}),
                _ => {
                    json!({"conversation_id": conv, "content": format!("m{i}"), "client_msg_id": format!("c{i}")})
                }
            };
            a.send(json!({"type": "send_message", "id": format!("s{i}"), "data": data}))
                .await;
        }
        // Any other frame waits for the sends before it: history has them all.
        a.send(json!({"type": "load_messages", "id": "h", "data": {"conversation_id": conv, "limit": 200}}))
            .await;
        let mut answers = Vec::new();
        while answers.len() < N + 1 {
            let f = a.next().await;
            if f["data"]["ref"].is_string() {
                answers.push(f);
            }
        }
        let history = answers.pop().unwrap();
        assert_eq!(history["data"]["ref"], "h", "history answered last");
        assert_eq!(history["type"], "messages", "{history}");
        assert_eq!(history["data"]["messages"].as_array().unwrap().len(), N - 2);
        let refs: Vec<&str> = answers
            .iter()
            .map(|f| f["data"]["ref"].as_str().unwrap())
            .collect();
        let mut in_order: Vec<String> = (0..N).map(|i| format!("s{i}")).collect();
        // The refused send is answered at once, ahead of the sends still storing.
        let refused = answers.iter().find(|f| f["data"]["ref"] == "s40").unwrap();
        assert_eq!(refused["type"], "error", "{refused}");
        in_order.retain(|r| r != "s40");
        let acked: Vec<&str> = refs.iter().copied().filter(|r| *r != "s40").collect();
        assert_eq!(acked, in_order, "acks in the order of the sends");
        let seqs: Vec<i64> = answers
            .iter()
            .filter(|f| f["type"] == "ack" && f["data"]["duplicate"] == false)
            .map(|f| f["data"]["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=(N as i64 - 2)).collect::<Vec<_>>());
        let twin = answers.iter().find(|f| f["data"]["ref"] == "s50").unwrap();
        let first = answers.iter().find(|f| f["data"]["ref"] == "s10").unwrap();
        assert_eq!(twin["data"]["duplicate"], true, "{twin}");
        assert_eq!(twin["data"]["seq"], first["data"]["seq"]);

        let mut seen = Vec::new();
        while seen.len() < N - 2 {
            let f = tab.next_of("message_received").await;
            seen.push(f);
        }
        let got = messages(&seen);
        let expected: Vec<(i64, String)> = (0..N)
            .filter(|i| *i != 40 && *i != 50)
            .enumerate()
            .map(|(k, i)| (k as i64 + 1, format!("m{i}")))
            .collect();
        assert_eq!(got, expected);
    }
}

on_every_transport! {
    /// A client resuming at the conversation's latest seq gets no replay, and
    /// the next live message exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resuming_at_the_latest_seq_replays_nothing_and_misses_nothing() {
        let node = start_node(|_| {}).await;
        let conv = node.create_chat("alice", &["bob"]).await;
        let mut a = node.connect("alice").await;
        a.join(&conv, None).await;
        for i in 1..=3 {
            a.say(&conv, &format!("m{i}")).await;
        }
        let mut bob = node.connect("bob").await;
        let joined = bob.join(&conv, Some(3)).await;
        assert_eq!(joined["data"]["last_seq"], 3, "{joined}");
        a.say(&conv, "m4").await;
        let (first, before) = bob.until(|f| f["type"] == "message_received").await;
        assert!(messages(&before).is_empty(), "{before:?}");
        assert_eq!(messages(&[first]), vec![(4, "m4".to_string())]);
        bob.send(json!({"type": "ping", "id": "p"})).await;
        let (_, rest) = bob.until(|f| f["data"]["ref"] == "p").await;
        assert!(messages(&rest).is_empty(), "nothing twice: {rest:?}");
    }
}

on_every_transport! {
    /// Resumes are answered from the room's recent messages when they cover the
    /// gap, and from the store when they do not; both give every missed message
    /// once, in order, before the next live one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resumes_within_and_beyond_the_recent_messages_miss_nothing() {
        let node = start_node(|s| s.limits.recent_messages_per_room = 4).await;
        let conv = node.create_chat("alice", &["bob"]).await;
        let mut a = node.connect("alice").await;
        a.join(&conv, None).await;
        for i in 1..=10 {
            a.say(&conv, &format!("m{i}")).await;
        }
        let mut near = node.connect("bob").await;
        let mut far = node.connect("bob").await;
        near.join(&conv, Some(7)).await;
        far.join(&conv, Some(2)).await;
        a.say(&conv, "m11").await;
        let expect =
            |from: i64| -> Vec<(i64, String)> { (from..=11).map(|i| (i, format!("m{i}"))).collect() };
        for (tab, from) in [(&mut near, 8), (&mut far, 3)] {
            let (last, before) = tab.until(|f| f["data"]["message"]["seq"] == 11).await;
            let mut got = messages(&before);
            got.extend(messages(&[last]));
            assert_eq!(got, expect(from));
            tab.send(json!({"type": "ping", "id": "p"})).await;
            let (_, rest) = tab.until(|f| f["data"]["ref"] == "p").await;
            assert!(messages(&rest).is_empty(), "nothing twice: {rest:?}");
        }

        // A resume that opens the room on this node (no socket joined to the
        // conversation here yet): the room starts with the last messages read
        // from the store.
        let quiet = node.create_chat("alice", &["bob"]).await;
        for i in 1..=5 {
            a.say(&quiet, &format!("q{i}")).await;
        }
        near.join(&quiet, Some(2)).await;
        a.say(&quiet, "q6").await;
        let (last, before) = near.until(|f| f["data"]["message"]["seq"] == 6).await;
        let mut got = messages(&before);
        got.extend(messages(&[last]));
        let want: Vec<(i64, String)> = (3..=6).map(|i| (i, format!("q{i}"))).collect();
        assert_eq!(got, want);
    }
}

/// A `ping` is echoed no deeper than it was sent: its data must be an
/// object, and `ref` goes inside it. (An array echoed as `{"ref", "data"}`
/// was one level deeper, past what a client at serde_json's recursion limit
/// can parse.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_ping_is_echoed_no_deeper_than_it_was_sent() {
    let node = start_node(|_| {}).await;
    let mut c = node.connect("alice").await;
    let mut data = json!({"leaf": true});
    for _ in 1..120 {
        data = json!({ "n": data });
    }
    let (pong, _) = c.request("ping", data.clone()).await;
    assert_eq!(pong["type"], "pong");
    let mut echoed = pong["data"].clone();
    let reply_to = echoed.as_object_mut().unwrap().remove("ref").unwrap();
    assert!(reply_to.as_str().is_some_and(|r| r.starts_with('r')));
    assert_eq!(echoed, data);

    // The deepest array a client can parse back, and other non-objects, are
    // refused; the socket keeps working.
    let mut deep = json!([]);
    for _ in 1..126 {
        deep = json!([deep]);
    }
    for data in [deep, json!([1]), json!(5), json!("text")] {
        let (reply, _) = c.request("ping", data.clone()).await;
        assert_eq!(reply["type"], "error");
        assert_eq!(reply["data"]["code"], "INVALID_FRAME");
    }
    let (pong, _) = c.request("ping", json!({})).await;
    assert_eq!(pong["type"], "pong");
}

on_every_transport! {
    /// `cancel_stream` of a stream that is not running, or that runs in a
    /// conversation the user is not in, is `NOT_FOUND`; of a running one it is
    /// acknowledged and the stream ends `cancelled`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelling_an_unknown_stream_is_not_found_and_a_running_one_is_cancelled() {
        let node = start_node(|s| {
            // The echo assistant repeats the message a word every 200 ms: the
            // stream is still running when it is cancelled.
            if let Some(echo) = s.assistants.get_mut("default") {
                echo.echo_delay_ms = 200;
            }
        })
        .await;
        let conv = node.create_chat("alice", &["bob"]).await;
        let mut alice = node.connect("alice").await;
        let mut carol = node.connect("carol").await;
        alice.join(&conv, None).await;

        let unknown = uuid::Uuid::now_v7().to_string();
        let (reply, _) = alice
            .request("cancel_stream", json!({"stream_id": unknown}))
            .await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["data"]["code"], "NOT_FOUND");
        assert_eq!(reply["data"]["message"], "stream not found");

        let words: Vec<String> = (0..50).map(|i| format!("w{i}")).collect();
        alice.say(&conv, &words.join(" ")).await;
        let (ack, _) = alice
            .request("stream_response", json!({"conversation_id": conv}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let stream_id = ack["data"]["stream_id"].as_str().unwrap().to_owned();

        // Someone outside the conversation cannot even tell it exists.
        let (reply, _) = carol
            .request("cancel_stream", json!({"stream_id": stream_id}))
            .await;
        assert_eq!(reply["data"]["code"], "NOT_FOUND", "{reply}");

        alice
            .until(|f| f["type"] == "stream_content" && f["data"]["stream_id"] == stream_id.as_str())
            .await;
        let (ack, _) = alice
            .request("cancel_stream", json!({"stream_id": stream_id}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let (end, _) = alice
            .until(|f| f["type"] == "stream_complete" && f["data"]["stream_id"] == stream_id.as_str())
            .await;
        assert_eq!(end["data"]["finish_reason"], "cancelled", "{end}");
        let answer = end["data"]["message"]["content"].as_str().unwrap();
        assert!(answer.starts_with("w0"), "{answer}");
        assert_ne!(answer, words.join(" "), "cut short");
    }
}
