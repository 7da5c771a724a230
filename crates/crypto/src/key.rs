use aes::Aes256;
use aes::cipher::KeyInit;

use crate::CryptoError;

/// A parsed EncodingAESKey: 32 key bytes plus the expanded AES-256 key schedule, computed once.
#[derive(Clone)]
pub struct AesKey {
    bytes: [u8; 32],
    cipher: Aes256,
}

impl AesKey {
    /// Parses the 43-character EncodingAESKey (`Base64_Decode(key + "=")` → 32 bytes).
    pub fn parse(encoding_aes_key: &str) -> Result<Self, CryptoError> {
        if encoding_aes_key.len() != 43 {
            return Err(CryptoError::AesKey("must be exactly 43 characters"));
        }
        if !encoding_aes_key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        {
            return Err(CryptoError::AesKey("must contain only base64 characters"));
        }
        // Real keys end in a character whose low bits are not zero, which canonical base64
        // rejects; the forgiving decoder ignores those trailing bits.
        let decoded = base64_simd::forgiving_decode_to_vec(encoding_aes_key.as_bytes())
            .map_err(|_| CryptoError::AesKey("not valid base64"))?;
        let bytes: [u8; 32] = decoded
            .try_into()
            .map_err(|_| CryptoError::AesKey("does not decode to 32 bytes"))?;
        Ok(Self::from_bytes(bytes))
    }

    /// Builds a key from its 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let cipher = Aes256::new(&bytes.into());
        Self { bytes, cipher }
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// The 43-character EncodingAESKey form of this key.
    pub fn encode(&self) -> String {
        let mut s = base64_simd::STANDARD.encode_to_string(self.bytes);
        s.truncate(43);
        s
    }

    pub(crate) fn cipher(&self) -> &Aes256 {
        &self.cipher
    }

    /// IV = first 16 bytes of the key, as WeChat defines it.
    pub(crate) fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&self.bytes[..16]);
        iv
    }
}

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey(<redacted>)")
    }
}

impl PartialEq for AesKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.bytes.ct_eq(&other.bytes).into()
    }
}

impl Eq for AesKey {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_official_sample_key() {
        let key = AesKey::parse("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap();
        // Non-canonical trailing bits: re-encoding gives the canonical form of the same bytes.
        let again = AesKey::parse(&key.encode()).unwrap();
        assert_eq!(again, key);
        assert_eq!(AesKey::from_bytes([9; 32]).encode().len(), 43);
    }

    #[test]
    fn accepts_non_canonical_trailing_bits() {
        // 'G' (0b000110) leaves non-zero trailing bits; real WeChat keys look like this.
        assert!(AesKey::parse("qPcxoOmy62xVVzwSvp2OSVqg6UAzcHO1ORqg8PHVi8q").is_ok());
        assert!(AesKey::parse("kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR").is_ok());
    }

    #[test]
    fn rejects_wrong_length_and_alphabet() {
        assert_eq!(
            AesKey::parse("short"),
            Err(CryptoError::AesKey("must be exactly 43 characters"))
        );
        assert!(AesKey::parse("abcdefghijklmnopqrstuvwxyz0123456789ABCDEF=").is_err());
        assert!(AesKey::parse("abcdefghijklmnopqrstuvwxyz0123456789ABCDEF-").is_err());
        assert!(AesKey::parse("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH").is_err());
    }

    #[test]
    fn debug_never_prints_the_key() {
        let key = AesKey::parse("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap();
        assert_eq!(format!("{key:?}"), "AesKey(<redacted>)");
    }
}
