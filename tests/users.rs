//! The users directory: a user is recorded, under their token's `name`
//! claim, when a connection of theirs authenticates (either transport, and
//! a renewal carrying another name) and when a dev token is minted; any
//! signed-in user looks names up by id (`GET /api/v1/chat/users`), and an
//! id nobody signed in as is absent. `auth_success` carries the token's
//! name and the limits a client counts against.

mod common;

use std::time::Duration;

use common::{start_node, TestNode, WAIT};
use serde_json::{json, Value};

/// `GET /api/v1/chat/users`, with `ids` if given, as `caller` (no token
/// without one): the status and the body.
async fn lookup(node: &TestNode, caller: Option<&str>, ids: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(node.url("/api/v1/chat/users"));
    if let Some(ids) = ids {
        req = req.query(&[("ids", ids)]);
    }
    if let Some(caller) = caller {
        req = req.bearer_auth(node.token(caller));
    }
    let resp = req.send().await.expect("users request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The directory's entry of `id` (as `observer` sees it) once `pred`
/// holds for it; panics after `WAIT`. Recording is asynchronous.
async fn entry_when(node: &TestNode, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = lookup(node, Some("observer"), Some(id)).await;
        assert_eq!(status, 200, "{body}");
        let entry = body["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["id"] == id)
            .cloned()
            .unwrap_or(Value::Null);
        if pred(&entry) {
            return entry;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never matched: {entry}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A token for `user` carrying `name`.
fn named_token(node: &TestNode, user: &str, name: &str) -> String {
    node.node
        .auth
        .mint(user, Some(name), Duration::from_secs(3600))
        .unwrap()
}

on_every_transport! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn signing_in_records_the_name_and_auth_success_carries_it() {
        let node = start_node(|s| {
            s.limits.max_message_chars = 1234;
            s.limits.max_frame_bytes = 40_000;
        })
        .await;
        let limits = json!({"max_message_chars": 1234, "max_frame_bytes": 40_000});
        let token = named_token(&node, "zoë-q", "Zoë Q");
        let mut c = node.connect_with(&token, "zoë-q").await;
        assert_eq!(c.greeting["data"]["name"], "Zoë Q", "{}", c.greeting);
        assert_eq!(c.greeting["data"]["limits"], limits);

        let first = entry_when(&node, "zoë-q", |u| !u.is_null()).await;
        assert_eq!(first["name"], "Zoë Q");
        assert_eq!(first["first_seen_at"], first["last_seen_at"]);
        chrono::DateTime::parse_from_rfc3339(first["first_seen_at"].as_str().unwrap()).unwrap();

        // A renewal with another name: answered with it, and recorded at
        // once; the first sighting stays.
        let renamed = named_token(&node, "zoë-q", "Zoë");
        c.send(json!({"type": "auth", "id": "renew", "token": renamed}))
            .await;
        let ok = c.next_of("auth_success").await;
        assert_eq!(ok["data"]["ref"], "renew");
        assert_eq!(ok["data"]["name"], "Zoë");
        assert_eq!(ok["data"]["limits"], limits);
        let later = entry_when(&node, "zoë-q", |u| u["name"] == "Zoë").await;
        assert_eq!(later["first_seen_at"], first["first_seen_at"]);

        // A token without a name: no `name` in auth_success, the limits
        // still; the recorded name is kept.
        let plain = node.connect("zoë-q").await;
        assert!(plain.greeting["data"].get("name").is_none(), "{}", plain.greeting);
        assert_eq!(plain.greeting["data"]["limits"], limits);
        // (A user recorded after it proves the writer got past it.)
        let _marker = node.connect("marker").await;
        entry_when(&node, "marker", |u| !u.is_null()).await;
        let kept = entry_when(&node, "zoë-q", |u| !u.is_null()).await;
        assert_eq!(kept["name"], "Zoë");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_within_the_hour_writes_nothing() {
    let node = start_node(|_| {}).await;
    let token = named_token(&node, "ann", "Ann");
    let first = node.connect_with(&token, "ann").await;
    let seen = entry_when(&node, "ann", |u| !u.is_null()).await;
    drop(first);
    // Not a wait for anything: the marker below orders the writes. The
    // pause only makes a rewrite visible, as a later `last_seen_at`
    // (stored to the millisecond).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _again = node.connect_with(&token, "ann").await;
    let _tab = node.connect_with(&token, "ann").await;
    // The writer takes sightings in order: once a later one is stored,
    // any write of ann's would have been too.
    let _marker = node.connect("marker").await;
    entry_when(&node, "marker", |u| !u.is_null()).await;
    let now = entry_when(&node, "ann", |u| !u.is_null()).await;
    assert_eq!(now, seen, "not written again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minting_a_dev_token_records_the_name_and_a_new_one_replaces_it() {
    let node = start_node(|_| {}).await;
    let mint = |name: &'static str| {
        let url = node.url("/api/v1/dev/token");
        async move {
            let resp = reqwest::Client::new()
                .post(url)
                .json(&json!({"name": name}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.unwrap()
        }
    };
    let minted = mint("Zoë Q").await;
    assert_eq!(minted["user_id"], "zoë-q");
    let first = entry_when(&node, "zoë-q", |u| !u.is_null()).await;
    assert_eq!(first["name"], "Zoë Q");

    // The same id under another spelling: the name follows.
    let minted = mint("ZOË  q").await;
    assert_eq!(minted["user_id"], "zoë-q");
    let renamed = entry_when(&node, "zoë-q", |u| u["name"] == "ZOË  q").await;
    assert_eq!(renamed["first_seen_at"], first["first_seen_at"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_answers_known_users_in_order_and_refuses_bad_lookups() {
    let node = start_node(|_| {}).await;
    let _alice = node
        .connect_with(&named_token(&node, "alice", "Alice A"), "alice")
        .await;
    let _bob = node.connect("bob").await;
    entry_when(&node, "alice", |u| !u.is_null()).await;
    entry_when(&node, "bob", |u| !u.is_null()).await;

    // Any signed-in user may look up, even one never seen; unknown ids are
    // absent; the order is the caller's, each id once.
    let (status, body) = lookup(&node, Some("carol"), Some("nobody,bob,alice,bob")).await;
    assert_eq!(status, 200, "{body}");
    let users = body["users"].as_array().unwrap();
    let ids: Vec<&str> = users.iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["bob", "alice"]);
    assert!(
        users[0].get("name").is_none(),
        "bob's token had no name: {body}"
    );
    assert_eq!(users[1]["name"], "Alice A");
    for u in users {
        let keys: Vec<&String> = u.as_object().unwrap().keys().collect();
        assert!(
            keys.iter()
                .all(|k| ["id", "name", "first_seen_at", "last_seen_at"].contains(&k.as_str())),
            "{u}"
        );
    }
    let (status, body) = lookup(&node, Some("carol"), Some("nobody")).await;
    assert_eq!((status, body), (200, json!({"users": []})));

    // 100 ids are fine; 101, none, an empty one are not.
    let hundred: Vec<String> = (0..99)
        .map(|i| format!("u{i}"))
        .chain(["alice".into()])
        .collect();
    let (status, body) = lookup(&node, Some("carol"), Some(&hundred.join(","))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["users"].as_array().unwrap().len(), 1);
    let too_many = format!("{},x", hundred.join(","));
    for ids in [
        Some(too_many.as_str()),
        Some(""),
        None,
        Some("alice,,bob"),
        Some("alice,"),
    ] {
        let (status, body) = lookup(&node, Some("carol"), ids).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (422, Some("INVALID_FRAME")),
            "{ids:?}: {body}"
        );
    }

    // A token is required.
    let (status, body) = lookup(&node, None, Some("alice")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("AUTH_REQUIRED"))
    );

    // Documented, under its own tag.
    let spec: Value = reqwest::get(node.url("/api/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let route = &spec["paths"]["/api/v1/chat/users"]["get"];
    let tags = route["tags"].as_array().unwrap();
    assert!(tags.contains(&json!("Users")), "{route}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_that_cannot_be_written_fails_no_sign_in() {
    use sea_orm::ConnectionTrait;

    let node = start_node(|_| {}).await;
    node.node
        .store
        .connection()
        .execute_unprepared("DROP TABLE users")
        .await
        .unwrap();
    // Both sign-ins are answered; the writes fail in the background.
    let mut a = node
        .connect_with(&named_token(&node, "ann", "Ann"), "ann")
        .await;
    assert_eq!(a.greeting["data"]["name"], "Ann");
    let (pong, _) = a.request("ping", json!({})).await;
    assert_eq!(pong["type"], "pong");
    let _again = node
        .connect_with(&named_token(&node, "ann", "Ann"), "ann")
        .await;
    // A lookup says the storage is away.
    let (status, body) = lookup(&node, Some("bob"), Some("ann")).await;
    assert_eq!((status, body["code"].as_str()), (503, Some("UNAVAILABLE")));
}
