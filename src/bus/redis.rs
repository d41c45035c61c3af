//! The Redis bus: events cross nodes on Redis pub/sub (sharded pub/sub with
//! `bus.cluster = true`, so fan-out scales past one Redis).
//!
//! One subscriber connection per node, subscribed only to the channels a
//! local socket needs, plus a small publisher pool. After any reconnect the
//! subscriber resubscribes, then asks the hub to resync from the store
//! (events published while Redis was away are lost; stored messages are not).
//! A probe publishes to a node-private channel every second; readiness is
//! true only while the probe comes back, and a subscriber that stops hearing
//! it is forced to reconnect.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use fred::clients::{Pool, SubscriberClient};
use fred::prelude::*;
use fred::types::config::Options;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use super::{Bus, BusError, Event, EventKind, EventSink, Topic};
use crate::config::BusSettings;
use crate::model::{ConversationId, UserId};
use crate::tasks::Tasks;

/// How often the readiness probe goes round.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Probes missed before the bus counts as not delivering.
const PROBES_MISSED: u32 = 3;
/// Longest a publish or subscribe may wait for Redis.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

type SinkSlot = Arc<RwLock<Option<Weak<dyn EventSink>>>>;

/// A bus over Redis (or a Redis Cluster).
pub struct RedisBus {
    prefix: String,
    cluster: bool,
    publisher: Pool,
    subscriber: SubscriberClient,
    sink: SinkSlot,
    probe: Arc<Probe>,
    /// Every channel this node needs, the probe's included. Subscriptions
    /// asked for while Redis is away are made when it comes back.
    wanted: Arc<Mutex<HashSet<String>>>,
}

/// The readiness round trip: what was sent, what came back, and when.
struct Probe {
    channel: String,
    started: Instant,
    /// Milliseconds since `started` at which the last probe came back.
    seen_at_ms: AtomicU64,
}

impl Probe {
    fn fresh(&self) -> bool {
        let seen = self.seen_at_ms.load(Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        seen > 0 && now.saturating_sub(seen) < (PROBE_EVERY * PROBES_MISSED).as_millis() as u64
    }
}

impl RedisBus {
    /// Connects the publisher pool and the subscriber, and starts the tasks
    /// that receive, resubscribe after reconnects, and probe, on `tasks`.
    pub async fn connect(
        settings: &BusSettings,
        node_id: &str,
        tasks: &Tasks,
    ) -> Result<Arc<Self>, BusError> {
        let mut builder = client_builder(settings)?;
        let publisher = builder.build_pool(2).map_err(unavailable)?;
        // The subscriber's messages arrive on one of those channels; a
        // receiver that lags resyncs from the store.
        builder.with_performance_config(|p| p.broadcast_channel_capacity = 1 << 12);
        let subscriber = builder.build_subscriber_client().map_err(unavailable)?;
        publisher.init().await.map_err(unavailable)?;
        subscriber.init().await.map_err(unavailable)?;

        let bus = Arc::new(RedisBus {
            prefix: settings.prefix.clone(),
            cluster: settings.cluster,
            publisher,
            subscriber,
            sink: Arc::new(RwLock::new(None)),
            probe: Arc::new(Probe {
                channel: format!("{}:node:{node_id}", settings.prefix),
                started: Instant::now(),
                seen_at_ms: AtomicU64::new(0),
            }),
            wanted: Arc::new(Mutex::new(HashSet::new())),
        });
        bus.wanted.lock().insert(bus.probe.channel.clone());
        subscribe_channel(&bus.subscriber, bus.cluster, bus.probe.channel.clone()).await?;
        bus.spawn_receiver(tasks);
        bus.spawn_resubscriber(tasks);
        bus.spawn_prober(tasks);
        Ok(bus)
    }

    fn channel(&self, topic: &Topic) -> String {
        match topic {
            Topic::Conversation(id) => format!("{}:conv:{}", self.prefix, id),
            Topic::User(id) => format!("{}:user:{}", self.prefix, id),
            Topic::Streams => format!("{}:streams", self.prefix),
        }
    }

    /// Receives messages, decodes them, and hands them to the hub.
    fn spawn_receiver(&self, tasks: &Tasks) {
        let mut rx = self.subscriber.message_rx();
        let sink = self.sink.clone();
        let probe = self.probe.clone();
        let prefix = format!("{}:", self.prefix);
        tasks.spawn(async move {
            loop {
                let message = match rx.recv().await {
                    Ok(m) => m,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "bus receiver lagged; resyncing from the store");
                        if let Some(s) = upgrade(&sink) {
                            s.resync();
                        }
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                let channel: &str = &message.channel;
                if channel == probe.channel {
                    let now = probe.started.elapsed().as_millis() as u64;
                    probe.seen_at_ms.store(now.max(1), Ordering::Relaxed);
                    continue;
                }
                let Some(topic) = parse_channel(channel, &prefix) else {
                    continue;
                };
                let Some(bytes) = message.value.into_bytes() else {
                    continue;
                };
                match decode(topic, bytes) {
                    Some(event) => {
                        if let Some(s) = upgrade(&sink) {
                            s.deliver(Arc::new(event));
                        }
                    }
                    None => tracing::warn!(channel, "dropped an undecodable bus message"),
                }
            }
        });
    }

