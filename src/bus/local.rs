//! The in-process bus of a single node: publishing hands the event straight
//! to this node's hub, which ignores topics no local socket needs.

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use parking_lot::RwLock;

use super::{Bus, BusError, Event, EventSink, Topic};

/// A bus with one node on it.
#[derive(Default)]
pub struct LocalBus {
    sink: RwLock<Option<Weak<dyn EventSink>>>,
}

impl LocalBus {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, event: Event) -> Result<(), BusError> {
        super::traced_publish(event, |event| async move {
            let sink = self.sink.read().as_ref().and_then(Weak::upgrade);
            if let Some(sink) = sink {
                sink.deliver(Arc::new(event));
            }
            Ok(())
        })
        .await
    }

    async fn subscribe(&self, _topic: &Topic) -> Result<(), BusError> {
        Ok(())
    }

    async fn unsubscribe(&self, _topic: &Topic) -> Result<(), BusError> {
        Ok(())
    }

    fn attach(&self, sink: Weak<dyn EventSink>) {
        *self.sink.write() = Some(sink);
    }

    async fn healthy(&self) -> bool {
        true
    }

    async fn close(&self) {
        *self.sink.write() = None;
    }
}
