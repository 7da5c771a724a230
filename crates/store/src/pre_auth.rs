//! The pre-auth code a component tenant's authorization pages share.
//!
//! Guarantee: a shared code is served only inside its share window (the key's expiry, well
//! inside the code's validity) and never after [`PreAuthCodes::retire`] was called with its
//! marker. WeChat lets a pre-auth code complete one authorization; whoever learns that it was
//! used (the redirect carries its marker, the `authorized` notice carries the code) retires it,
//! and the next page view gets a new one.
//!
//! How it is kept: one hash per tenant at `Keys::pre_auth` holds the code, its marker and its
//! expiry, written with its expiry in one `MULTI`; retiring is a compare-and-delete on the
//! marker (a Lua script), so a retire that arrives late never removes a newer code.

use std::sync::LazyLock;
use std::time::Duration;

use wxhub_domain::Secret;

use crate::{Store, StoreError};

/// A pre-auth code as the pages share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedPreAuth {
    /// The code (it goes into the page's links; not logged).
    pub code: Secret,
    /// A short digest of the code that the redirect carries back (not the code itself).
    pub marker: String,
    /// When WeChat stops accepting it (ms).
    pub expires_at_ms: i64,
}

/// Compare-and-delete on the marker.
const RETIRE: &str = r"
if redis.call('HGET', KEYS[1], 'm') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

static RETIRE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RETIRE));

/// The shared pre-auth codes of one namespace. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PreAuthCodes {
    store: Store,
}

impl PreAuthCodes {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The code currently shared for `tenant`, if any.
    pub async fn shared(&self, tenant: &str) -> Result<Option<SharedPreAuth>, StoreError> {
        let key = self.store.keys(tenant).pre_auth();
        let mut conn = self.store.conn();
        let (code, marker, exp): (Option<String>, Option<String>, Option<String>) =
            redis::cmd("HMGET")
                .arg(&key)
                .arg("v")
                .arg("m")
                .arg("exp")
                .query_async(&mut conn)
                .await?;
        let (Some(code), Some(marker), Some(exp)) = (code, marker, exp) else {
            return Ok(None);
        };
        let expires_at_ms = exp.parse().map_err(|_| StoreError::Corrupt {
            key: key.clone(),
            reason: "exp is not a number".into(),
        })?;
        Ok(Some(SharedPreAuth {
            code: Secret::new(code),
            marker,
            expires_at_ms,
        }))
    }

    /// Shares `code` for `window` (replacing whatever was shared).
    pub async fn share(
        &self,
        tenant: &str,
        code: &SharedPreAuth,
        window: Duration,
    ) -> Result<(), StoreError> {
        let key = self.store.keys(tenant).pre_auth();
        let mut conn = self.store.conn();
        let ttl = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let () = redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(&key)
            .ignore()
            .cmd("HSET")
            .arg(&key)
            .arg("v")
            .arg(code.code.expose())
            .arg("m")
            .arg(&code.marker)
            .arg("exp")
            .arg(code.expires_at_ms)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Stops sharing the code whose marker is `marker` (if it is still the shared one);
    /// returns whether it was.
    pub async fn retire(&self, tenant: &str, marker: &str) -> Result<bool, StoreError> {
        let key = self.store.keys(tenant).pre_auth();
        let mut conn = self.store.conn();
        let n: i64 = RETIRE_SCRIPT
            .key(key)
            .arg(marker)
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }
}