    /// After every reconnect: subscribe to every wanted channel, then resync
    /// the hub from the store.
    fn spawn_resubscriber(&self, tasks: &Tasks) {
        let subscriber = self.subscriber.clone();
        let mut reconnects = subscriber.reconnect_rx();
        let (sink, wanted, cluster) = (self.sink.clone(), self.wanted.clone(), self.cluster);
        tasks.spawn(async move {
            loop {
                match reconnects.recv().await {
                    Ok(server) => tracing::info!(%server, "bus reconnected; resubscribing"),
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
                let channels: Vec<String> = wanted.lock().iter().cloned().collect();
                for channel in channels {
                    if let Err(e) = subscribe_channel(&subscriber, cluster, channel).await {
                        tracing::warn!(error = %e, "resubscribe failed; the probe will force another reconnect");
                        break;
                    }
                }
                if let Some(s) = upgrade(&sink) {
                    s.resync();
                }
            }
        });
    }

    /// Sends one event: its header line, then its payload.
    async fn send(&self, event: Event) -> Result<(), BusError> {
        let channel = self.channel(&event.topic);
        let header = serde_json::to_vec(&Header {
            kind: event.kind,
            at: event.published_at_us,
            tp: event.traceparent,
        })
        .map_err(|e| BusError::Unavailable(e.to_string()))?;
        let mut body = Vec::with_capacity(header.len() + 1 + event.payload.len());
        body.extend_from_slice(&header);
        body.push(b'\n');
        body.extend_from_slice(&event.payload);
        let client = self.publisher.next().with_options(&fail_fast());
        let res: Result<i64, _> = if self.cluster {
            client.spublish(channel, Bytes::from(body)).await
        } else {
            client.publish(channel, Bytes::from(body)).await
        };
        res.map(|_| ()).map_err(unavailable)
    }

    /// Publishes a probe every second; forces a reconnect when they stop coming back.
    fn spawn_prober(&self, tasks: &Tasks) {
        let publisher = self.publisher.clone();
        let subscriber = self.subscriber.clone();
        let probe = self.probe.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(PROBE_EVERY);
            let mut missed = 0u32;
            loop {
                tick.tick().await;
                let before = probe.seen_at_ms.load(Ordering::Relaxed);
                let sent: Result<i64, _> = publisher
                    .next()
                    .with_options(&fail_fast())
                    .publish(probe.channel.clone(), "probe")
                    .await;
                if sent.is_err() {
                    continue;
                }
                tokio::time::sleep(PROBE_EVERY / 2).await;
                if probe.seen_at_ms.load(Ordering::Relaxed) != before {
                    missed = 0;
                    continue;
                }
                missed += 1;
                if missed >= PROBES_MISSED {
                    tracing::warn!("bus probe not coming back; reconnecting the subscriber");
                    missed = 0;
                    let _ = subscriber.force_reconnection().await;
                }
            }
        });
    }
}

/// A client builder for the Redis (or Redis Cluster) the settings name,
/// with the bus's reconnect policy and timeouts; shared with `presence`.
pub fn client_builder(settings: &BusSettings) -> Result<Builder, BusError> {
    let url = match (
        settings.cluster,
        settings.redis_url.strip_prefix("redis://"),
    ) {
        (true, Some(rest)) => format!("redis-cluster://{rest}"),
        _ => settings.redis_url.clone(),
    };
    let config = Config::from_url(&url).map_err(unavailable)?;
    let mut builder = Builder::from_config(config);
    builder
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
        .with_connection_config(|c| {
            c.connection_timeout = COMMAND_TIMEOUT;
            c.internal_command_timeout = COMMAND_TIMEOUT;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = COMMAND_TIMEOUT;
            // Each of fred's event channels preallocates this many slots
            // (about 100 KiB each): clients that receive nothing need few.
            p.broadcast_channel_capacity = 16;
        });
    Ok(builder)
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, event: Event) -> Result<(), BusError> {
        super::traced_publish(event, |event| self.send(event)).await
    }

    /// Never fails: a subscription Redis cannot take now is made when the bus
    /// reconnects, and the hub then catches up from the store.
    async fn subscribe(&self, topic: &Topic) -> Result<(), BusError> {
        let channel = self.channel(topic);
        self.wanted.lock().insert(channel.clone());
        if let Err(e) = subscribe_channel(&self.subscriber, self.cluster, channel).await {
            tracing::warn!(error = %e, "subscribe failed; retried when the bus reconnects");
            if self.subscriber.is_connected() {
                // Connected yet failing: start over, so the retry happens now.
                let _ = self.subscriber.force_reconnection().await;
            }
        }
        Ok(())
    }

    async fn unsubscribe(&self, topic: &Topic) -> Result<(), BusError> {
        let channel = self.channel(topic);
        self.wanted.lock().remove(&channel);
        let client = self.subscriber.with_options(&fail_fast());
        let res = if self.cluster {
            client.sunsubscribe(channel).await
        } else {
            client.unsubscribe(channel).await
        };
        // While Redis is away there is nothing to unsubscribe from.
        res.or_else(|e| {
            if self.subscriber.is_connected() {
                Err(e)
            } else {
                Ok(())
            }
        })
        .map_err(unavailable)
    }

    fn attach(&self, sink: Weak<dyn EventSink>) {
        *self.sink.write() = Some(sink);
    }

    async fn healthy(&self) -> bool {
        self.subscriber.is_connected() && self.probe.fresh()
    }

    async fn close(&self) {
        for result in [self.subscriber.quit().await, self.publisher.quit().await] {
            if let Err(e) = result {
                tracing::debug!(error = %e, "closing the bus connection failed");
            }
        }
    }
}

