//! A plaintext callback's `(timestamp, nonce)` vouches for one body only.
//!
//! In WeChat's plaintext mode the signature covers the token, timestamp and nonce, not the body,
//! and that triple appears in every callback URL (access logs, proxies) and stays acceptable for
//! the whole timestamp window. Without more, one leaked URL could carry any number of forged
//! bodies. So the first body seen under a pair is bound to it: [`Nonces::bind`] stores the body's
//! digest under `Keys::nonce` with `SET NX` and compares on later requests. A WeChat retry
//! carries the same message, so an identical body under the same pair is accepted (and then
//! deduplicated as usual); a different one is refused.
//!
//! The binding must outlive the window in which the pair is still accepted; the caller passes
//! that lifetime. The check and the write are one script, so two concurrent requests with
//! different bodies cannot both be "first".

use std::sync::LazyLock;
use std::time::Duration;

use crate::{Store, StoreError};

/// How a body relates to its `(timestamp, nonce)` pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// The pair was unused: it is now bound to this body.
    First,
    /// The pair is bound to this very body (a retry).
    Same,
    /// The pair is bound to another body: this one is not vouched for.
    Different,
}

/// `SET NX EX` of the digest; else compare. Returns 1 (first), 2 (same) or 0 (different).
const BIND: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return 2
end
return 0
";

static BIND_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(BIND));

/// The `(timestamp, nonce)` bindings of plaintext callbacks.
#[derive(Debug, Clone)]
pub struct Nonces {
    store: Store,
}

impl Nonces {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Binds `(timestamp, nonce)` of `tenant` to `body_digest` for `ttl` (rounded up to whole
    /// seconds), or reports what it is already bound to.
    pub async fn bind(
        &self,
        tenant: &str,
        timestamp: &str,
        nonce: &str,
        body_digest: &str,
        ttl: Duration,
    ) -> Result<Binding, StoreError> {
        let key = self.store.keys(tenant).nonce(timestamp, nonce);
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let mut conn = self.store.conn();
        let found: i64 = BIND_SCRIPT
            .key(key)
            .arg(body_digest)
            .arg(secs.max(1))
            .invoke_async(&mut conn)
            .await?;
        Ok(match found {
            1 => Binding::First,
            2 => Binding::Same,
            _ => Binding::Different,
        })
    }
}
