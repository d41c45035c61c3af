//! An upgraded socket's two sides. The reading side is the TCP stream's
//! read half, after the bytes the HTTP parser had read past the upgrade.
//! The writing side is shared by the socket's writer task and the hub's
//! immediate writes (`hub::Immediate`): the write half, written without a
//! lock, since the socket's queue decides who writes when.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::frame::{self, OpCode};
use crate::hub::{Immediate, Written};
use crate::server::write_stalled;

/// What the socket's reader reads: the bytes the HTTP parser read past the
/// upgrade (the client's first frames, sent without waiting for the 101),
/// then the stream.
pub struct ReadSide {
    /// Copied out of the parser's buffer, which would otherwise stay
    /// allocated (kilobytes) for the socket's life; dropped once read.
    early: Option<Bytes>,
    half: OwnedReadHalf,
}

impl ReadSide {
    pub fn new(early: &[u8], half: OwnedReadHalf) -> Self {
        Self {
            early: (!early.is_empty()).then(|| Bytes::copy_from_slice(early)),
            half,
        }
    }
}

impl AsyncRead for ReadSide {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(early) = &mut self.early {
            let n = early.len().min(buf.remaining());
            buf.put_slice(&early.split_to(n));
            if early.is_empty() {
                self.early = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.half).poll_read(cx, buf)
    }
}

/// A socket's write half, with the time a client may take no bytes before
/// its writes fail.
pub struct WriteSide {
    half: OwnedWriteHalf,
    write_timeout: Duration,
}

impl WriteSide {
    pub fn new(half: OwnedWriteHalf, write_timeout: Duration) -> Self {
        Self {
            half,
            write_timeout,
        }
    }

    /// Writes all of `buf`. Fails with `TimedOut` once the client has taken
    /// no bytes for the write timeout: a client that stops reading cannot
    /// hold a writer, or the memory behind it, for longer. The timer is
    /// armed only when the socket is full.
    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.half.try_write(buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::time::timeout(self.write_timeout, self.half.writable())
                        .await
                        .map_err(|_| write_stalled())??;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Ends the sending side (the TCP FIN); reading goes on.
    pub fn shutdown(&self) {
        let _ = socket2::SockRef::from(self.half.as_ref()).shutdown(std::net::Shutdown::Write);
    }
}

impl Immediate for WriteSide {
    /// A text frame: its header and payload in one `writev`.
    fn try_write(&self, payload: &[u8]) -> Written {
        let (head, n) = frame::header(OpCode::Text, payload.len());
        let parts = [IoSlice::new(&head[..n]), IoSlice::new(payload)];
        match self.half.try_write_vectored(&parts) {
            Ok(written) if written == n + payload.len() => Written::All,
            Ok(0) | Err(_) => Written::Nothing,
            Ok(written) => {
                let mut rest = Vec::with_capacity(n + payload.len() - written);
                if written < n {
                    rest.extend_from_slice(&head[written..n]);
                    rest.extend_from_slice(payload);
                } else {
                    rest.extend_from_slice(&payload[written - n..]);
                }
                Written::Part(Bytes::from(rest))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_bytes_read_past_the_upgrade_come_first() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read, _write) = server.into_split();
        let mut side = ReadSide::new(b"early ", read);
        client.write_all(b"later").await.unwrap();
        drop(client);
        let mut all = String::new();
        side.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "early later");
        assert!(
            side.early.is_none(),
            "the early bytes are dropped once read"
        );
    }
}
