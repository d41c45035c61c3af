//! Any bytes a client sends, cut into any pieces, decode without a panic,
//! give the same results however they are cut, and never make the decoder
//! hold more than its limit allows.
#![no_main]

use arbitrary::Arbitrary;
use confab::transport::ws::fuzzing::{Decoder, Incoming};
use libfuzzer_sys::fuzz_target;

/// One run: the message limit, where the bytes are cut, and the bytes.
#[derive(Arbitrary, Debug)]
struct Input {
    /// Kept small so messages over the limit are easy to reach.
    max_message: u16,
    /// The pieces' lengths, used in turn (a zero is a piece of one byte).
    cuts: Vec<u8>,
    bytes: Vec<u8>,
}

/// Drains the decoder; true once it failed (the stream is then over).
fn drain(
    decoder: &mut Decoder,
    max_message: usize,
    out: &mut Vec<Result<Incoming, String>>,
) -> bool {
    loop {
        match decoder.decode() {
            Ok(Some(incoming)) => {
                if let Incoming::Text(text) = &incoming {
                    assert!(text.len() <= max_message, "a message over the limit");
                }
                out.push(Ok(incoming));
            }
            Ok(None) => {
                assert!(
                    decoder.held() <= decoder.max_held(),
                    "holds {} bytes, more than {}",
                    decoder.held(),
                    decoder.max_held()
                );
                return false;
            }
            Err(e) => {
                out.push(Err(e.to_string()));
                return true;
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let max_message = usize::from(input.max_message);

    let mut whole = Decoder::new(max_message);
    whole.feed(&input.bytes);
    let mut at_once = Vec::new();
    drain(&mut whole, max_message, &mut at_once);

    let mut decoder = Decoder::new(max_message);
    let mut in_pieces = Vec::new();
    let mut rest = &input.bytes[..];
    let mut cuts = input.cuts.iter().cycle();
    while !rest.is_empty() {
        let len = cuts.next().map_or(rest.len(), |&n| usize::from(n).max(1));
        let (piece, tail) = rest.split_at(len.min(rest.len()));
        rest = tail;
        decoder.feed(piece);
        if drain(&mut decoder, max_message, &mut in_pieces) {
            break;
        }
    }
    assert_eq!(
        in_pieces, at_once,
        "the results depend on how the bytes arrive"
    );
});
