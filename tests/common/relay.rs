//! A TCP relay a test puts between nodes and a server (Postgres, in the
//! recovery tests) to make that server unreachable on demand while it keeps
//! running: `down()` closes every relayed connection and turns new ones
//! away (accepted and closed at once, so clients fail fast), `up()` relays
//! again.

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A relay listening on 127.0.0.1 and forwarding to `target`.
pub struct Relay {
    pub port: u16,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

/// Whether the relay forwards, and the token that cuts the connections it
/// relays now; swapped under the same lock, so no connection escapes a cut.
struct State {
    up: bool,
    cut: CancellationToken,
}

impl Relay {
    /// Listens on a free port and starts relaying to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            up: true,
            cut: CancellationToken::new(),
        }));
        let accept = tokio::spawn(accept(listener, target, state.clone()));
        Relay {
            port,
            state,
            accept,
        }
    }

    /// Closes every relayed connection and refuses new ones until `up`.
    pub fn down(&self) {
        let mut st = self.state.lock();
        st.up = false;
        st.cut.cancel();
        st.cut = CancellationToken::new();
    }

    /// Relays new connections again.
    pub fn up(&self) {
        self.state.lock().up = true;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.state.lock().cut.cancel();
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, state: Arc<Mutex<State>>) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let cut = {
            let st = state.lock();
            st.up.then(|| st.cut.clone())
        };
        // Down: the socket is dropped, so the client sees it closed at once.
        let Some(cut) = cut else { continue };
        tokio::spawn(async move {
            tokio::select! {
                _ = cut.cancelled() => {}
                _ = async {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                } => {}
            }
        });
    }
}
