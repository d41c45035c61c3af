//! Assistants that stream, against a local fake OpenAI-compatible server:
//! tokens reach every tab on every node in index order, the answer is stored
//! in the conversation's one seq order, and every upstream failure gives its
//! documented event.

mod common;

use common::fake_llm::{FakeLlm, ANSWER};
use std::time::Duration;

use common::procs::{self, Redis};
use common::{start_node, Client, TestNode, WAIT};
use confab::config::{AssistantSettings, Settings};
use serde_json::{json, Value};

const KEY_ENV: &str = "CONFAB_TEST_LLM_KEY";
const KEY: &str = "sk-test-secret-7f3a";

/// Every fake scenario as an assistant named after it; echo without delay.
fn assistants(s: &mut Settings, llm: &FakeLlm) {
    std::env::set_var(KEY_ENV, KEY);
    for model in [
        "ok",
        "no-usage",
        "error-event",
        "rate-limited",
        "flaky",
        "bad-key",
        "cut",
        "slow",
    ] {
        s.assistants.insert(
            model.into(),
            AssistantSettings {
                provider: confab::config::ProviderKind::OpenAi,
                model: model.into(),
                base_url: llm.base_url.clone(),
                api_key_env: KEY_ENV.into(),
                system_prompt: "Be brief.".into(),
                timeout_secs: 5.0,
                ..AssistantSettings::default()
            },
        );
    }
    if let Some(echo) = s.assistants.get_mut("default") {
        echo.echo_delay_ms = 0;
    }
    s.streaming.retry_budget = 1;
    s.streaming.max_retry_wait_secs = 2.0;
    s.limits.send_burst = 1000;
}

/// `n` nodes on one Redis and one SQLite file, with the fake assistants.
async fn cluster(n: usize, llm: &FakeLlm, redis: &Redis, db: &tempfile::TempDir) -> Vec<TestNode> {
    cluster_with(n, llm, redis, db, |_, _| {}).await
}

/// As `cluster`, with more settings.
async fn cluster_with(
    n: usize,
    llm: &FakeLlm,
    redis: &Redis,
    db: &tempfile::TempDir,
    tweak: impl Fn(&mut Settings, &FakeLlm),
) -> Vec<TestNode> {
    let db_url = format!("sqlite://{}/shared.db?mode=rwc", db.path().display());
    let mut nodes = Vec::new();
    for i in 0..n {
        let (db_url, redis_url) = (db_url.clone(), redis.url());
        nodes.push(
            start_node(|s| {
                s.database.url = db_url;
                s.bus.redis_url = redis_url;
                s.server.node_id = format!("n{i}");
                assistants(s, llm);
                tweak(s, llm);
            })
            .await,
        );
    }
    nodes
}

/// Adds assistant `id` answering with the fake's `model`, one at a time
/// across the cluster, and lets a user have many requests waiting.
fn one_at_a_time(s: &mut Settings, llm: &FakeLlm, id: &str, model: &str) {
    s.assistants.insert(
        id.into(),
        AssistantSettings {
            provider: confab::config::ProviderKind::OpenAi,
            model: model.into(),
            base_url: llm.base_url.clone(),
            timeout_secs: 30.0,
            max_concurrent: 1,
            ..AssistantSettings::default()
        },
    );
    s.streaming.max_streams_per_user = 10;
}

/// What one socket saw of one stream.
#[derive(Debug)]
struct Seen {
    start: Value,
    /// A joiner's catch-up: the text up to an index.
    snapshot: Option<(u64, String)>,
    /// The live pieces, by index.
    contents: Vec<(u64, String)>,
    end: Value,
    stored: Vec<Value>,
}

impl Seen {
    /// The answer as the socket assembled it.
    fn text(&self) -> String {
        let mut text = self.snapshot.clone().map(|s| s.1).unwrap_or_default();
        text.extend(self.contents.iter().map(|(_, c)| c.as_str()));
        text
    }
}

