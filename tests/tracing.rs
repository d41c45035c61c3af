//! Traces over OTLP/HTTP: node processes export to a minimal OTLP receiver
//! started by the test, one trace follows a message from the node that
//! stored it to the node that delivered it, and a collector that is down
//! slows nothing.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::procs::{create_chat, free_port, token, wait_until, NodeProcess, ProcCluster};
use common::upstream::Upstream;
use common::Client;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use poem::{handler, post, Response, Route};
use prost::Message as _;

/// How long exported spans may take to arrive.
const SPANS_WITHIN: Duration = Duration::from_secs(20);

/// One received span, flattened.
#[derive(Clone, Debug)]
struct Span {
    /// The exporting node's `service.instance.id`.
    instance: String,
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: HashMap<String, String>,
    /// Linked spans, as (trace id, span id).
    links: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Span {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// A minimal OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body.
struct Receiver {
    upstream: Upstream,
}

impl Receiver {
    async fn start() -> Receiver {
        let app = Route::new().at("/v1/traces", post(export));
        Receiver {
            upstream: Upstream::start(app).await,
        }
    }

    fn endpoint(&self) -> String {
        self.upstream.url("")
    }

    /// The spans of every export received so far, in arrival order.
    fn spans(&self) -> Vec<Span> {
        self.upstream
            .requests()
            .iter()
            .filter(|r| r.path == "/v1/traces")
            .filter_map(|r| ExportTraceServiceRequest::decode(&r.body[..]).ok())
            .flat_map(spans_of)
            .collect()
    }

    /// Polls until `found` returns Some for the spans received so far.
    async fn wait_for<T>(&self, what: &str, found: impl Fn(&[Span]) -> Option<T>) -> T {
        wait_until(what, SPANS_WITHIN, || {
            let ready = found(&self.spans()).is_some();
            async move { ready }
        })
        .await;
        found(&self.spans()).unwrap()
    }
}

/// Answers an export as a collector does: 400 for a body that is not an
/// export request. (The spans are read off the recorded requests.)
#[handler]
fn export(body: Vec<u8>) -> Response {
    match ExportTraceServiceRequest::decode(&body[..]) {
        Ok(_) => Response::builder()
            .content_type("application/x-protobuf")
            .body(ExportTraceServiceResponse::default().encode_to_vec()),
        Err(e) => Response::builder()
            .status(poem::http::StatusCode::BAD_REQUEST)
            .body(e.to_string()),
    }
}

/// The spans of one export request, flattened.
fn spans_of(request: ExportTraceServiceRequest) -> Vec<Span> {
    let mut received = Vec::new();
    for rs in request.resource_spans {
        let resource = rs
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let instance = resource
            .get("service.instance.id")
            .cloned()
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                received.push(Span {
                    instance: instance.clone(),
                    service: service.clone(),
                    name: s.name,
                    trace_id: s.trace_id,
                    span_id: s.span_id,
                    parent_span_id: s.parent_span_id,
                    attributes: attributes(&s.attributes),
                    links: s
                        .links
                        .into_iter()
                        .map(|l| (l.trace_id, l.span_id))
                        .collect(),
                });
            }
        }
    }
    received
}

/// String, integer and boolean attributes, as text.
fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => s.clone(),
                AnyValue::IntValue(i) => i.to_string(),
                AnyValue::BoolValue(b) => b.to_string(),
                _ => return None,
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

