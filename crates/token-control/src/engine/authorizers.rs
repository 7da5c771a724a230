//! Authorizer records of a component tenant, as the engine reads and changes them: the record a
//! token refresh needs (known and authorized), revocation, the profile, and the pages of the
//! listing.
//!
//! Guarantee: a revoked authorizer gets no token: a read or refresh of one is refused with
//! [`Error::Revoked`], and revoking drops its stored tokens and schedule entries (one store
//! script) and forgets what this replica cached or holds of them. An appid the store does not
//! know is looked up again after a re-list before it is answered unknown (see
//! `Recovery::find_authorizer`).

use std::sync::Arc;
use std::time::Instant;

use wxhub_runtime::Tenant;
use wxhub_store::AuthorizerRecord;
use wxhub_store::authorizers::Profile;

use super::component::{TokenSource, with_component_token};
use super::recovery::Recovery;
use super::shared::Shared;
use crate::error::Error;

/// One page of the authorizer listing.
#[derive(Debug, Clone)]
pub struct AuthorizerPage {
    pub authorizers: Vec<AuthorizerRecord>,
    /// The appid to continue after, when there are more.
    pub next: Option<String>,
    pub total: u64,
}

/// The authorizer records.
pub(crate) struct AuthorizerRecords {
    s: Arc<Shared>,
    recovery: Arc<Recovery>,
}

impl AuthorizerRecords {
    pub(crate) fn new(s: Arc<Shared>, recovery: Arc<Recovery>) -> Self {
        Self { s, recovery }
    }

    /// The record of `appid` if it is known and authorized.
    pub(crate) async fn active(
        &self,
        tokens: &dyn TokenSource,
        tenant: &Arc<Tenant>,
        appid: &str,
    ) -> Result<AuthorizerRecord, Error> {
        let record = self
            .recovery
            .find_authorizer(tokens, tenant, appid)
            .await?
            .ok_or_else(|| Error::UnknownAuthorizer(appid.to_owned()))?;
        if record.status == wxhub_store::AuthorizerStatus::Revoked {
            return Err(Error::Revoked {
                appid: appid.to_owned(),
                reason: record.revoked_reason,
            });
        }
        Ok(record)
    }

    /// The stored record of `appid`, whatever its status.
    pub(crate) async fn record(
        &self,
        tenant: &Tenant,
        appid: &str,
    ) -> Result<AuthorizerRecord, Error> {
        self.s
            .auths
            .get(tenant.id.as_str(), appid)
            .await?
            .ok_or_else(|| Error::UnknownAuthorizer(appid.to_owned()))
    }

    /// Up to `size` records after `after`, in appid order, with the total.
    pub(crate) async fn page(
        &self,
        tenant: &Tenant,
        after: Option<&str>,
        size: usize,
    ) -> Result<AuthorizerPage, Error> {
        let (authorizers, next) = self.s.auths.list(tenant.id.as_str(), after, size).await?;
        let total = self.s.auths.count(tenant.id.as_str()).await?;
        Ok(AuthorizerPage {
            authorizers,
            next,
            total,
        })
    }

    /// Marks `appid` revoked by an event at `event_ms` (unless a newer event says otherwise),
    /// dropping its tokens; returns whether that changed anything. What this replica cached or
    /// holds of its tokens is forgotten in any case.
    pub(crate) async fn revoke(
        &self,
        tenant: &Tenant,
        appid: &str,
        event_ms: i64,
        reason: &str,
    ) -> Result<bool, Error> {
        let revoked = self
            .s
            .auths
            .revoke(tenant.id.as_str(), appid, event_ms, self.s.now_ms(), reason)
            .await;
        self.s.forget_authorizer(tenant.id.as_str(), appid);
        Ok(revoked?)
    }

    /// Best effort: stores the account's profile from `api_get_authorizer_info` (for pages and
    /// listings; a failure leaves the previous one).
    pub(crate) async fn refresh_profile(
        &self,
        tokens: &dyn TokenSource,
        tenant: &Arc<Tenant>,
        appid: &str,
        deadline: Instant,
    ) {
        let api = self.s.api.until(deadline);
        let info = with_component_token(tokens, tenant, deadline, |token| {
            let api = &api;
            async move {
                api.get_authorizer_info(&token, &tenant.app_id, appid)
                    .await
                    .map_err(|e| Error::wechat("reading the authorizer's profile", e))
            }
        })
        .await;
        let Ok(info) = info else { return };
        let profile = Profile {
            nick_name: info.nick_name,
            user_name: info.user_name,
            principal_name: info.principal_name,
            head_img: info.head_img,
            service_type: info.service_type,
            verify_type: info.verify_type,
            is_mini_program: info.is_mini_program,
        };
        let _ = self
            .s
            .auths
            .set_profile(tenant.id.as_str(), appid, &profile)
            .await;
    }
}