/// Reads until the stream with `stream_id` (or the first stream seen, if
/// None) completes or fails, then until its stored answer (if any) arrived.
async fn watch(c: &mut Client, stream_id: Option<&str>) -> Seen {
    let mut id = stream_id.map(str::to_owned);
    let (mut start, mut contents, mut stored) = (Value::Null, Vec::new(), Vec::new());
    let mut snapshot = None;
    loop {
        let f = c.next().await;
        let kind = f["type"].as_str().unwrap_or("").to_owned();
        if kind == "message_received" {
            if f["data"]["message"]["message_type"] == "assistant" {
                stored.push(f["data"]["message"].clone());
            }
            continue;
        }
        if !kind.starts_with("stream_") {
            continue;
        }
        let sid = f["data"]["stream_id"].as_str().unwrap().to_owned();
        if id.get_or_insert(sid.clone()) != &sid {
            continue;
        }
        match kind.as_str() {
            "stream_queued" => {}
            "stream_snapshot" => {
                snapshot = Some((
                    f["data"]["index"].as_u64().unwrap(),
                    f["data"]["content"].as_str().unwrap().to_owned(),
                ))
            }
            "stream_start" => start = f,
            "stream_content" => contents.push((
                f["data"]["index"].as_u64().unwrap(),
                f["data"]["content"].as_str().unwrap().to_owned(),
            )),
            _ => {
                let end = f;
                let answer = end["data"]["message"]["id"].clone();
                if end["type"] == "stream_complete"
                    && !answer.is_null()
                    && stored.iter().all(|m| m["id"] != answer)
                {
                    let (m, _) = c.until(|f| f["data"]["message"]["id"] == answer).await;
                    stored.push(m["data"]["message"].clone());
                }
                return Seen {
                    start,
                    snapshot,
                    contents,
                    end,
                    stored,
                };
            }
        }
    }
}

