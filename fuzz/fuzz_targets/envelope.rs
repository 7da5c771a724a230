//! Arbitrary bytes as a callback body: UTF-8 check, limits, DOCTYPE/entity rejection, `Encrypt`
//! lookup.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxhub_message::{Limits, parse_envelope};

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = parse_envelope(data, &Limits::default()) {
        let _ = (envelope.encrypt(), envelope.to_user_name(), envelope.app_id(), envelope.agent_id());
    }
});
