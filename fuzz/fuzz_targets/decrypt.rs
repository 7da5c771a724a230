//! Arbitrary `Encrypt` values (base64 or not) through base64 → AES → 32-byte unpad → framing →
//! appid check, under the current key and a previous key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxhub_crypto::{AesKey, Crypt};

fuzz_target!(|data: &[u8]| {
    let crypt = Crypt::new(
        "token",
        "wx2c2769f8efd9abc2",
        AesKey::parse("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap(),
        Some(AesKey::parse("kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR").unwrap()),
    );
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crypt.decrypt(s);
        let _ = crypt.verify_and_decrypt(s, "1", "2", s);
        let _ = AesKey::parse(s);
    }
    // Valid base64 of arbitrary bytes reaches the AES and framing code.
    let b64 = base64_of(data);
    if let Ok(d) = crypt.decrypt(&b64) {
        let _ = d.message_str();
    }
});

fn base64_of(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len() * 4 / 3 + 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
