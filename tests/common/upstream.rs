//! A fake HTTP upstream for nodes to call (an LLM provider, an OTLP
//! collector): the test's own poem app, served on 127.0.0.1 at a port the
//! system picks, with every request recorded before it is handled.

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use poem::http::{HeaderMap, Method};
use poem::listener::TcpAcceptor;
use poem::{Endpoint, EndpointExt, IntoEndpoint, Request, Server};
use tokio::task::JoinHandle;

/// One request the upstream received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// The server; it stops accepting when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    server: JoinHandle<()>,
}

impl Upstream {
    /// Serves `app` and records every request it gets, in arrival order.
    pub async fn start<E>(app: E) -> Upstream
    where
        E: IntoEndpoint,
        E::Endpoint: 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TcpAcceptor::from_tokio(listener).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let app = app.into_endpoint().around(move |ep, mut req: Request| {
            let log = log.clone();
            async move {
                let body = req.take_body().into_vec().await?;
                log.lock().push(Recorded {
                    method: req.method().clone(),
                    path: req.uri().path().to_owned(),
                    headers: req.headers().clone(),
                    body: body.clone(),
                });
                req.set_body(body);
                ep.call(req).await
            }
        });
        let server = tokio::spawn(async move {
            let _ = Server::new_with_acceptor(acceptor).run(app).await;
        });
        Upstream {
            addr,
            requests,
            server,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}
