//! The fate of an authorization code, shared by the two paths that exchange one (the redirect
//! after authorization and the `authorized` notice) and by every replica.
//!
//! Guarantee: a code is exchanged with WeChat by one caller at a time; once exchanged, the other
//! path is answered from that exchange and the same path presenting it again is told it was
//! used; once WeChat refused it, it is refused again without asking WeChat. Both outcomes are
//! remembered for `memory_ttl` (longer than any code lives).
//!
//! How: one marker per code at `Keys::auth_code` (named by a digest of the code, never the code
//! itself), shaped like the callback dedupe marker (`crate::dedupe`):
//!
//! - `pending:{by}`, `PX pending_ttl`: the caller `by` (a path label) is exchanging it; taken
//!   with `SET NX`, so one caller wins. A caller that dies leaves it to expire.
//! - `done:{by}:{appid}`, `PX memory_ttl`: exchanged by `by`, for the authorizer `appid`.
//! - `refused:{reason}`, `PX memory_ttl`: WeChat refused it (61009/61010); `reason` is the
//!   sanitised message the caller answers with.
//!
//! These are the values earlier versions wrote, so a rolling upgrade reads the markers of the
//! old replicas and the other way round.

use std::time::Duration;

use crate::credentials::RELEASE;
use crate::{Store, StoreError, px};

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeClaim {
    /// This caller holds the code: exchange it, then [`AuthCodes::complete`],
    /// [`AuthCodes::refuse`] or [`AuthCodes::release`].
    Fresh,
    /// Another caller is exchanging it now (or its claim just expired): look again shortly.
    InFlight,
    /// Exchanged by the caller labelled `by`, for the authorizer `appid`.
    Done { by: String, appid: String },
    /// WeChat refused it, for `reason`.
    Refused { reason: String },
}

const PENDING: &str = "pending:";
const DONE: &str = "done:";
const REFUSED: &str = "refused:";

impl CodeClaim {
    /// A marker's value as a claim (anything else is a claim in flight).
    fn parse(value: &str) -> Self {
        if let Some(rest) = value.strip_prefix(DONE) {
            let (by, appid) = rest.split_once(':').unwrap_or((rest, ""));
            CodeClaim::Done {
                by: by.to_owned(),
                appid: appid.to_owned(),
            }
        } else if let Some(reason) = value.strip_prefix(REFUSED) {
            CodeClaim::Refused {
                reason: reason.to_owned(),
            }
        } else {
            CodeClaim::InFlight
        }
    }
}

/// Authorization-code claims of one namespace, with their lifetimes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuthCodes {
    store: Store,
    pending_ttl: Duration,
    memory_ttl: Duration,
}

impl AuthCodes {
    /// `pending_ttl` bounds how long a crashed exchange blocks the code (keep it just above the
    /// exchange's deadline); `memory_ttl` must outlast the code itself.
    pub fn new(store: Store, pending_ttl: Duration, memory_ttl: Duration) -> Self {
        Self {
            store,
            pending_ttl,
            memory_ttl,
        }
    }

    /// Tries to take the code named by `digest` for the caller labelled `by`.
    pub async fn claim(
        &self,
        tenant: &str,
        digest: &str,
        by: &str,
    ) -> Result<CodeClaim, StoreError> {
        let key = self.store.keys(tenant).auth_code(digest);
        let mut conn = self.store.conn();
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(format!("{PENDING}{by}"))
            .arg("PX")
            .arg(px(self.pending_ttl))
            .arg("NX")
            .query_async(&mut conn)
            .await?;
        if set.is_some() {
            return Ok(CodeClaim::Fresh);
        }
        let current: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        // Gone between SET and GET (expired): in flight until the caller claims again.
        Ok(current
            .as_deref()
            .map_or(CodeClaim::InFlight, CodeClaim::parse))
    }

    /// Records that `by` exchanged the code, for the authorizer `appid`.
    pub async fn complete(
        &self,
        tenant: &str,
        digest: &str,
        by: &str,
        appid: &str,
    ) -> Result<(), StoreError> {
        self.remember(tenant, digest, &format!("{DONE}{by}:{appid}"))
            .await
    }

    /// Records that WeChat refused the code, for `reason` (a message without secrets).
    pub async fn refuse(&self, tenant: &str, digest: &str, reason: &str) -> Result<(), StoreError> {
        self.remember(tenant, digest, &format!("{REFUSED}{reason}"))
            .await
    }

    /// Gives the code back after an exchange that failed for another reason than the code
    /// (Redis, WeChat down), if `by` still holds it: a later attempt may succeed.
    pub async fn release(&self, tenant: &str, digest: &str, by: &str) -> Result<(), StoreError> {
        let key = self.store.keys(tenant).auth_code(digest);
        let mut conn = self.store.conn();
        let _: i64 = RELEASE
            .key(key)
            .arg(format!("{PENDING}{by}"))
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn remember(&self, tenant: &str, digest: &str, value: &str) -> Result<(), StoreError> {
        let key = self.store.keys(tenant).auth_code(digest);
        let mut conn = self.store.conn();
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(value)
            .arg("PX")
            .arg(px(self.memory_ttl))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_parse_into_claims() {
        assert_eq!(
            CodeClaim::parse("done:redirect:wx123"),
            CodeClaim::Done {
                by: "redirect".into(),
                appid: "wx123".into()
            }
        );
        assert_eq!(
            CodeClaim::parse("refused:the authorization code is invalid (errcode 61009)"),
            CodeClaim::Refused {
                reason: "the authorization code is invalid (errcode 61009)".into()
            }
        );
        assert_eq!(CodeClaim::parse("pending:event"), CodeClaim::InFlight);
        assert_eq!(CodeClaim::parse("garbage"), CodeClaim::InFlight);
        assert_eq!(
            CodeClaim::parse("done:event"),
            CodeClaim::Done {
                by: "event".into(),
                appid: String::new()
            }
        );
    }
}
