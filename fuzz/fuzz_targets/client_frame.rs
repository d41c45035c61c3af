//! Any text a client sends as a frame decodes to a frame or an error,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = confab::protocol::decode(text);
});
