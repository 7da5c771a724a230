use crate::cipher::{Opened, open, seal};
use crate::{AesKey, CryptoError, random_nonce, verify_signature};

/// Which of a tenant's keys decrypted a message; replies must be encrypted with the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySlot {
    /// The configured EncodingAESKey.
    Current,
    /// The key configured before the last rotation (WeChat may still use it for a while).
    Previous,
}

/// A decrypted, appid-checked message.
#[derive(Debug, Clone)]
pub struct Decrypted {
    opened: Opened,
    slot: KeySlot,
}

impl Decrypted {
    /// The message bytes.
    pub fn message(&self) -> &[u8] {
        self.opened.message()
    }

    /// The message as UTF-8.
    pub fn message_str(&self) -> Result<&str, CryptoError> {
        self.opened.message_str()
    }

    /// The key that decrypted it.
    pub fn slot(&self) -> KeySlot {
        self.slot
    }
}

/// One tenant's message crypto: token, receive-id (appid or corpid) and keys.
#[derive(Clone)]
pub struct Crypt {
    token: String,
    appid: String,
    current: AesKey,
    previous: Option<AesKey>,
}

impl std::fmt::Debug for Crypt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crypt")
            .field("appid", &self.appid)
            .field("previous_key", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

impl Crypt {
    /// A crypt for `appid` with its current key and, during a rotation, the previous one.
    pub fn new(
        token: impl Into<String>,
        appid: impl Into<String>,
        current: AesKey,
        previous: Option<AesKey>,
    ) -> Self {
        Self {
            token: token.into(),
            appid: appid.into(),
            current,
            previous,
        }
    }

    /// Parses the EncodingAESKey and builds a crypt without a previous key.
    pub fn from_parts(
        token: &str,
        encoding_aes_key: &str,
        appid: &str,
    ) -> Result<Self, CryptoError> {
        Ok(Self::new(
            token,
            appid,
            AesKey::parse(encoding_aes_key)?,
            None,
        ))
    }

    /// The verification token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The expected receive-id (component appid, Official Account appid or WeCom corpid).
    pub fn appid(&self) -> &str {
        &self.appid
    }

    /// Verifies the plain `signature` query parameter.
    pub fn verify_signature(
        &self,
        signature: &str,
        timestamp: &str,
        nonce: &str,
    ) -> Result<(), CryptoError> {
        verify_signature(signature, &mut [&self.token, timestamp, nonce])
    }

    /// Verifies `msg_signature` over the ciphertext as it appears in the envelope.
    pub fn verify_msg_signature(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        encrypt: &str,
    ) -> Result<(), CryptoError> {
        verify_signature(msg_signature, &mut [&self.token, timestamp, nonce, encrypt])
    }

    /// Decrypts with the current key, then the previous one, and checks the trailing appid.
    pub fn decrypt(&self, encrypt: &str) -> Result<Decrypted, CryptoError> {
        let first = match self.open_checked(&self.current, encrypt) {
            Ok(opened) => {
                return Ok(Decrypted {
                    opened,
                    slot: KeySlot::Current,
                });
            }
            // Key-independent failures: another key cannot help.
            Err(e @ (CryptoError::Base64 | CryptoError::CiphertextLength(_))) => return Err(e),
            Err(e) => e,
        };
        let Some(previous) = &self.previous else {
            return Err(first);
        };
        match self.open_checked(previous, encrypt) {
            Ok(opened) => Ok(Decrypted {
                opened,
                slot: KeySlot::Previous,
            }),
            // Report the attempt that got furthest: an appid mismatch means the key was right.
            Err(second @ CryptoError::AppId { .. })
                if !matches!(first, CryptoError::AppId { .. }) =>
            {
                Err(second)
            }
            Err(_) => Err(first),
        }
    }

    /// `verify_msg_signature` followed by `decrypt`.
    pub fn verify_and_decrypt(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        encrypt: &str,
    ) -> Result<Decrypted, CryptoError> {
        self.verify_msg_signature(msg_signature, timestamp, nonce, encrypt)?;
        self.decrypt(encrypt)
    }

    /// Encrypts `message` for this appid with a fresh random prefix.
    pub fn encrypt(&self, message: &[u8], slot: KeySlot) -> String {
        let mut random = [0u8; 16];
        random.copy_from_slice(random_nonce(16).as_bytes());
        self.encrypt_with_random(message, &random, slot)
    }

    /// Encrypts with a caller-chosen random prefix (for deterministic tests and vectors).
    pub fn encrypt_with_random(&self, message: &[u8], random: &[u8; 16], slot: KeySlot) -> String {
        seal(self.key(slot), random, message, self.appid.as_bytes())
    }

    /// Official Account / Mini Program URL verification: checks `signature` and returns the
    /// `echostr` to answer verbatim.
    pub fn verify_url_plain<'e>(
        &self,
        signature: &str,
        timestamp: &str,
        nonce: &str,
        echostr: &'e str,
    ) -> Result<&'e str, CryptoError> {
        self.verify_signature(signature, timestamp, nonce)?;
        Ok(echostr)
    }

    /// WeCom URL verification: `msg_signature` covers the encrypted `echostr`, whose decrypted
    /// content (receive-id = corpid) is the answer.
    pub fn verify_url_encrypted(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        echostr: &str,
    ) -> Result<String, CryptoError> {
        let decrypted = self.verify_and_decrypt(msg_signature, timestamp, nonce, echostr)?;
        Ok(decrypted.message_str()?.to_owned())
    }

    fn key(&self, slot: KeySlot) -> &AesKey {
        match (slot, &self.previous) {
            (KeySlot::Previous, Some(previous)) => previous,
            _ => &self.current,
        }
    }

    fn open_checked(&self, key: &AesKey, encrypt: &str) -> Result<Opened, CryptoError> {
        let opened = open(key, encrypt)?;
        if opened.appid() != self.appid.as_bytes() {
            let found = String::from_utf8_lossy(opened.appid())
                .chars()
                .take(64)
                .collect();
            return Err(CryptoError::AppId {
                expected: self.appid.clone(),
                found,
            });
        }
        Ok(opened)
    }
}
