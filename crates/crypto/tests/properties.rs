//! Property tests: round trips for arbitrary UTF-8 and every padding value; arbitrary input
//! into decryption never panics.

use proptest::prelude::*;
use wxhub_crypto::{AesKey, Crypt, KeySlot, open, seal};

fn crypt() -> Crypt {
    Crypt::from_parts(
        "token",
        "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        "wx2c2769f8efd9abc2",
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn round_trip_arbitrary_utf8(msg in "\\PC{0,600}", random in proptest::array::uniform16(any::<u8>())) {
        let c = crypt();
        let ct = c.encrypt_with_random(msg.as_bytes(), &random, KeySlot::Current);
        let d = c.decrypt(&ct).unwrap();
        prop_assert_eq!(d.message_str().unwrap(), msg.as_str());
    }

    #[test]
    fn round_trip_four_byte_characters(n in 0usize..200) {
        let msg: String = std::iter::repeat_n('😀', n).collect();
        let c = crypt();
        let d = c.decrypt(&c.encrypt(msg.as_bytes(), KeySlot::Current)).unwrap();
        prop_assert_eq!(d.message_str().unwrap(), msg.as_str());
    }

    #[test]
    fn arbitrary_base64_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let b64 = base64_simd::STANDARD.encode_to_string(&bytes);
        let _ = crypt().decrypt(&b64);
    }

    #[test]
    fn arbitrary_strings_never_panic(s in "\\PC{0,300}") {
        let _ = crypt().decrypt(&s);
        let _ = crypt().verify_and_decrypt(&s, &s, &s, &s);
        let _ = AesKey::parse(&s);
    }

    #[test]
    fn arbitrary_length_prefix_never_panics(len in any::<u32>(), tail in proptest::collection::vec(any::<u8>(), 0..100)) {
        // A well-padded frame whose length prefix lies.
        let key = AesKey::parse("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap();
        let ct = seal(&key, &[7u8; 16], &tail, b"");
        let mut raw = base64_simd::STANDARD.decode_to_vec(ct).unwrap();
        // Corrupting a ciphertext block scrambles the frame, including the length prefix.
        raw[0] ^= (len & 0xff) as u8;
        raw[1] ^= (len >> 8) as u8;
        let _ = open(&key, &base64_simd::STANDARD.encode_to_string(raw));
    }
}

#[test]
fn every_padding_value_1_to_32_is_hit_and_round_trips() {
    let c = crypt();
    let mut seen = [false; 33];
    // frame = 16 + 4 + len + 18 (appid); pad = 32 - frame % 32.
    for len in 0..64usize {
        let msg = "é".repeat(len / 2) + &"a".repeat(len % 2);
        let frame = 16 + 4 + msg.len() + c.appid().len();
        let pad = 32 - frame % 32;
        seen[pad] = true;
        let d = c
            .decrypt(&c.encrypt(msg.as_bytes(), KeySlot::Current))
            .unwrap();
        assert_eq!(d.message_str().unwrap(), msg);
    }
    assert!(
        seen[1..].iter().all(|&s| s),
        "not every padding value was exercised: {seen:?}"
    );
}
