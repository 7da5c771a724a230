use rand::RngExt;
use rand::distr::Alphanumeric;
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

use crate::CryptoError;

/// SHA-1 over the byte-wise sorted, concatenated parts (WeChat's signature scheme).
fn digest(parts: &mut [&str]) -> [u8; 20] {
    parts.sort_unstable();
    let mut hasher = Sha1::new();
    for part in parts.iter() {
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// Plain `signature` = hex(sha1(sort(token, timestamp, nonce))).
pub fn signature(token: &str, timestamp: &str, nonce: &str) -> String {
    hex::encode(digest(&mut [token, timestamp, nonce]))
}

/// `msg_signature` = hex(sha1(sort(token, timestamp, nonce, encrypt))); `encrypt` is the base64
/// ciphertext exactly as it appears in the XML (or the WeCom `echostr`).
pub fn msg_signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> String {
    hex::encode(digest(&mut [token, timestamp, nonce, encrypt]))
}

/// Verifies `given` (40 hex digits, either case) against the signature of `parts`, comparing
/// the digests in constant time.
pub fn verify_signature(given: &str, parts: &mut [&str]) -> Result<(), CryptoError> {
    let mut given_bytes = [0u8; 20];
    hex::decode_to_slice(given, &mut given_bytes).map_err(|_| CryptoError::Signature)?;
    let expected = digest(parts);
    if bool::from(expected.ct_eq(&given_bytes)) {
        Ok(())
    } else {
        Err(CryptoError::Signature)
    }
}

/// A random alphanumeric string, as the official samples use for nonces and the 16-byte
/// random prefix of the plaintext frame.
pub fn random_nonce(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v5_plain_signatures() {
        assert_eq!(
            signature("test", "1410685589", "test"),
            "f21891de399b4e33a1a93c9a7b8a8fffb5a443ff"
        );
        assert_eq!(
            signature("AAAAA", "1714037059", "486452656"),
            "899cf89e464efb63f54ddac96b0a0a235f53aa78"
        );
        assert_eq!(
            signature("AAAAA", "1714036504", "1514711492"),
            "f464b24fc39322e44b38aa78f5edd27bd1441696"
        );
    }

    #[test]
    fn v5_verification_and_negative_case() {
        let ok = "f21891de399b4e33a1a93c9a7b8a8fffb5a443ff";
        assert!(verify_signature(ok, &mut ["test", "1410685589", "test"]).is_ok());
        assert!(verify_signature(&ok.to_uppercase(), &mut ["test", "1410685589", "test"]).is_ok());
        let bad = "f21891de399b4e33a1a93c9a7b8a8fffb5a443fe";
        assert_eq!(
            verify_signature(bad, &mut ["test", "1410685589", "test"]),
            Err(CryptoError::Signature)
        );
        assert_eq!(
            verify_signature("not-hex", &mut ["test", "1410685589", "test"]),
            Err(CryptoError::Signature)
        );
        assert_eq!(
            verify_signature("", &mut ["a"]),
            Err(CryptoError::Signature)
        );
    }

    #[test]
    fn v1_signatures() {
        assert_eq!(
            signature("spamtest", "1409735669", "1320562132"),
            "16120ec1b8dbb870f510d87ce6bc2463eae6ca1a"
        );
    }

    #[test]
    fn nonce_is_alphanumeric() {
        let n = random_nonce(16);
        assert_eq!(n.len(), 16);
        assert!(n.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