async fn ask(c: &mut Client, conv: &str, assistant: &str) -> String {
    let (ack, _) = c
        .request(
            "stream_response",
            json!({"conversation_id": conv, "assistant_id": assistant}),
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ack["data"]["stream_id"].as_str().unwrap().to_owned()
}

fn assert_indexes_increase(seen: &Seen) {
    let idx: Vec<u64> = seen.contents.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        idx,
        (0..idx.len() as u64).collect::<Vec<_>>(),
        "index 0, 1, 2, ..."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_on_three_nodes_watch_the_same_answer_being_written() {
    let llm = FakeLlm::start().await;
    let redis = Redis::start().await;
    let db = tempfile::tempdir().unwrap();
    let nodes = cluster(3, &llm, &redis, &db).await;
    let conv = nodes[0].create_chat("alice", &["bob"]).await;
    let mut tabs = [
        nodes[0].connect("alice").await,
        nodes[1].connect("alice").await,
        nodes[2].connect("bob").await,
    ];
    for t in tabs.iter_mut() {
        t.join(&conv, None).await;
    }
    let ack = tabs[0].say(&conv, "What is the answer?").await;
    assert_eq!(ack["data"]["seq"], 1);
    let stream = ask(&mut tabs[1], &conv, "ok").await;

    let mut views = Vec::new();
    for t in tabs.iter_mut() {
        views.push(watch(t, Some(&stream)).await);
    }
    for v in &views {
        assert_eq!(v.start["data"]["assistant_id"], "ok");
        assert_eq!(v.start["data"]["reply_to"], ack["data"]["message_id"]);
        assert_indexes_increase(v);
        assert_eq!(v.text(), ANSWER);
        assert_eq!(v.end["type"], "stream_complete", "{:?}", v.end);
        assert_eq!(v.end["data"]["finish_reason"], "stop");
        assert_eq!(
            v.end["data"]["usage"],
            json!({"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16})
        );
        let answer = &v.end["data"]["message"];
        assert_eq!(answer["seq"], 2, "the answer takes the next seq");
        assert_eq!(answer["content"], ANSWER);
        assert_eq!(answer["message_type"], "assistant");
        assert_eq!(answer["id"], v.start["data"]["message_id"]);
        assert_eq!(answer["metadata"]["finish_reason"], "stop");
        assert_eq!(answer["metadata"]["model"], "ok");
        assert_eq!(answer["metadata"]["usage"]["total_tokens"], 16);
        assert_eq!(v.stored.len(), 1, "stored answer delivered once");
    }
    assert!(
        views.windows(2).all(|w| w[0].contents == w[1].contents),
        "the same frames everywhere"
    );
    // The next message comes after the answer in the one order.
    let next = tabs[2].say(&conv, "thanks").await;
    assert_eq!(next["data"]["seq"], 3);
    assert!(llm.requests() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_with_an_assistant_answers_every_user_message() {
    let llm = FakeLlm::start().await;
    let node = start_node(|s| assistants(s, &llm)).await;
    let (status, chat) = node
        .rest(
            "alice",
            "POST",
            "/api/v1/chat/chats",
            Some(json!({"title": "echo", "assistant_id": "default"})),
        )
        .await;
    assert_eq!(status, 201, "{chat}");
    let conv = chat["id"].as_str().unwrap().to_owned();
    let mut tab = node.connect("alice").await;
    tab.join(&conv, None).await;
    let ack = tab.say(&conv, "hello  echo world").await;
    let seen = watch(&mut tab, None).await;
    assert_eq!(seen.start["data"]["reply_to"], ack["data"]["message_id"]);
    assert_eq!(seen.text(), "hello  echo world");
    assert_eq!(seen.end["data"]["message"]["seq"], 2);
    assert_eq!(seen.end["data"]["message"]["sender_id"], "default");
    // Over REST too, and the history holds both.
    let (status, _) = node
        .rest(
            "alice",
            "POST",
            &format!("/api/v1/chat/chats/{conv}/messages"),
            Some(json!({"content": "again"})),
        )
        .await;
    assert_eq!(status, 201);
    let seen = watch(&mut tab, None).await;
    assert_eq!(seen.text(), "again");
    let (_, page) = node
        .rest("alice", "GET", &format!("/api/v1/chat/chats/{conv}"), None)
        .await;
    let kinds: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["user", "assistant", "user", "assistant"]);
    // An unknown assistant cannot be attached.
    let (status, _) = node
        .rest(
            "alice",
            "POST",
            "/api/v1/chat/chats",
            Some(json!({"assistant_id": "nobody"})),
        )
        .await;
    assert_eq!(status, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_give_their_documented_events() {
    let llm = FakeLlm::start().await;
    let node = start_node(|s| assistants(s, &llm)).await;
    let conv = node.create_chat("alice", &[]).await;
    let mut tab = node.connect("alice").await;
    tab.join(&conv, None).await;
    tab.say(&conv, "question").await;
    let mut frames_text = String::new();

    // 429 beyond the retry budget: RATE_LIMITED with retry_after_ms.
    let id = ask(&mut tab, &conv, "rate-limited").await;
    let seen = watch(&mut tab, Some(&id)).await;
    assert_eq!(seen.end["type"], "stream_error");
    assert_eq!(seen.end["data"]["code"], "RATE_LIMITED");
    assert_eq!(seen.end["data"]["retry_after_ms"], 1000);
    frames_text.push_str(&seen.end.to_string());

    // 429 once, within the budget: the answer completes.
    let id = ask(&mut tab, &conv, "flaky").await;
    let seen = watch(&mut tab, Some(&id)).await;
    assert_eq!(seen.end["type"], "stream_complete", "{:?}", seen.end);
    assert_eq!(seen.text(), ANSWER);

    // A wrong key: PROVIDER_ERROR that says so, and never shows the key.
    let id = ask(&mut tab, &conv, "bad-key").await;
    let seen = watch(&mut tab, Some(&id)).await;
    assert_eq!(seen.end["data"]["code"], "PROVIDER_ERROR");
    assert!(
        seen.end["data"]["message"]
            .as_str()
            .unwrap()
            .contains("key"),
        "{:?}",
        seen.end
    );
    frames_text.push_str(&seen.end.to_string());

    // An error event after a 200, and a stream cut mid-answer: the partial
    // answer is stored with finish_reason "error", then stream_error.
    for model in ["error-event", "cut"] {
        let id = ask(&mut tab, &conv, model).await;
        let seen = watch(&mut tab, Some(&id)).await;
        assert_eq!(seen.end["type"], "stream_error", "{model}");
        assert_eq!(seen.end["data"]["code"], "PROVIDER_ERROR", "{model}");
        assert_eq!(seen.text(), "The answer", "{model}");
        let partial = match seen.stored.first() {
            Some(m) => m.clone(),
            None => tab
                .until(|f| f["data"]["message"]["id"] == seen.start["data"]["message_id"])
                .await
                .0["data"]["message"]
                .clone(),
        };
        assert_eq!(partial["id"], seen.start["data"]["message_id"]);
        assert_eq!(partial["content"], "The answer");
        assert_eq!(partial["metadata"]["finish_reason"], "error");
        frames_text.push_str(&seen.end.to_string());
    }

    // A stream without usage still completes, with zero usage.
    let id = ask(&mut tab, &conv, "no-usage").await;
    let seen = watch(&mut tab, Some(&id)).await;
    assert_eq!(seen.end["type"], "stream_complete");
    assert_eq!(seen.end["data"]["usage"]["total_tokens"], 0);

    assert!(!frames_text.contains(KEY), "the key never reaches a frame");
    assert!(llm
        .auth_headers()
        .iter()
        .all(|h| h == &format!("Bearer {KEY}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_tab_on_another_node_cancels_the_stream() {
    let llm = FakeLlm::start().await;
    let redis = Redis::start().await;
    let db = tempfile::tempdir().unwrap();
    let nodes = cluster(2, &llm, &redis, &db).await;
    let conv = nodes[0].create_chat("alice", &["bob"]).await;
    let mut alice = nodes[0].connect("alice").await;
    let mut bob = nodes[1].connect("bob").await;
    alice.join(&conv, None).await;
    bob.join(&conv, None).await;
    alice.say(&conv, "tell me a long story").await;
    let id = ask(&mut alice, &conv, "slow").await;

    // One answer at a time per conversation: Bob's request waits behind it.
    let next = ask(&mut bob, &conv, "ok").await;
    let (told, _) = bob
        .until(|f| f["type"] == "stream_queued" && f["data"]["stream_id"] == next.as_str())
        .await;
    assert_eq!(told["data"]["position"], 1, "{told}");

    // Bob waits for some tokens, then cancels from his node.
    bob.until(|f| f["type"] == "stream_content" && f["data"]["index"] == 2)
        .await;
    let (ack, _) = bob.request("cancel_stream", json!({"stream_id": id})).await;
    assert_eq!(ack["type"], "ack");
    for tab in [&mut alice, &mut bob] {
        let seen = watch(tab, Some(&id)).await;
        assert_eq!(seen.end["type"], "stream_complete");
        assert_eq!(seen.end["data"]["finish_reason"], "cancelled");
        let answer = &seen.end["data"]["message"];
        assert!(
            answer["content"].as_str().unwrap().starts_with("w0 w1 w2"),
            "{answer}"
        );
        assert_eq!(answer["metadata"]["finish_reason"], "cancelled");
    }
    // Then the request that waited runs.
    let seen = watch(&mut bob, Some(&next)).await;
    assert_eq!(seen.text(), ANSWER);
}

/// The provider sees the conversation as it is now: edits, not the text
/// before them, and no deleted message at all. The answer replies to the
/// message it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_sees_edits_and_never_a_deleted_message() {
    let llm = FakeLlm::start().await;
    let node = start_node(|s| assistants(s, &llm)).await;
    let conv = node.create_chat("alice", &[]).await;
    let mut tab = node.connect("alice").await;
    tab.join(&conv, None).await;
    let id = |ack: Value| ack["data"]["message_id"].as_str().unwrap().to_owned();
    let kept = id(tab.say(&conv, "draft text").await);
    let secret = id(tab.say(&conv, "a secret").await);
    for (kind, extra) in [
        (
            "edit_message",
            json!({"message_id": kept, "content": "kept, edited"}),
        ),
        ("delete_message", json!({"message_id": secret})),
    ] {
        let mut data = extra;
        data["conversation_id"] = conv.clone().into();
        let (ack, _) = tab.request(kind, data).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let (refused, _) = tab
        .request(
            "stream_response",
            json!({"conversation_id": conv, "message_id": secret, "assistant_id": "ok"}),
        )
        .await;
    assert_eq!(
        refused["data"]["code"], "NOT_FOUND",
        "a deleted message is not answered"
    );
    let question = id(tab.say(&conv, "the question").await);
    ask(&mut tab, &conv, "ok").await;
    let seen = watch(&mut tab, None).await;
    assert_eq!(seen.end["data"]["message"]["reply_to"], question.as_str());
    let sent = llm.bodies().last().cloned().expect("one request");
    let contents: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["Be brief.", "kept, edited", "the question"]);
}

/// Two users' bursts on three nodes, one answer at a time: users take
/// turns (the one served least recently goes next), each user's requests
/// run in the order asked, every tab is told each request's place as it
/// changes, and never more than one request reaches the provider at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_bursts_take_turns_for_one_slot_across_three_nodes() {
    let llm = FakeLlm::start().await;
    let redis = Redis::start().await;
    let db = tempfile::tempdir().unwrap();
    let nodes = cluster_with(3, &llm, &redis, &db, |s, llm| {
        one_at_a_time(s, llm, "held", "held")
    })
    .await;
    // Alice's three chats and Bob's two, each shared with Olga, who watches.
    let mut chats = Vec::new();
    for owner in ["alice", "alice", "alice", "bob", "bob"] {
        chats.push((owner, nodes[0].create_chat(owner, &["olga"]).await));
    }
    let mut alice = nodes[0].connect("alice").await;
    let mut bob = nodes[1].connect("bob").await;
    let mut olga = nodes[2].connect("olga").await;
    for (owner, conv) in &chats {
        olga.join(conv, None).await;
        let tab = if *owner == "alice" {
            &mut alice
        } else {
            &mut bob
        };
        tab.join(conv, None).await;
        tab.say(conv, "a question").await;
    }
    // Alice's burst, then Bob's.
    let mut ids = Vec::new();
    for (owner, conv) in &chats {
        let tab = if *owner == "alice" {
            &mut alice
        } else {
            &mut bob
        };
        ids.push(ask(tab, conv, "held").await);
    }
    let [a1, a2, a3, b1, b2] = [0, 1, 2, 3, 4].map(|i| ids[i].clone());
    // Alice was served (a1 runs), Bob never: Bob's first goes next, then
    // the users alternate.
    let expected: std::collections::HashMap<String, u64> = [(&b1, 1), (&a2, 2), (&b2, 3), (&a3, 4)]
        .into_iter()
        .map(|(id, p)| (id.clone(), p))
        .collect();
    let mut log: Vec<(String, String)> = Vec::new();
    let mut told = std::collections::HashMap::new();
    while told != expected {
        let f = olga.next().await;
        let (kind, id) = (f["type"].as_str().unwrap_or(""), &f["data"]["stream_id"]);
        if kind == "stream_queued" {
            told.insert(
                id.as_str().unwrap().to_owned(),
                f["data"]["position"].as_u64().unwrap(),
            );
        }
        if kind.starts_with("stream_") {
            log.push((kind.to_owned(), id.as_str().unwrap().to_owned()));
        }
    }
    let order = [&a1, &b1, &a2, &b2, &a3];
    for running in order {
        assert!(
            llm.wait_open(1, WAIT).await,
            "the next request reaches the provider"
        );
        assert!(llm.release_one());
        loop {
            let f = olga.next().await;
            let (kind, id) = (
                f["type"].as_str().unwrap_or(""),
                f["data"]["stream_id"].as_str(),
            );
            if kind.starts_with("stream_") {
                log.push((kind.to_owned(), id.unwrap().to_owned()));
            }
            if kind == "stream_complete" && id == Some(running.as_str()) {
                assert_eq!(f["data"]["message"]["content"], "held  done");
                break;
            }
        }
    }
    // Each answer started after the one before ended, in the fair order.
    let runs: Vec<(String, String)> = log
        .into_iter()
        .filter(|(kind, _)| kind == "stream_start" || kind == "stream_complete")
        .collect();
    let expected_runs: Vec<(String, String)> = order
        .iter()
        .flat_map(|id| {
            [
                ("stream_start".to_owned(), (*id).clone()),
                ("stream_complete".to_owned(), (*id).clone()),
            ]
        })
        .collect();
    assert_eq!(runs, expected_runs);
    assert_eq!(
        llm.max_open(),
        1,
        "never more than one request at the provider"
    );
    assert_eq!(llm.requests(), 5);
}

/// A waiting request can be cancelled by any participant, from any node:
/// it ends `cancelled` with nothing stored and never reaches the provider,
/// and the requests behind it move up. One that waits longer than the
/// assistant's queue timeout ends with `UNAVAILABLE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_is_cancelled_or_gives_up_after_the_queue_timeout() {
    let llm = FakeLlm::start().await;
    let redis = Redis::start().await;
    let db = tempfile::tempdir().unwrap();
    let nodes = cluster_with(2, &llm, &redis, &db, |s, llm| {
        one_at_a_time(s, llm, "held", "held");
        one_at_a_time(s, llm, "brief", "held");
        s.assistants.get_mut("brief").unwrap().queue_timeout_secs = 1.0;
    })
    .await;
    let mut chats = Vec::new();
    for _ in 0..3 {
        chats.push(nodes[0].create_chat("alice", &["bob"]).await);
    }
    let mut alice = nodes[0].connect("alice").await;
    let mut bob = nodes[1].connect("bob").await;
    for conv in &chats {
        alice.join(conv, None).await;
        bob.join(conv, None).await;
        alice.say(conv, "a question").await;
    }
    let s1 = ask(&mut alice, &chats[0], "held").await;
    let s2 = ask(&mut alice, &chats[1], "held").await;
    let s3 = ask(&mut alice, &chats[2], "held").await;
    bob.until(|f| {
        f["type"] == "stream_queued"
            && f["data"]["stream_id"] == s3.as_str()
            && f["data"]["position"] == 2
    })
    .await;

    // Bob, on the other node, cancels Alice's waiting request.
    let (ack, before) = bob.request("cancel_stream", json!({"stream_id": s2})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    // The ack and the end travel separately: either may come first.
    let ended = |f: &Value| f["type"] == "stream_complete" && f["data"]["stream_id"] == s2.as_str();
    let (end, mut seen) = match before.iter().position(ended) {
        Some(at) => (before[at].clone(), before.clone()),
        None => bob.until(ended).await,
    };
    seen.extend(before);
    assert_eq!(end["data"]["finish_reason"], "cancelled");
    assert!(
        end["data"].get("message").is_none(),
        "nothing stored: {end}"
    );
    let moved_up = |f: &Value| {
        f["type"] == "stream_queued"
            && f["data"]["stream_id"] == s3.as_str()
            && f["data"]["position"] == 1
    };
    // In another conversation: it may come before the end, or after.
    if !seen.iter().any(moved_up) {
        bob.until(moved_up).await;
    }
    // Cancelled again, or never known: NOT_FOUND.
    let (again, _) = bob.request("cancel_stream", json!({"stream_id": s2})).await;
    assert_eq!(again["data"]["code"], "NOT_FOUND", "{again}");

    // The first ends; the third runs, never the second.
    assert!(llm.release_one());
    watch(&mut alice, Some(&s1)).await;
    bob.until(|f| f["type"] == "stream_start" && f["data"]["stream_id"] == s3.as_str())
        .await;
    assert!(llm.wait_open(1, WAIT).await);
    assert!(llm.release_one());
    let seen = watch(&mut alice, Some(&s3)).await;
    assert_eq!(seen.text(), "held  done");
    assert_eq!(
        llm.requests(),
        2,
        "the cancelled request never reached the provider"
    );
    let (_, page) = nodes[0]
        .rest(
            "alice",
            "GET",
            &format!("/api/v1/chat/chats/{}", chats[1]),
            None,
        )
        .await;
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "only the question: {page}");

    // With a one-second queue timeout, a request that waits gives up.
    let t1 = ask(&mut alice, &chats[0], "brief").await;
    let t2 = ask(&mut alice, &chats[1], "brief").await;
    let (gave_up, _) = bob
        .until(|f| f["type"] == "stream_error" && f["data"]["stream_id"] == t2.as_str())
        .await;
    assert_eq!(gave_up["data"]["code"], "UNAVAILABLE", "{gave_up}");
    assert!(llm.wait_open(1, WAIT).await);
    assert!(llm.release_one());
    let seen = watch(&mut alice, Some(&t1)).await;
    assert_eq!(seen.end["type"], "stream_complete");
}

/// A provider's 429 with `Retry-After` pauses the assistant for every node:
/// no request of it reaches the provider before the pause ends, whichever
/// node asks, and both answers then complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_429_pauses_the_assistant_on_every_node() {
    let llm = FakeLlm::start().await;
    let redis = Redis::start().await;
    let db = tempfile::tempdir().unwrap();
    let nodes = cluster_with(2, &llm, &redis, &db, |s, llm| {
        one_at_a_time(s, llm, "limited", "limited-once");
        let a = s.assistants.get_mut("limited").unwrap();
        a.max_concurrent = 0;
        s.streaming.max_retry_wait_secs = 5.0;
    })
    .await;
    let c1 = nodes[0].create_chat("alice", &[]).await;
    let c2 = nodes[0].create_chat("bob", &[]).await;
    let mut alice = nodes[0].connect("alice").await;
    let mut bob = nodes[1].connect("bob").await;
    alice.join(&c1, None).await;
    bob.join(&c2, None).await;
    alice.say(&c1, "a question").await;
    bob.say(&c2, "another question").await;

    let s1 = ask(&mut alice, &c1, "limited").await;
    // Once the first node has heard the 429 (and paused the assistant)...
    procs::wait_until("the 429 to be counted", WAIT, || async {
        let metrics = reqwest::get(nodes[0].url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics.lines().any(|l| {
            l.starts_with("confab_assistant_errors_total{kind=\"rate_limited\"")
                && l.ends_with(" 1")
        })
    })
    .await;
    // ...the other node's request waits for the pause too.
    let s2 = ask(&mut bob, &c2, "limited").await;
    let first = watch(&mut alice, Some(&s1)).await;
    let second = watch(&mut bob, Some(&s2)).await;
    assert_eq!(first.text(), ANSWER);
    assert_eq!(second.text(), ANSWER);
    let arrivals = llm.arrivals();
    assert_eq!(
        arrivals.len(),
        3,
        "the refused request, its retry, the other"
    );
    let refused_at = arrivals[0].1;
    for (_, at) in &arrivals[1..] {
        let after = at.duration_since(refused_at);
        assert!(
            after >= Duration::from_millis(1900),
            "a request {after:?} after the 429"
        );
    }
}

/// A tab that joins mid-answer on another node, and a tab reloaded on a
/// third node resuming with `since_seq`, each get the answer's start, one
/// snapshot of the text so far, then every later piece once: each ends
/// with exactly the stored text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_joining_mid_answer_on_other_nodes_end_with_the_stored_text() {
    let llm = FakeLlm::start().await;
    let redis = Redis::start().await;
    let db = tempfile::tempdir().unwrap();
    let nodes = cluster(3, &llm, &redis, &db).await;
    let conv = nodes[0].create_chat("alice", &["bob"]).await;
    let mut writer = nodes[0].connect("alice").await;
    writer.join(&conv, None).await;
    let question = writer.say(&conv, "tell me a long story").await;
    let id = ask(&mut writer, &conv, "slow").await;
    writer
        .until(|f| f["type"] == "stream_content" && f["data"]["index"] == 3)
        .await;

    let mut joiner = nodes[1].connect("bob").await;
    joiner.join(&conv, None).await;
    let mut reloaded = nodes[2].connect("alice").await;
    reloaded
        .join(&conv, Some(question["data"]["seq"].as_i64().unwrap()))
        .await;
    writer
        .until(|f| f["type"] == "stream_content" && f["data"]["index"] == 12)
        .await;
    let (ack, _) = writer
        .request("cancel_stream", json!({"stream_id": id}))
        .await;
    assert_eq!(ack["type"], "ack");

    let full = watch(&mut writer, Some(&id)).await;
    let stored = full.end["data"]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(stored.starts_with("w0 w1 w2 w3 "), "{stored}");
    for tab in [&mut joiner, &mut reloaded] {
        let seen = watch(tab, Some(&id)).await;
        assert_eq!(
            seen.start["data"]["message_id"],
            full.end["data"]["message_id"]
        );
        let (upto, _) = seen
            .snapshot
            .clone()
            .expect("a snapshot of the text so far");
        assert!(
            upto >= 3,
            "the snapshot holds what was written before the join"
        );
        let idx: Vec<u64> = seen.contents.iter().map(|(i, _)| *i).collect();
        let next: Vec<u64> = (upto + 1..upto + 1 + idx.len() as u64).collect();
        assert_eq!(idx, next, "every piece after the snapshot, once");
        assert_eq!(seen.text(), stored);
        assert_eq!(seen.end["data"]["message"]["content"], stored.as_str());
    }
}

/// A provider's URL citations are stored with the answer and delivered with
/// it, live and in history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn citations_are_stored_and_delivered_with_the_answer() {
    let llm = FakeLlm::start().await;
    let node = start_node(|s| {
        assistants(s, &llm);
        one_at_a_time(s, &llm, "cited", "cited");
    })
    .await;
    let conv = node.create_chat("alice", &[]).await;
    let mut tab = node.connect("alice").await;
    tab.join(&conv, None).await;
    tab.say(&conv, "sources please").await;
    let id = ask(&mut tab, &conv, "cited").await;
    let seen = watch(&mut tab, Some(&id)).await;
    let expected = json!([
        {"url": "https://example.com/a", "title": "Example A", "start": 0, "end": 3},
        {"url": "https://example.org/b", "start": 4, "end": 10},
    ]);
    assert_eq!(
        seen.end["data"]["message"]["metadata"]["citations"],
        expected
    );
    assert_eq!(seen.stored[0]["metadata"]["citations"], expected);
    let mut later = node.connect("alice").await;
    later.join(&conv, Some(0)).await;
    let (replayed, _) = later
        .until(|f| f["data"]["message"]["message_type"] == "assistant")
        .await;
    assert_eq!(
        replayed["data"]["message"]["metadata"]["citations"],
        expected
    );
}

/// Each user's token totals are kept and readable by them alone, over
/// `?since=`; each assistant's are in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_totals_per_user_and_per_assistant() {
    let llm = FakeLlm::start().await;
    let node = start_node(|s| assistants(s, &llm)).await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    for user in ["alice", "alice", "bob"] {
        let conv = node.create_chat(user, &[]).await;
        let mut tab = node.connect(user).await;
        tab.join(&conv, None).await;
        tab.say(&conv, "a question").await;
        let id = ask(&mut tab, &conv, "ok").await;
        watch(&mut tab, Some(&id)).await;
    }
    // One without usage counts as a stream with no tokens.
    let conv = node.create_chat("bob", &[]).await;
    let mut tab = node.connect("bob").await;
    tab.join(&conv, None).await;
    tab.say(&conv, "a question").await;
    let id = ask(&mut tab, &conv, "no-usage").await;
    watch(&mut tab, Some(&id)).await;

    let usage = |user: &'static str, query: String| {
        let node = &node;
        async move {
            node.rest(user, "GET", &format!("/api/v1/chat/usage{query}"), None)
                .await
        }
    };
    assert_eq!(
        usage("alice", String::new()).await,
        (
            200,
            json!({"prompt_tokens": 22, "completion_tokens": 10, "total_tokens": 32, "streams": 2})
        )
    );
    assert_eq!(
        usage(
            "bob",
            format!(
                "?since={}",
                before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        )
        .await,
        (
            200,
            json!({"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16, "streams": 2})
        )
    );
    let later = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(
        usage("alice", format!("?since={later}")).await.1["streams"],
        0
    );
    assert_eq!(usage("carol", String::new()).await.1["total_tokens"], 0);
    let (status, _) = usage("alice", "?since=yesterday".into()).await;
    assert!((400..500).contains(&status), "{status}");

    let metrics = reqwest::get(node.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = |kind: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("confab_assistant_usage_tokens_total{")
                    && l.contains("assistant=\"ok\"")
                    && l.contains(&format!("kind=\"{kind}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
    };
    assert_eq!(line("prompt").as_deref(), Some("33"));
    assert_eq!(line("completion").as_deref(), Some("15"));
}

/// A node killed while it runs the head of a queue does not leave the queue
/// stuck: within `stream_timeout_secs` its answer is given up (tabs get
/// `INTERRUPTED`) and the next request runs, on the node it was asked on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_while_running_the_queue_head_lets_the_queue_move_on() {
    let llm = FakeLlm::start().await;
    let env: Vec<(String, String)> = [
        ("CONFAB_ASSISTANTS__HELD__PROVIDER", "openai"),
        ("CONFAB_ASSISTANTS__HELD__MODEL", "held"),
        ("CONFAB_ASSISTANTS__HELD__BASE_URL", llm.base_url.as_str()),
        ("CONFAB_ASSISTANTS__HELD__MAX_CONCURRENT", "1"),
        ("CONFAB_STREAMING__STREAM_TIMEOUT_SECS", "3"),
        ("CONFAB_STREAMING__HEARTBEAT_SECS", "0.5"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let cluster = procs::ProcCluster::start_with(3, 1, &env).await;
    let base = |i: usize| cluster.nodes[i].url("");
    let first = procs::create_chat(&base(0), "alice", &["bob"]).await;
    let second = procs::create_chat(&base(0), "bob", &["alice"]).await;
    let mut alice =
        Client::connect(&cluster.nodes[1].ws_url(), &procs::token("alice"), "alice").await;
    let mut bob = Client::connect(&cluster.nodes[2].ws_url(), &procs::token("bob"), "bob").await;
    for conv in [&first, &second] {
        bob.join(conv, None).await;
    }
    alice.join(&first, None).await;
    alice.say(&first, "a question").await;
    bob.say(&second, "another question").await;
    let head = ask(&mut alice, &first, "held").await;
    assert!(llm.wait_open(1, WAIT).await, "the head runs");
    let (ack, before) = bob
        .request(
            "stream_response",
            json!({"conversation_id": second, "assistant_id": "held"}),
        )
        .await;
    let next = ack["data"]["stream_id"].as_str().unwrap().to_owned();
    // Told as it is queued, before or after the ack.
    let queued =
        |f: &Value| f["type"] == "stream_queued" && f["data"]["stream_id"] == next.as_str();
    if !before.iter().any(queued) {
        bob.until(queued).await;
    }

    // The node running the head dies.
    cluster.nodes[1].signal("KILL");
    // Its answer is cut (told by the node that noticed, or by Bob's node
    // watching the silent stream) and the next request runs; the two are
    // in two conversations, so they may come in either order.
    let (mut cut, mut started, mut early) = (None, false, String::new());
    while cut.is_none() || !started {
        let f = bob.next().await;
        if f["type"] == "stream_error" && f["data"]["stream_id"] == head.as_str() {
            cut.get_or_insert(f["data"]["code"].clone());
        }
        if f["data"]["stream_id"] == next.as_str() {
            started |= f["type"] == "stream_start";
            if f["type"] == "stream_content" {
                early.push_str(f["data"]["content"].as_str().unwrap());
            }
        }
    }
    assert_eq!(cut, Some(json!("INTERRUPTED")));
    procs::wait_until("the next request at the provider", WAIT, || async {
        llm.requests() == 2
    })
    .await;
    // The dead node's request may still be held at the fake: release all.
    while llm.release_one() {}
    let seen = watch(&mut bob, Some(&next)).await;
    assert_eq!(seen.end["type"], "stream_complete", "{:?}", seen.end);
    assert_eq!(early + &seen.text(), "held  done");
}

/// A conversation's own assistant answers every message; when it cannot
/// (the user has as many answers waiting or running as allowed), the
/// conversation is told why instead of waiting for an answer that never
/// comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_answer_that_cannot_be_queued_is_told_to_the_conversation() {
    let llm = FakeLlm::start().await;
    let node = start_node(|s| {
        assistants(s, &llm);
        one_at_a_time(s, &llm, "held", "held");
        s.streaming.max_streams_per_user = 1;
    })
    .await;
    let (status, chat) = node
        .rest(
            "alice",
            "POST",
            "/api/v1/chat/chats",
            Some(json!({"title": "t", "participant_ids": [], "assistant_id": "held"})),
        )
        .await;
    assert_eq!(status, 201, "{chat}");
    let conv = chat["id"].as_str().unwrap().to_owned();
    let mut tab = node.connect("alice").await;
    tab.join(&conv, None).await;
    tab.say(&conv, "one").await;
    let (start, _) = tab.until(|f| f["type"] == "stream_start").await;
    // The refusal is told before the message's ack.
    let (ack, before) = tab
        .request(
            "send_message",
            json!({"conversation_id": conv, "content": "two"}),
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let refused = before
        .into_iter()
        .find(|f| f["type"] == "stream_error")
        .expect("the refusal");
    assert_eq!(refused["data"]["code"], "RATE_LIMITED", "{refused}");
    assert!(refused["data"]["retry_after_ms"].as_u64().is_some());
    assert_ne!(refused["data"]["stream_id"], start["data"]["stream_id"]);
    assert!(llm.wait_open(1, WAIT).await);
    assert!(llm.release_one());
    let id = start["data"]["stream_id"].as_str().unwrap().to_owned();
    let seen = watch(&mut tab, Some(&id)).await;
    assert_eq!(seen.end["type"], "stream_complete");
    assert_eq!(llm.requests(), 1);
}
