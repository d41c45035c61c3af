//! WebSocket framing for the server side of RFC 6455: reading a client's
//! frames and encoding the node's.
//!
//! It exists for memory. A general-purpose WebSocket library keeps a read
//! buffer and a write buffer per socket for the socket's whole life; an idle
//! chat socket needs neither. Here a socket holds buffered bytes only while
//! a frame is arriving, and the writer encodes each batch into a buffer it
//! drops once written. No extension is negotiated, so reserved bits must be
//! clear; client frames must be masked; server frames are not.
//!
//! The rules live in `Decoder`, which does no I/O (so it can be fuzzed);
//! `Reader` feeds it from the socket.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::model::CloseReason;

/// Bytes read at once into the stack while no frame is under way.
const SCRATCH: usize = 4096;
/// The largest frame header: 2 bytes, 8 of length, 4 of mask.
const MAX_HEADER: usize = 14;
/// Control frames carry at most this much payload.
const MAX_CONTROL: u64 = 125;

/// A frame's opcode (RFC 6455, 5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// What a client sent: a whole message or a control frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(Utf8Bytes),
    /// Binary messages are not part of the protocol; only their arrival is
    /// reported.
    Binary,
    Ping(Bytes),
    Pong,
    /// The client's close code, if it sent one.
    Close(Option<u16>),
}

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A message longer than the limit (close code 1009).
    #[error("message larger than {0} bytes")]
    TooBig(usize),
    /// A frame that breaks RFC 6455 (close code 1002).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A text message, or a close frame's reason, that is not UTF-8 (close
    /// code 1007).
    #[error("text is not UTF-8")]
    NotUtf8,
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl ReadError {
    /// The close code the socket gets for it.
    pub fn close_reason(&self) -> CloseReason {
        match self {
            ReadError::TooBig(_) => CloseReason::TooBig,
            ReadError::Protocol(_) => CloseReason::ProtocolError,
            ReadError::NotUtf8 => CloseReason::NotUtf8,
            // The connection itself failed: no close frame will get through.
            ReadError::Io(_) => CloseReason::Normal,
        }
    }
}

/// A message whose first frames arrived, waiting for its last.
#[derive(Debug)]
struct Fragmented {
    text: bool,
    data: BytesMut,
}

/// The frame parsing of RFC 6455, without I/O: bytes go in as they arrive,
/// whole messages and control frames come out. It exists so the rules can
/// be tested and fuzzed without a socket or a runtime; `Reader` is the
/// socket's loop around it.
///
/// After an error the byte stream cannot be resynchronized: the caller
/// stops decoding.
#[derive(Debug)]
pub struct Decoder {
    /// Bytes fed but not yet taken as frames; unallocated when empty.
    buf: BytesMut,
    fragmented: Option<Fragmented>,
    max_message: usize,
}

impl Decoder {
    /// Messages above `max_message` bytes are refused.
    pub fn new(max_message: usize) -> Self {
        Decoder {
            buf: BytesMut::new(),
            fragmented: None,
            max_message,
        }
    }

    /// Adds bytes that arrived.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The bytes held: a frame under way and the parts of a fragmented
    /// message.
    pub fn held(&self) -> usize {
        self.buf.len() + self.fragmented.as_ref().map_or(0, |f| f.data.len())
    }

    /// The most `held` can be once `decode` asked for more bytes: a whole
    /// message's worth of fragments, a control frame and a frame header.
    pub fn max_held(&self) -> usize {
        self.max_message + MAX_CONTROL as usize + MAX_HEADER
    }

