//! WeChat message crypto, exactly as the official `WXBizMsgCrypt` samples define it.
//!
//! - [`signature`] / [`msg_signature`]: SHA-1 over the lexicographically sorted parameters,
//!   verified in constant time ([`verify_signature`]).
//! - [`AesKey`]: the 43-character EncodingAESKey, decoded leniently (real keys are not
//!   canonical base64).
//! - [`seal`] / [`open`]: AES-256-CBC with IV = key\[..16\], PKCS#7 over **32-byte** blocks and
//!   WeChat's framing `random(16) | u32be(len) | message | appid`.
//! - [`Crypt`]: one tenant's token, appid and keys (current and previous, for key rotation),
//!   with URL verification for Official Accounts (plain echostr) and WeCom (encrypted echostr).
//! - [`jssdk_signature`]: the JS-SDK `wx.config` signature.
//!
//! Errors are one [`CryptoError`] enum whose [`CryptoError::code`] is the official
//! -40001…-40011 code. This crate does no I/O and must not depend on any runtime.

mod cipher;
mod crypt;
mod error;
mod jssdk;
mod key;
mod sign;

pub use cipher::{Opened, open, seal};
pub use crypt::{Crypt, Decrypted, KeySlot};
pub use error::CryptoError;
pub use jssdk::jssdk_signature;
pub use key::AesKey;
pub use sign::{msg_signature, random_nonce, signature, verify_signature};
