//! The authorization URLs of a component tenant, and the pre-auth code in them: shared for a
//! short window instead of minted per page view.
//!
//! Guarantee: across all replicas, a tenant's pages cost at most one `api_create_preauthcode`
//! per share window, plus one after each authorization that used the shared code; a code is
//! handed out only while at least ¾ of the validity WeChat returned is left, and no longer once
//! wxhub learned that it was used.
//!
//! How it is kept:
//! - The share window is `min(token_control.pre_auth_share_ms, expires_in / 4)`, from the
//!   `expires_in` WeChat returned (the docs disagree between 600 and 1800 s): the page promises
//!   the link lasts about as long as the code has left, so a shared code must still be young.
//! - Minting is single-flight across replicas: the `…:guard:pre-auth-mint` marker (SET NX PX,
//!   `lock_ttl_ms`); the others poll for the code it shares, or mint themselves once the
//!   marker is gone without one (the minter failed or died).
//! - WeChat accepts a pre-auth code for one authorization. The redirect_uri of the links
//!   carries `wxhub_pac=<marker>` (a digest of the code, not the code): `ExchangeAuthCode`
//!   with that marker retires the shared code once the exchange succeeded (not on a refused
//!   code, so a forged redirect cannot make every view mint). The `authorized` /
//!   `updateauthorized` notice carries the code itself (`PreAuthCode`) and retires it too,
//!   whichever arrives first.
//! - The URLs: the PC page (`{mp_base}/cgi-bin/componentloginpage?...`) and the mobile one
//!   (`{mp_base}/safe/bindcomponent?action=bindcomponent&no_scan=1&...#wechat_redirect`, which
//!   requires `auth_type`: both kinds unless the caller named one or a `biz_appid`).
//! - What sharing costs: a visitor who opened the page before another visitor used its code
//!   gets WeChat's "used" page on clicking, and reloads; the window bounds how long that can
//!   happen.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::Digest as _;
use url::Url;
use wxhub_runtime::{Secret, Tenant};
use wxhub_store::{Credentials, PreAuthCodes, SharedPreAuth, Store};

use super::component::{TokenSource, with_component_token};
use super::shared::Shared;
use crate::error::Error;

/// The query parameter of the redirect_uri that names the pre-auth code of the link.
pub const REDIRECT_PARAM: &str = "wxhub_pac";

/// The marker name of the mint lease (`…:guard:pre-auth-mint`).
const MINT_LEASE: &str = "pre-auth-mint";

/// How often a replica waiting for another's mint looks again.
const POLL: Duration = Duration::from_millis(50);

/// The marker of `code`: 16 hex digits of its SHA-256 (names it without revealing it).
pub fn marker(code: &str) -> String {
    hex::encode(&sha2::Sha256::digest(code.as_bytes())[..8])
}

/// Whether `s` has the form of a [`marker`].
pub fn valid_marker(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// How long a code valid for `validity_ms` is shared: at most `configured_ms`, at most a
/// quarter of its validity.
fn share_window(configured_ms: u64, validity_ms: i64) -> Duration {
    let quarter = u64::try_from(validity_ms / 4).unwrap_or(0);
    Duration::from_millis(configured_ms.min(quarter))
}

/// Which accounts the authorization page offers (WeChat's `auth_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    OfficialAccounts,
    MiniPrograms,
    Both,
}

impl AuthType {
    fn as_str(self) -> &'static str {
        match self {
            AuthType::OfficialAccounts => "1",
            AuthType::MiniPrograms => "2",
            AuthType::Both => "3",
        }
    }
}

/// What the authorization page is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer<'a> {
    /// Any account (the mobile page: both kinds).
    Any,
    /// Accounts of this kind.
    Kind(AuthType),
    /// This one account (`biz_appid`).
    Account(&'a str),
}