    /// Takes whole frames off the buffer until one completes a message or is
    /// a control frame. Ok(None): more bytes are needed.
    pub fn decode(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            let Some(header) = Header::parse(&self.buf)? else {
                self.buf.reserve(MAX_HEADER);
                return Ok(None);
            };
            let Some(opcode) = OpCode::from_bits(header.opcode) else {
                return Err(ReadError::Protocol("unknown opcode"));
            };
            if header.reserved != 0 {
                return Err(ReadError::Protocol("reserved bits set"));
            }
            let Some(mask) = header.mask else {
                return Err(ReadError::Protocol("client frames must be masked"));
            };
            if opcode.is_control() && (!header.fin || header.payload > MAX_CONTROL) {
                return Err(ReadError::Protocol(
                    "control frames must be whole and at most 125 bytes",
                ));
            }
            let held = self.fragmented.as_ref().map_or(0, |f| f.data.len()) as u64;
            if !opcode.is_control() && held + header.payload > self.max_message as u64 {
                return Err(ReadError::TooBig(self.max_message));
            }
            // Fits in usize: at most max_message, or MAX_CONTROL.
            let total = header.len + header.payload as usize;
            if self.buf.len() < total {
                self.buf.reserve(total - self.buf.len());
                return Ok(None);
            }
            let mut payload = self.buf.split_to(total);
            if self.buf.is_empty() {
                // Drop the reference to the spent buffer: an idle socket
                // holds nothing.
                self.buf = BytesMut::new();
            }
            payload.advance(header.len);
            unmask(&mut payload, mask);
            match opcode {
                OpCode::Ping => return Ok(Some(Incoming::Ping(payload.freeze()))),
                OpCode::Pong => return Ok(Some(Incoming::Pong)),
                OpCode::Close => return close_code(&payload).map(|c| Some(Incoming::Close(c))),
                OpCode::Text | OpCode::Binary => {
                    if self.fragmented.is_some() {
                        return Err(ReadError::Protocol(
                            "a message began before the last one ended",
                        ));
                    }
                    let text = opcode == OpCode::Text;
                    if header.fin {
                        return whole(text, payload).map(Some);
                    }
                    self.fragmented = Some(Fragmented {
                        text,
                        data: payload,
                    });
                }
                OpCode::Continuation => {
                    let Some(message) = self.fragmented.as_mut() else {
                        return Err(ReadError::Protocol("continuation of no message"));
                    };
                    message.data.extend_from_slice(&payload);
                    if header.fin {
                        // Just checked to be Some.
                        let message = self.fragmented.take().expect("a message under way");
                        return whole(message.text, message.data).map(Some);
                    }
                }
            }
        }
    }
}

/// Reads a client's frames from `io`, holding no buffer between frames.
pub struct Reader<R> {
    io: R,
    decoder: Decoder,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Messages above `max_message` bytes are refused.
    pub fn new(io: R, max_message: usize) -> Self {
        Reader {
            io,
            decoder: Decoder::new(max_message),
        }
    }

