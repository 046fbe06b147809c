//! Fuzz target: see `checks::proxy_header` (shared with `tests/fuzz_corpus.rs`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::proxy_header(data));
