//! The handoff token parser: arbitrary text under a key is an error or a
//! token whose handle count is at most 16, never a panic. (No descriptor is
//! touched: this is the parser `adopt` runs before it takes any.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(token) = conduit_core::handoff::parse_token("fuzz", text) {
        assert!(token.total <= 16);
        assert_eq!(token.halves.iter().map(|h| h.1).sum::<u64>(), token.total);
    }
});
