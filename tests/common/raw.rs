//! A connection spoken by hand, for what a client library never sends:
//! bytes go out as given, and what the node sends back is read off the
//! socket as it is, as HTTP response heads and WebSocket frames. Every read
//! waits at most `WAIT`; failures are errors that say what went wrong, so a
//! test may collect them rather than stop at the first.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::error::Elapsed;

use super::WAIT;

pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// A frame the node sent.
#[derive(Debug)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn text(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| format!("a text frame that is not JSON ({e}): {self:?}"))
    }
}

/// A masked client frame with the given first byte (FIN, RSV and opcode).
pub fn frame_with(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0xA1, 0x5B, 0x3C, 0x07];
    let mut out = vec![first];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A masked client frame.
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame_with(if fin { 0x80 } else { 0 } | opcode, payload)
}

/// A TCP connection and the bytes read off it but not yet taken.
pub struct RawConn {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> Result<RawConn, String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        Ok(RawConn::new(tcp))
    }

    /// Wraps a connection made elsewhere (from a chosen source address, say).
    pub fn new(tcp: TcpStream) -> RawConn {
        RawConn {
            tcp,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.tcp
            .write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    /// Bytes read but not taken yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Reads what the socket has, within `WAIT`; 0 at EOF.
    pub async fn read_more(&mut self) -> Result<usize, String> {
        self.read_some()
            .await
            .map_err(|_| format!("nothing from the node within {WAIT:?}"))?
            .map_err(|e| format!("read: {e}"))
    }

    /// One read into the buffer; the outer error is `WAIT` passing.
    async fn read_some(&mut self) -> Result<std::io::Result<usize>, Elapsed> {
        let mut chunk = [0u8; 8192];
        let read = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk)).await?;
        if let Ok(n) = read {
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(read)
    }

    /// The head of an HTTP response, status line to the empty line, as
    /// text; what follows it stays buffered.
    pub async fn head(&mut self) -> Result<String, String> {
        let end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if self.read_more().await? == 0 {
                return Err(format!(
                    "the node closed before the end of a response head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end);
        Ok(head)
    }

    /// The node's next WebSocket frame. Server frames are never masked.
    pub async fn next_frame(&mut self) -> Result<Frame, String> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(frame);
            }
            if self.read_more().await? == 0 {
                return Err("the node ended the connection without a close frame".into());
            }
        }
    }

    /// A whole frame off the buffer, if it holds one.
    fn take_frame(&mut self) -> Result<Option<Frame>, String> {
        let [b0, b1, ..] = self.buf[..] else {
            return Ok(None);
        };
        if b1 & 0x80 != 0 {
            return Err("the node sent a masked frame".into());
        }
        if b0 & 0x70 != 0 {
            return Err("the node set reserved bits".into());
        }
        let (len, header) = match b1 & 0x7F {
            126 if self.buf.len() >= 4 => {
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 if self.buf.len() >= 10 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&self.buf[2..10]);
                (u64::from_be_bytes(bytes) as usize, 10)
            }
            126 | 127 => return Ok(None),
            n => (n as usize, 2),
        };
        if self.buf.len() < header + len {
            return Ok(None);
        }
        let payload = self.buf[header..header + len].to_vec();
        self.buf.drain(..header + len);
        Ok(Some(Frame {
            fin: b0 & 0x80 != 0,
            opcode: b0 & 0x0F,
            payload,
        }))
    }

    /// True once the node ended the connection (EOF or reset), reading and
    /// dropping whatever comes first; false if it is still open after `WAIT`
    /// without a byte.
    pub async fn ended(&mut self) -> bool {
        loop {
            self.buf.clear();
            match self.read_some().await {
                Err(_elapsed) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}