/// Settings that send a node's spans to `endpoint`, exported every 200 ms.
fn traced(endpoint: &str) -> Vec<(String, String)> {
    vec![
        (
            "CONFAB_TELEMETRY__OTLP_ENDPOINT".into(),
            endpoint.to_owned(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_message_from_the_storing_node_to_the_delivering_node() {
    let receiver = Receiver::start().await;
    let cluster = ProcCluster::start_with(2, 0, &traced(&receiver.endpoint())).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let conv = create_chat(&a.url(""), "alice", &["bob"]).await;
    let mut alice = Client::connect(&a.ws_url(), &token("alice"), "alice").await;
    let mut bob = Client::connect(&b.ws_url(), &token("bob"), "bob").await;
    alice.join(&conv, None).await;
    bob.join(&conv, None).await;

    let ack = alice.say(&conv, "traced hello").await;
    let got = bob.next_of("message_received").await;
    assert_eq!(got["data"]["message"]["content"], "traced hello");
    assert_eq!(got["data"]["message"]["id"], ack["data"]["message_id"]);

    // The publish of the message on A, and its delivery on B, in one trace.
    let (publish, deliver) = receiver
        .wait_for("bus.publish on A and bus.deliver on B", |spans| {
            let publish = spans.iter().find(|s| {
                s.name == "bus.publish"
                    && s.instance == a.node_id
                    && s.attr("bus.kind") == Some("message")
            })?;
            let deliver = spans.iter().find(|s| {
                s.name == "bus.deliver"
                    && s.instance == b.node_id
                    && s.attr("bus.kind") == Some("message")
                    && s.trace_id == publish.trace_id
            })?;
            Some((publish.clone(), deliver.clone()))
        })
        .await;
    assert_eq!(deliver.parent_span_id, publish.span_id, "{deliver:?}");
    assert_eq!(publish.attr("conversation_id"), Some(conv.as_str()));
    assert_eq!(deliver.attr("sockets"), Some("1"), "bob's one socket");

    // The same trace starts at the frame on A, and stores the message there.
    let spans = receiver.spans();
    let in_trace = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name && s.trace_id == publish.trace_id)
            .cloned()
    };
    let frame = in_trace("ws.frame").expect("a ws.frame span in the message's trace");
    assert_eq!(frame.instance, a.node_id);
    assert_eq!(frame.attr("frame.type"), Some("send_message"));
    assert!(
        frame.parent_span_id.is_empty(),
        "a frame is the root of its trace"
    );
    assert_eq!(publish.parent_span_id, frame.span_id);
    let append = in_trace("store.append").expect("a store.append span in the message's trace");
    assert_eq!(append.instance, a.node_id);
    assert_eq!(append.parent_span_id, frame.span_id);
    assert!(spans.iter().all(|s| s.service == "confab"));
    for node in [a, b] {
        assert!(
            spans.iter().any(|s| s.instance == node.node_id),
            "spans from {}",
            node.node_id
        );
    }

    // A socket's span is exported when it closes; each frame links to it.
    alice.ws().close(None).await.unwrap();
    let socket = receiver
        .wait_for("alice's ws.socket span", |spans| {
            spans
                .iter()
                .find(|s| s.name == "ws.socket" && s.attr("user_id") == Some("alice"))
                .cloned()
        })
        .await;
    assert_eq!(socket.instance, a.node_id);
    assert!(frame
        .links
        .contains(&(socket.trace_id.clone(), socket.span_id.clone())));
    assert_eq!(frame.attr("connection_id"), socket.attr("connection_id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_blocks_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = traced(&format!("http://127.0.0.1:{}", free_port()));
    env.push((
        "CONFAB_DATABASE__URL".into(),
        format!("sqlite://{}/confab.db?mode=rwc", dir.path().display()),
    ));
    env.push(("CONFAB_SERVER__DRAIN_SECS".into(), "0".into()));
    let mut node = NodeProcess::start("lonely", dir.path(), &env).await;
    let conv = create_chat(&node.url(""), "alice", &[]).await;
    let mut alice = Client::connect(&node.ws_url(), &token("alice"), "alice").await;
    alice.join(&conv, None).await;
    // Each ack within the usual wait, while exports keep failing.
    for i in 0..20 {
        let ack = alice.say(&conv, &format!("message {i}")).await;
        assert_eq!(ack["data"]["seq"], i + 1);
    }
    let ready = reqwest::get(node.url("/ready")).await.unwrap();
    assert_eq!(ready.status(), 200);
    // The final flush gives up on the missing collector: the node exits.
    node.signal("TERM");
    assert_eq!(node.wait_exit(Duration::from_secs(20)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_still_buffered_are_flushed_when_the_node_stops() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        (
            "CONFAB_TELEMETRY__OTLP_ENDPOINT".to_owned(),
            receiver.endpoint(),
        ),
        // No scheduled export during the test: only the exit flush sends.
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "600000".to_owned()),
        (
            "CONFAB_DATABASE__URL".to_owned(),
            format!("sqlite://{}/confab.db?mode=rwc", dir.path().display()),
        ),
        ("CONFAB_SERVER__DRAIN_SECS".to_owned(), "0".to_owned()),
    ];
    let mut node = NodeProcess::start("flushing", dir.path(), &env).await;
    let conv = create_chat(&node.url(""), "alice", &[]).await;
    let mut alice = Client::connect(&node.ws_url(), &token("alice"), "alice").await;
    alice.join(&conv, None).await;
    alice.say(&conv, "flush me").await;
    assert!(receiver.spans().is_empty(), "nothing exported before exit");
    node.signal("TERM");
    assert_eq!(node.wait_exit(Duration::from_secs(20)).await, Some(0));
    let spans = receiver.spans();
    for name in ["store.append", "ws.frame", "bus.publish"] {
        assert!(
            spans
                .iter()
                .any(|s| s.name == name && s.instance == "flushing"),
            "{name} flushed at exit"
        );
    }
}
