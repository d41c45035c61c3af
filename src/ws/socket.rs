//! An upgraded socket's two sides. The reading side is the TCP stream's
//! read half, after the bytes the HTTP parser had read past the upgrade.
//! The writing side is shared by the socket's writer task and the hub's
//! immediate writes (`hub::Immediate`): the write half, written without a
//! lock, since the socket's queue decides who writes when.

use std::io::{self, IoSlice};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::frame::{self, OpCode};
use crate::hub::{Immediate, Written};

/// What the socket's reader reads: the bytes read past the upgrade, then the stream.
pub type ReadSide = tokio::io::Chain<std::io::Cursor<Bytes>, OwnedReadHalf>;

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
                        .map_err(|_| {
                            io::Error::new(
                                io::ErrorKind::TimedOut,
                                "the client took no bytes within the write timeout",
                            )
                        })??;
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