/// The links of an authorization page.
#[derive(Debug, Clone)]
pub struct AuthorizationUrl {
    pub pc_url: String,
    pub mobile_url: String,
    pub pre_auth_code: Secret,
    pub expires_at_ms: i64,
}

/// The authorization pages' pre-auth codes.
pub(crate) struct PreAuth {
    s: Arc<Shared>,
    codes: PreAuthCodes,
    /// Host of the authorization pages (`wechat.mp_base`), without a trailing `/`.
    mp_base: String,
}

impl PreAuth {
    pub(crate) fn new(s: Arc<Shared>, store: Store, mp_base: &str) -> Self {
        Self {
            s,
            codes: PreAuthCodes::new(store),
            mp_base: mp_base.trim_end_matches('/').to_owned(),
        }
    }

    /// The PC and mobile authorization URLs with the tenant's pre-auth code; `redirect` gets
    /// the code's marker, so the exchange after it can retire the code.
    pub(crate) async fn authorization_url(
        &self,
        tokens: &dyn TokenSource,
        tenant: &Arc<Tenant>,
        redirect: &Url,
        offer: Offer<'_>,
        deadline: Instant,
    ) -> Result<AuthorizationUrl, Error> {
        let code = self.obtain(tokens, tenant, deadline).await?;
        let mut redirect = redirect.clone();
        let kept: Vec<(String, String)> = redirect
            .query_pairs()
            .filter(|(k, _)| k != REDIRECT_PARAM)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        redirect
            .query_pairs_mut()
            .clear()
            .extend_pairs(kept)
            .append_pair(REDIRECT_PARAM, &code.marker);
        let mut pc = url::form_urlencoded::Serializer::new(String::new());
        let mut mobile = url::form_urlencoded::Serializer::new(String::new());
        mobile
            .append_pair("action", "bindcomponent")
            .append_pair("no_scan", "1");
        for params in [&mut pc, &mut mobile] {
            params
                .append_pair("component_appid", &tenant.app_id)
                .append_pair("pre_auth_code", code.code.expose())
                .append_pair("redirect_uri", redirect.as_str());
        }
        match offer {
            Offer::Account(biz) => {
                pc.append_pair("biz_appid", biz);
                mobile.append_pair("biz_appid", biz);
            }
            Offer::Kind(kind) => {
                pc.append_pair("auth_type", kind.as_str());
                mobile.append_pair("auth_type", kind.as_str());
            }
            // The mobile page requires auth_type.
            Offer::Any => {
                mobile.append_pair("auth_type", AuthType::Both.as_str());
            }
        }
        let mp = &self.mp_base;
        Ok(AuthorizationUrl {
            pc_url: format!("{mp}/cgi-bin/componentloginpage?{}", pc.finish()),
            mobile_url: format!(
                "{mp}/safe/bindcomponent?{}#wechat_redirect",
                mobile.finish()
            ),
            pre_auth_code: code.code,
            expires_at_ms: code.expires_at_ms,
        })
    }