/// SUBSCRIBE (or SSUBSCRIBE on a cluster) that fails at once while disconnected.
async fn subscribe_channel(
    subscriber: &SubscriberClient,
    cluster: bool,
    channel: String,
) -> Result<(), BusError> {
    let client = subscriber.with_options(&fail_fast());
    let res = if cluster {
        client.ssubscribe(channel).await
    } else {
        client.subscribe(channel).await
    };
    res.map_err(unavailable)
}

fn upgrade(slot: &SinkSlot) -> Option<Arc<dyn EventSink>> {
    slot.read().as_ref().and_then(Weak::upgrade)
}

/// Fails at once while disconnected instead of queueing, and within the
/// command timeout: the caller has stored what matters, and nodes resync
/// from the store after a reconnect. Presence, the assistants' queue and
/// transcripts use it too.
pub fn fail_fast() -> Options {
    Options {
        fail_fast: true,
        timeout: Some(COMMAND_TIMEOUT),
        ..Options::default()
    }
}

fn unavailable(e: fred::error::Error) -> BusError {
    BusError::Unavailable(e.to_string())
}

/// The topic of `{prefix}:conv:{uuid}` or `{prefix}:user:{id}`.
fn parse_channel(channel: &str, prefix: &str) -> Option<Topic> {
    let rest = channel.strip_prefix(prefix)?;
    if rest == "streams" {
        return Some(Topic::Streams);
    }
    if let Some(id) = rest.strip_prefix("conv:") {
        return id
            .parse()
            .ok()
            .map(|u| Topic::Conversation(ConversationId(u)));
    }
    rest.strip_prefix("user:")
        .and_then(|id| UserId::parse(id).ok())
        .map(Topic::User)
}

/// What precedes the payload on the wire, as one line of JSON.
#[derive(Serialize, Deserialize)]
struct Header {
    kind: EventKind,
    /// `Event::published_at_us`.
    at: i64,
    /// `Event::traceparent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tp: Option<String>,
}

/// `<header as JSON>\n<payload>`: the payload is sliced, not copied.
fn decode(topic: Topic, bytes: Bytes) -> Option<Event> {
    let split = bytes.iter().position(|b| *b == b'\n')?;
    let header: Header = serde_json::from_slice(&bytes[..split]).ok()?;
    Some(Event {
        topic,
        kind: header.kind,
        payload: bytes.slice(split + 1..),
        published_at_us: header.at,
        traceparent: header.tp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Seq;

    #[test]
    fn channels_parse_back_to_topics() {
        let conv = ConversationId::new();
        assert_eq!(
            parse_channel(&format!("confab:conv:{conv}"), "confab:"),
            Some(Topic::Conversation(conv))
        );
        assert_eq!(
            parse_channel("confab:user:a:b", "confab:"),
            Some(Topic::User(UserId::parse("a:b").unwrap()))
        );
        assert_eq!(parse_channel("other:user:a", "confab:"), None);
    }

    #[test]
    fn events_decode_with_their_payload_intact() {
        let kind = EventKind::Message {
            seq: Seq(7),
            message: None,
        };
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut body = serde_json::to_vec(&Header {
            kind: kind.clone(),
            at: 42,
            tp: Some(tp.into()),
        })
        .unwrap();
        body.push(b'\n');
        body.extend_from_slice(b"{\"type\":\"x\",\"data\":\"a\\nb\"}");
        let topic = Topic::User(UserId::parse("u").unwrap());
        let e = decode(topic.clone(), Bytes::from(body)).unwrap();
        assert_eq!(e.kind, kind);
        assert_eq!(e.topic, topic);
        assert_eq!(
            (e.published_at_us, e.traceparent.as_deref()),
            (42, Some(tp))
        );
        assert_eq!(&e.payload[..], b"{\"type\":\"x\",\"data\":\"a\\nb\"}");
    }
}
