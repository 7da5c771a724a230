/// Everything that can go wrong while verifying, decrypting or encrypting a WeChat message.
///
/// Messages name the failing part (signature, appid, padding, base64, key, XML) and never
/// contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The `signature` / `msg_signature` does not match (also: not 40 hex digits).
    #[error("signature mismatch")]
    Signature,
    /// The envelope or the decrypted message is not acceptable XML.
    #[error("XML error: {0}")]
    Xml(String),
    /// The EncodingAESKey is not 43 base64 characters decoding to 32 bytes.
    #[error("invalid EncodingAESKey: {0}")]
    AesKey(&'static str),
    /// The appid/corpid trailing the plaintext is not the expected one.
    #[error("appid mismatch: expected {expected}, found {found:?}")]
    AppId { expected: String, found: String },
    /// The ciphertext is not valid base64.
    #[error("invalid base64 in ciphertext")]
    Base64,
    /// The ciphertext is empty or not a multiple of WeChat's 32-byte block.
    #[error("ciphertext length {0} is not a positive multiple of 32 bytes")]
    CiphertextLength(usize),
    /// The PKCS#7 (32-byte block) padding is malformed, typically a wrong key.
    #[error("bad padding (wrong key or corrupted ciphertext)")]
    Padding,
    /// The decrypted frame is malformed (length prefix out of range, not UTF-8).
    #[error("malformed plaintext: {0}")]
    Buffer(&'static str),
    /// Building the encrypted reply failed.
    #[error("cannot build reply XML: {0}")]
    ReturnXml(&'static str),
}

impl CryptoError {
    /// The official WXBizMsgCrypt error code (-40001…-40011).
    pub fn code(&self) -> i32 {
        match self {
            CryptoError::Signature => -40001,
            CryptoError::Xml(_) => -40002,
            CryptoError::AesKey(_) => -40004,
            CryptoError::AppId { .. } => -40005,
            CryptoError::CiphertextLength(_) | CryptoError::Padding => -40007,
            CryptoError::Buffer(_) => -40008,
            CryptoError::Base64 => -40010,
            CryptoError::ReturnXml(_) => -40011,
        }
    }

    /// A short, stable label for metrics and logs (`signature`, `appid`, `padding`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            CryptoError::Signature => "signature",
            CryptoError::Xml(_) => "xml",
            CryptoError::AesKey(_) => "key",
            CryptoError::AppId { .. } => "appid",
            CryptoError::Base64 => "base64",
            CryptoError::CiphertextLength(_) => "length",
            CryptoError::Padding => "padding",
            CryptoError::Buffer(_) => "buffer",
            CryptoError::ReturnXml(_) => "reply",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_official_table() {
        assert_eq!(CryptoError::Signature.code(), -40001);
        assert_eq!(CryptoError::Xml("x".into()).code(), -40002);
        assert_eq!(CryptoError::AesKey("x").code(), -40004);
        let appid = CryptoError::AppId {
            expected: "a".into(),
            found: "b".into(),
        };
        assert_eq!(appid.code(), -40005);
        assert_eq!(CryptoError::Padding.code(), -40007);
        assert_eq!(CryptoError::CiphertextLength(3).code(), -40007);
        assert_eq!(CryptoError::Buffer("x").code(), -40008);
        assert_eq!(CryptoError::Base64.code(), -40010);
        assert_eq!(CryptoError::ReturnXml("x").code(), -40011);
    }
}