    /// A pre-auth code for `tenant`'s pages: the shared one, or a new one (then shared).
    async fn obtain(
        &self,
        tokens: &dyn TokenSource,
        tenant: &Arc<Tenant>,
        deadline: Instant,
    ) -> Result<SharedPreAuth, Error> {
        let configured = self.s.cfg.pre_auth_share_ms;
        if configured == 0 {
            return self.mint(tokens, tenant, deadline).await;
        }
        let creds: &Credentials = &self.s.creds;
        let owner = format!("{:016x}", rand::random::<u64>());
        loop {
            if let Some(code) = self.codes.shared(tenant.id.as_str()).await?
                && code.expires_at_ms > self.s.now_ms()
            {
                metrics::counter!("wxhub_pre_auth_codes_total", "tenant" => tenant.id.to_string(), "source" => "shared")
                    .increment(1);
                return Ok(code);
            }
            let lease = self.s.cfg.lock_ttl();
            if creds
                .mark(tenant.id.as_str(), MINT_LEASE, &owner, lease, true)
                .await?
            {
                // Another replica may have shared one between our read and the lease.
                let result = match self.codes.shared(tenant.id.as_str()).await? {
                    Some(code) if code.expires_at_ms > self.s.now_ms() => Ok(code),
                    _ => {
                        self.mint_and_share(tokens, tenant, configured, deadline)
                            .await
                    }
                };
                let _ = creds
                    .clear_marker(tenant.id.as_str(), MINT_LEASE, &owner)
                    .await;
                return result;
            }
            if Instant::now() + POLL >= deadline {
                return Err(Error::Deadline(
                    "deadline exceeded while another replica was creating the pre-auth code",
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn mint_and_share(
        &self,
        tokens: &dyn TokenSource,
        tenant: &Arc<Tenant>,
        configured_ms: u64,
        deadline: Instant,
    ) -> Result<SharedPreAuth, Error> {
        let code = self.mint(tokens, tenant, deadline).await?;
        let window = share_window(configured_ms, code.expires_at_ms - self.s.now_ms());
        if !window.is_zero()
            && let Err(e) = self.codes.share(tenant.id.as_str(), &code, window).await
        {
            // The code is good for this page; the next view mints again.
            tracing::warn!(tenant = %tenant.id, error = %e, "cannot share the pre-auth code");
        }
        Ok(code)
    }

    /// Asks WeChat for a new pre-auth code.
    async fn mint(
        &self,
        tokens: &dyn TokenSource,
        tenant: &Arc<Tenant>,
        deadline: Instant,
    ) -> Result<SharedPreAuth, Error> {
        let started = self.s.now_ms();
        let api = self.s.api.until(deadline);
        let code = with_component_token(tokens, tenant, deadline, |token| {
            let api = &api;
            async move {
                api.create_preauthcode(&token, &tenant.app_id)
                    .await
                    .map_err(|e| Error::wechat("creating a pre-auth code", e))
            }
        })
        .await?;
        metrics::counter!("wxhub_pre_auth_codes_total", "tenant" => tenant.id.to_string(), "source" => "minted")
            .increment(1);
        Ok(SharedPreAuth {
            marker: marker(code.code.expose()),
            expires_at_ms: started + i64::try_from(code.expires_in).unwrap_or(600) * 1000,
            code: code.code,
        })
    }

    /// Stops sharing the code named by `marker` (best effort: the share window bounds a
    /// failure); `why`: who learned it was used.
    pub(crate) async fn retire(&self, tenant: &Tenant, marker: &str, why: &'static str) {
        match self.codes.retire(tenant.id.as_str(), marker).await {
            Ok(true) => {
                tracing::info!(tenant = %tenant.id, why, "shared pre-auth code used; retired")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(tenant = %tenant.id, why, error = %e, "cannot retire the used pre-auth code");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_name_codes_without_revealing_them() {
        let m = marker("preauthcode@@@abc");
        assert!(valid_marker(&m), "{m}");
        assert_eq!(m, marker("preauthcode@@@abc"));
        assert_ne!(m, marker("preauthcode@@@abd"));
        assert!(!m.contains("abc"));
        for bad in [
            "",
            "0123456789abcde",
            "0123456789ABCDEF",
            "0123456789abcdefg",
        ] {
            assert!(!valid_marker(bad), "{bad}");
        }
    }

    #[test]
    fn a_code_is_shared_for_at_most_a_quarter_of_its_life() {
        assert_eq!(share_window(60_000, 600_000), Duration::from_secs(60));
        assert_eq!(share_window(60_000, 1_800_000), Duration::from_secs(60));
        assert_eq!(share_window(600_000, 600_000), Duration::from_secs(150));
        assert_eq!(share_window(60_000, 40_000), Duration::from_secs(10));
        assert_eq!(share_window(60_000, -5), Duration::ZERO);
    }
}
