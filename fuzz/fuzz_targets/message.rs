//! Arbitrary text as a decrypted message: typed parsing of every message, event and component
//! notice, plus the routing and dedupe keys derived from it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxhub_message::{Inbound, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse(text) {
        Ok(Inbound::Account(m)) => {
            let _ = (m.routing_kind(), m.dedupe_key(), m.header());
        }
        Ok(Inbound::Component(n)) => {
            let _ = (n.routing_kind(), n.dedupe_key());
        }
        Err(_) => {}
    }
});