    /// The next message or control frame; None once the peer closed the
    /// connection. Cancel-safe: bytes read stay buffered for the next call.
    pub async fn next(&mut self) -> Option<Result<Incoming, ReadError>> {
        loop {
            match self.decoder.decode() {
                Ok(Some(incoming)) => return Some(Ok(incoming)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            match self.fill().await {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    /// Reads and drops whatever else arrives, unparsed, until the peer ends
    /// the connection or the read fails: after a frame the decoder refused,
    /// the next frame's start cannot be found.
    pub async fn discard(&mut self) {
        use tokio::io::AsyncReadExt;
        self.decoder = Decoder::new(self.decoder.max_message);
        let mut scratch = [0u8; SCRATCH];
        while let Ok(1..) = self.io.read(&mut scratch).await {}
    }

    /// Reads what the socket has. Between frames it reads into the stack
    /// and keeps only what arrived; within a frame, into the room `decode`
    /// reserved for it.
    async fn fill(&mut self) -> io::Result<usize> {
        poll_fn(|cx| {
            let decoder = &mut self.decoder;
            if decoder.buf.is_empty() {
                let mut scratch = [0u8; SCRATCH];
                let mut read = ReadBuf::new(&mut scratch);
                ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
                decoder.feed(read.filled());
                Poll::Ready(Ok(read.filled().len()))
            } else {
                tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut decoder.buf)
            }
        })
        .await
    }
}

/// A close frame's code (RFC 6455, 5.5.1 and 7.4): None if the payload is
/// empty. The code must be one an endpoint may send, and the reason UTF-8.
fn close_code(payload: &[u8]) -> Result<Option<u16>, ReadError> {
    let [a, b, reason @ ..] = payload else {
        return match payload {
            [] => Ok(None),
            _ => Err(ReadError::Protocol("a close payload of one byte")),
        };
    };
    let code = u16::from_be_bytes([*a, *b]);
    // 1004 is reserved; 1005, 1006 and 1015 stand for "no code" and must
    // not be sent; 1016-2999 are unassigned; 3000-4999 belong to
    // libraries and applications.
    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        return Err(ReadError::Protocol("invalid close code"));
    }
    std::str::from_utf8(reason).map_err(|_| ReadError::NotUtf8)?;
    Ok(Some(code))
}

/// A complete message.
fn whole(text: bool, data: BytesMut) -> Result<Incoming, ReadError> {
    if !text {
        return Ok(Incoming::Binary);
    }
    Utf8Bytes::try_from(data.freeze())
        .map(Incoming::Text)
        .map_err(|_| ReadError::NotUtf8)
}

/// A frame header, parsed.
struct Header {
    fin: bool,
    reserved: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    /// The header's own length.
    len: usize,
    payload: u64,
}

impl Header {
    /// None if `buf` does not yet hold the whole header.
    fn parse(buf: &[u8]) -> Result<Option<Header>, ReadError> {
        let [b0, b1, rest @ ..] = buf else {
            return Ok(None);
        };
        let (payload, mut len) = match b1 & 0x7F {
            126 => match rest {
                [a, b, ..] => (u16::from_be_bytes([*a, *b]) as u64, 4),
                _ => return Ok(None),
            },
            127 => match rest.first_chunk::<8>() {
                Some(bytes) => (u64::from_be_bytes(*bytes), 10),
                None => return Ok(None),
            },
            n => (n as u64, 2),
        };
        if payload >> 63 != 0 {
            return Err(ReadError::Protocol("frame length out of range"));
        }
        let mask = if b1 & 0x80 != 0 {
            let Some(mask) = buf.get(len..len + 4) else {
                return Ok(None);
            };
            len += 4;
            // Exactly four bytes, just sliced.
            Some(mask.try_into().expect("four bytes"))
        } else {
            None
        };
        Ok(Some(Header {
            fin: b0 & 0x80 != 0,
            reserved: b0 & 0x70,
            opcode: b0 & 0x0F,
            mask,
            len,
            payload,
        }))
    }
}

fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        // chunks_exact_mut yields four bytes.
        let bytes: &mut [u8; 4] = chunk.try_into().expect("four bytes");
        *bytes = (u32::from_ne_bytes(*bytes) ^ word).to_ne_bytes();
    }
    for (byte, m) in chunks.into_remainder().iter_mut().zip(mask) {
        *byte ^= m;
    }
}

/// Appends one unfragmented, unmasked server frame to `out`.
pub fn encode(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let (head, n) = header(opcode, payload.len());
    out.extend_from_slice(&head[..n]);
    out.extend_from_slice(payload);
}

/// The header of an unfragmented, unmasked server frame of `len` bytes:
/// the bytes, and how many of them it takes.
pub fn header(opcode: OpCode, len: usize) -> ([u8; 10], usize) {
    let mut head = [0u8; 10];
    head[0] = 0x80 | opcode as u8;
    if len < 126 {
        head[1] = len as u8;
        (head, 2)
    } else if let Ok(len) = u16::try_from(len) {
        head[1] = 126;
        head[2..4].copy_from_slice(&len.to_be_bytes());
        (head, 4)
    } else {
        head[1] = 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (head, 10)
    }
}

/// A close frame's payload: the code, then the reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A masked client frame.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xFFFF {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Reads everything `bytes` holds, written in pieces of `step` bytes.
    async fn read_all(bytes: Vec<u8>, step: usize, max: usize) -> Vec<Result<Incoming, String>> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let writer = tokio::spawn(async move {
            for piece in bytes.chunks(step) {
                client.write_all(piece).await.unwrap();
            }
        });
        let mut reader = Reader::new(server, max);
        let mut out = Vec::new();
        while let Some(next) = reader.next().await {
            let failed = next.is_err();
            out.push(next.map_err(|e| e.to_string()));
            if failed {
                break;
            }
        }
        writer.await.unwrap();
        out
    }

    fn text(s: &str) -> Result<Incoming, String> {
        Ok(Incoming::Text(s.into()))
    }

    #[tokio::test]
    async fn frames_are_read_whole_however_the_bytes_arrive() {
        let long = "x".repeat(70_000);
        let mut bytes = client_frame(true, 0x1, b"hello");
        bytes.extend(client_frame(true, 0x9, b"ping!"));
        bytes.extend(client_frame(true, 0x1, "é".repeat(200).as_bytes()));
        bytes.extend(client_frame(true, 0x1, long.as_bytes()));
        bytes.extend(client_frame(true, 0x2, b"\x00\x01"));
        bytes.extend(client_frame(true, 0xA, b""));
        bytes.extend(client_frame(true, 0x8, &close_payload(1000, "bye")));
        for step in [1, 3, 100, 1 << 20] {
            let got = read_all(bytes.clone(), step, 100_000).await;
            assert_eq!(
                got,
                vec![
                    text("hello"),
                    Ok(Incoming::Ping(Bytes::from_static(b"ping!"))),
                    text(&"é".repeat(200)),
                    text(&long),
                    Ok(Incoming::Binary),
                    Ok(Incoming::Pong),
                    Ok(Incoming::Close(Some(1000))),
                ],
                "in pieces of {step}"
            );
        }
    }

    #[tokio::test]
    async fn fragments_join_with_control_frames_between() {
        let mut bytes = client_frame(false, 0x1, b"one ");
        bytes.extend(client_frame(true, 0x9, b"p"));
        bytes.extend(client_frame(false, 0x0, b"two "));
        bytes.extend(client_frame(true, 0x0, b"three"));
        let got = read_all(bytes, 2, 1000).await;
        assert_eq!(
            got,
            vec![
                Ok(Incoming::Ping(Bytes::from_static(b"p"))),
                text("one two three")
            ]
        );
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_refused_before_it_is_buffered() {
        let got = read_all(client_frame(true, 0x1, &[b'a'; 1001]), 1 << 20, 1000).await;
        assert_eq!(got, vec![Err("message larger than 1000 bytes".into())]);
        // The limit counts every fragment of the message.
        let mut bytes = client_frame(false, 0x1, &[b'a'; 600]);
        bytes.extend(client_frame(true, 0x0, &[b'a'; 600]));
        let got = read_all(bytes, 1 << 20, 1000).await;
        assert_eq!(got, vec![Err("message larger than 1000 bytes".into())]);
        // A length field too large for any buffer is refused too.
        let mut huge = vec![0x81, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&[0; 4]);
        let got = read_all(huge, 1 << 20, 1000).await;
        assert_eq!(got.len(), 1);
        assert!(got[0].is_err());
    }

    #[tokio::test]
    async fn frames_that_break_the_rfc_are_refused() {
        let unmasked = vec![0x81, 0x02, b'h', b'i'];
        let reserved = {
            let mut f = client_frame(true, 0x1, b"hi");
            f[0] |= 0x40;
            f
        };
        let unknown = client_frame(true, 0x3, b"");
        let long_ping = client_frame(true, 0x9, &[0; 126]);
        let split_ping = client_frame(false, 0x9, b"");
        let stray = client_frame(true, 0x0, b"x");
        let mut interleaved = client_frame(false, 0x1, b"a");
        interleaved.extend(client_frame(true, 0x1, b"b"));
        let not_utf8 = client_frame(true, 0x1, &[0xC3, 0x28]);
        for (name, bytes, error) in [
            ("unmasked", unmasked, "client frames must be masked"),
            ("reserved bit", reserved, "reserved bits set"),
            ("unknown opcode", unknown, "unknown opcode"),
            (
                "long ping",
                long_ping,
                "control frames must be whole and at most 125 bytes",
            ),
            (
                "fragmented ping",
                split_ping,
                "control frames must be whole and at most 125 bytes",
            ),
            ("stray continuation", stray, "continuation of no message"),
            (
                "interleaved",
                interleaved,
                "a message began before the last one ended",
            ),
            ("not utf-8", not_utf8, "text is not UTF-8"),
        ] {
            let got = read_all(bytes, 1 << 20, 1000).await;
            let want = if error.starts_with("text") {
                error.to_string()
            } else {
                format!("protocol error: {error}")
            };
            assert_eq!(got, vec![Err(want)], "{name}");
        }
    }

    #[tokio::test]
    async fn an_idle_reader_holds_no_buffer() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut reader = Reader::new(server, 1 << 16);
        let mut two = client_frame(true, 0x1, b"first");
        two.extend(client_frame(true, 0x1, &[b'z'; 3000]));
        client.write_all(&two).await.unwrap();
        assert_eq!(
            reader.next().await.unwrap().unwrap(),
            Incoming::Text("first".into())
        );
        assert!(
            reader.decoder.buf.capacity() > 0,
            "the second frame is buffered"
        );
        let second = reader.next().await.unwrap().unwrap();
        assert!(matches!(second, Incoming::Text(t) if t.len() == 3000));
        assert_eq!(
            reader.decoder.buf.capacity(),
            0,
            "nothing is held between frames"
        );
        drop(client);
        assert!(reader.next().await.is_none(), "the peer left");
    }

    /// Decodes `bytes` fed at once; every result up to the first error.
    fn decode_all(bytes: &[u8]) -> Vec<Result<Incoming, String>> {
        let mut decoder = Decoder::new(1000);
        decoder.feed(bytes);
        let mut out = Vec::new();
        loop {
            match decoder.decode() {
                Ok(Some(incoming)) => out.push(Ok(incoming)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    #[test]
    fn close_frames_carry_a_valid_code_or_none() {
        assert_eq!(
            decode_all(&client_frame(true, 0x8, b"")),
            vec![Ok(Incoming::Close(None))]
        );
        let valid = (1000..=1003)
            .chain(1007..=1014)
            .chain([3000, 3999, 4000, 4999]);
        for code in valid {
            let frame = client_frame(true, 0x8, &close_payload(code, ""));
            assert_eq!(
                decode_all(&frame),
                vec![Ok(Incoming::Close(Some(code)))],
                "code {code}"
            );
        }
        let with_reason = client_frame(true, 0x8, &close_payload(4000, "adiós"));
        assert_eq!(
            decode_all(&with_reason),
            vec![Ok(Incoming::Close(Some(4000)))]
        );
    }

    #[test]
    fn a_one_byte_close_payload_is_a_protocol_error() {
        assert_eq!(
            decode_all(&client_frame(true, 0x8, &[0x03])),
            vec![Err("protocol error: a close payload of one byte".into())]
        );
    }

    #[test]
    fn close_codes_no_endpoint_may_send_are_protocol_errors() {
        let invalid = [
            0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ];
        for code in invalid {
            let frame = client_frame(true, 0x8, &close_payload(code, "x"));
            assert_eq!(
                decode_all(&frame),
                vec![Err("protocol error: invalid close code".into())],
                "code {code}"
            );
        }
    }

    #[test]
    fn a_close_reason_that_is_not_utf8_is_refused() {
        let mut payload = close_payload(1000, "");
        payload.extend_from_slice(&[b'o', b'k', 0xFF]);
        let got = {
            let mut decoder = Decoder::new(1000);
            decoder.feed(&client_frame(true, 0x8, &payload));
            decoder.decode()
        };
        assert!(matches!(got, Err(ReadError::NotUtf8)), "{got:?}");
        assert_eq!(got.unwrap_err().close_reason().code(), 1007);
    }

    #[test]
    fn the_decoder_gives_the_same_results_however_it_is_fed() {
        let mut bytes = client_frame(false, 0x1, "ü".as_bytes());
        bytes.extend(client_frame(true, 0x9, b"mid"));
        bytes.extend(client_frame(true, 0x0, b"ber"));
        bytes.extend(client_frame(true, 0x8, &close_payload(1001, "away")));
        bytes.extend(client_frame(true, 0x1, &[0xC3, 0x28]));
        let at_once = decode_all(&bytes);
        assert_eq!(
            at_once,
            vec![
                Ok(Incoming::Ping(Bytes::from_static(b"mid"))),
                text("über"),
                Ok(Incoming::Close(Some(1001))),
                Err("text is not UTF-8".into()),
            ]
        );
        let mut decoder = Decoder::new(1000);
        let mut byte_by_byte = Vec::new();
        'feed: for byte in &bytes {
            decoder.feed(&[*byte]);
            loop {
                match decoder.decode() {
                    Ok(Some(incoming)) => byte_by_byte.push(Ok(incoming)),
                    Ok(None) => {
                        assert!(decoder.held() <= decoder.max_held());
                        break;
                    }
                    Err(e) => {
                        byte_by_byte.push(Err(e.to_string()));
                        break 'feed;
                    }
                }
            }
        }
        assert_eq!(byte_by_byte, at_once);
    }

    #[test]
    fn server_frames_use_the_shortest_length() {
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let mut out = Vec::new();
            encode(&mut out, OpCode::Text, &vec![b'a'; len]);
            assert_eq!(out.len(), header + len, "payload of {len}");
            assert_eq!(out[0], 0x81);
            assert_eq!(out[1] & 0x80, 0, "server frames are not masked");
        }
        let mut close = Vec::new();
        encode(&mut close, OpCode::Close, &close_payload(4009, "slow"));
        assert_eq!(close, [0x88, 6, 0x0F, 0xA9, b's', b'l', b'o', b'w']);
    }
}
