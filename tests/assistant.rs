//! Assistants that stream, against a local fake OpenAI-compatible server:
//! tokens reach every tab on every node in index order, the answer is stored
//! in the conversation's one seq order, and every upstream failure gives its
//! documented event.

mod common;

use common::fake_llm::{FakeLlm, ANSWER};
use common::procs::Redis;
use common::{start_node, Client, TestNode};
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
            })
            .await,
        );
    }
    nodes
}

/// What one socket saw of one stream.
#[derive(Debug)]
struct Seen {
    start: Value,
    contents: Vec<(u64, String)>,
    end: Value,
    stored: Vec<Value>,
}

impl Seen {
    fn text(&self) -> String {
        self.contents.iter().map(|(_, c)| c.as_str()).collect()
    }
}

/// Reads until the stream with `stream_id` (or the first stream seen, if
/// None) completes or fails, then until its stored answer (if any) arrived.
async fn watch(c: &mut Client, stream_id: Option<&str>) -> Seen {
    let mut id = stream_id.map(str::to_owned);
    let (mut start, mut contents, mut stored) = (Value::Null, Vec::new(), Vec::new());
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

    // One active stream per conversation.
    let (busy, _) = bob
        .request(
            "stream_response",
            json!({"conversation_id": conv, "assistant_id": "ok"}),
        )
        .await;
    assert_eq!(busy["data"]["code"], "RATE_LIMITED", "{busy}");

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
    // The claim is released: a new answer may start.
    let next = ask(&mut bob, &conv, "ok").await;
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
