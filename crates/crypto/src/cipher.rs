//! AES-256-CBC with WeChat's framing and 32-byte PKCS#7 padding.

use std::ops::Range;

use aes::Aes256;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, InnerIvInit};

use crate::{AesKey, CryptoError};

/// WeChat pads to the key size (32 bytes), not the AES block size.
const BLOCK: usize = 32;
/// random(16) | u32be length(4)
const HEADER: usize = 20;

/// A decrypted frame: the 16 random bytes, the message and the trailing appid, sharing one
/// buffer.
#[derive(Debug, Clone)]
pub struct Opened {
    buf: Vec<u8>,
    msg: Range<usize>,
    appid: Range<usize>,
}

impl Opened {
    /// The 16-byte random prefix.
    pub fn random(&self) -> &[u8] {
        &self.buf[..16]
    }

    /// The message bytes (normally UTF-8 XML).
    pub fn message(&self) -> &[u8] {
        &self.buf[self.msg.clone()]
    }

    /// The appid / corpid / receive-id trailing the message.
    pub fn appid(&self) -> &[u8] {
        &self.buf[self.appid.clone()]
    }

    /// The message as UTF-8.
    pub fn message_str(&self) -> Result<&str, CryptoError> {
        simdutf8::basic::from_utf8(self.message())
            .map_err(|_| CryptoError::Buffer("message is not UTF-8"))
    }
}

/// Decrypts a base64 `Encrypt` value and splits the frame. Does not check the appid.
pub fn open(key: &AesKey, encrypt_b64: &str) -> Result<Opened, CryptoError> {
    // Forgiving decode: padding optional, ASCII whitespace ignored, SIMD-accelerated.
    let mut buf = base64_simd::forgiving_decode_to_vec(encrypt_b64.as_bytes())
        .map_err(|_| CryptoError::Base64)?;
    if buf.is_empty() || buf.len() % BLOCK != 0 {
        return Err(CryptoError::CiphertextLength(buf.len()));
    }
    let len = buf.len();
    cbc::Decryptor::<Aes256>::inner_iv_init(key.cipher().clone(), &key.iv().into())
        .decrypt_padded::<NoPadding>(&mut buf)
        .map_err(|_| CryptoError::CiphertextLength(len))?;

    let pad = usize::from(buf[buf.len() - 1]);
    if pad == 0
        || pad > BLOCK
        || buf[buf.len() - pad..]
            .iter()
            .any(|&b| usize::from(b) != pad)
    {
        return Err(CryptoError::Padding);
    }
    let content_len = buf.len() - pad;
    if content_len < HEADER {
        return Err(CryptoError::Buffer("frame shorter than its 20-byte header"));
    }
    let declared = u32::from_be_bytes([buf[16], buf[17], buf[18], buf[19]]) as usize;
    let msg_end = HEADER
        .checked_add(declared)
        .filter(|&end| end <= content_len)
        .ok_or(CryptoError::Buffer("message length exceeds the frame"))?;
    Ok(Opened {
        buf,
        msg: HEADER..msg_end,
        appid: msg_end..content_len,
    })
}

/// Frames, pads and encrypts `message` for `appid`; returns the base64 `Encrypt` value.
pub fn seal(key: &AesKey, random: &[u8; 16], message: &[u8], appid: &[u8]) -> String {
    let body_len = HEADER + message.len() + appid.len();
    let pad = BLOCK - body_len % BLOCK;
    let mut buf = Vec::with_capacity(body_len + pad);
    buf.extend_from_slice(random);
    // A message over 4 GiB cannot be framed; callers bound message sizes far below that.
    buf.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    buf.extend_from_slice(message);
    buf.extend_from_slice(appid);
    buf.resize(body_len + pad, pad as u8);
    let len = buf.len();
    // The buffer is a whole number of blocks, so NoPadding cannot fail.
    if cbc::Encryptor::<Aes256>::inner_iv_init(key.cipher().clone(), &key.iv().into())
        .encrypt_padded::<NoPadding>(&mut buf, len)
        .is_err()
    {
        unreachable_block_multiple();
    }
    base64_simd::STANDARD.encode_to_string(&buf)
}

#[cold]
fn unreachable_block_multiple() {
    debug_assert!(false, "buffer is always a multiple of the block size");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AesKey {
        AesKey::parse("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap()
    }

    #[test]
    fn v2_deterministic_encryption_with_chinese_text() {
        let ct = seal(
            &key(),
            b"aaaabbbbccccdddd",
            "我是中文abcd123".as_bytes(),
            b"wxb11529c136998cb6",
        );
        assert_eq!(
            ct,
            "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg=="
        );
        let opened = open(&key(), &ct).unwrap();
        assert_eq!(opened.message_str().unwrap(), "我是中文abcd123");
        assert_eq!(opened.appid(), b"wxb11529c136998cb6");
        assert_eq!(opened.random(), b"aaaabbbbccccdddd");
    }

    #[test]
    fn every_padding_value_round_trips() {
        for len in 0..=64 {
            let msg = vec![b'x'; len];
            let ct = seal(&key(), b"0123456789abcdef", &msg, b"wxappid");
            let opened = open(&key(), &ct).unwrap();
            assert_eq!(opened.message(), &msg[..]);
            assert_eq!(opened.appid(), b"wxappid");
        }
    }

    #[test]
    fn rejects_bad_base64_length_and_padding() {
        assert_eq!(open(&key(), "!!!").unwrap_err(), CryptoError::Base64);
        // 16 bytes: valid for AES, not for WeChat's 32-byte framing.
        let sixteen = base64_simd::STANDARD.encode_to_string([0u8; 16]);
        assert_eq!(
            open(&key(), &sixteen).unwrap_err(),
            CryptoError::CiphertextLength(16)
        );
        assert_eq!(
            open(&key(), "").unwrap_err(),
            CryptoError::CiphertextLength(0)
        );
        // Encrypted with another key: the padding check fails (or, rarely, the frame).
        let other = AesKey::parse("kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR").unwrap();
        let ct = seal(&other, b"0123456789abcdef", b"<xml/>", b"wx1");
        let err = open(&key(), &ct).unwrap_err();
        assert!(
            matches!(err, CryptoError::Padding | CryptoError::Buffer(_)),
            "{err:?}"
        );
    }
}
