//! The pre-auth code of the authorization pages: shared for a short window instead of minted
//! per page view.
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
//! - What sharing costs: a visitor who opened the page before another visitor used its code
//!   gets WeChat's "used" page on clicking, and reloads; the window bounds how long that can
//!   happen.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::Digest as _;
use wxhub_runtime::Tenant;
use wxhub_store::{PreAuthCodes, SharedPreAuth};
use wxhub_wechat_api::ErrorClass;

use crate::engine::{Credential, Engine};
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

/// A pre-auth code for `tenant`'s pages: the shared one, or a new one (then shared).
pub(crate) async fn obtain(
    engine: &Arc<Engine>,
    tenant: &Tenant,
    deadline: Instant,
) -> Result<SharedPreAuth, Error> {
    let tid = tenant.id.as_str();
    let configured = engine.config().pre_auth_share_ms;
    if configured == 0 {
        return mint(engine, tenant, deadline).await;
    }
    let codes = PreAuthCodes::new(engine.credentials().store().clone());
    let creds = engine.credentials();
    let owner = format!("{:016x}", rand::random::<u64>());
    loop {
        if let Some(code) = codes.shared(tid).await?
            && code.expires_at_ms > engine.now_ms()
        {
            metrics::counter!("wxhub_pre_auth_codes_total", "tenant" => tid.to_owned(), "source" => "shared")
                .increment(1);
            return Ok(code);
        }
        let lease = engine.config().lock_ttl();
        if creds.mark(tid, MINT_LEASE, &owner, lease, true).await? {
            // Another replica may have shared one between our read and the lease.
            let result = match codes.shared(tid).await? {
                Some(code) if code.expires_at_ms > engine.now_ms() => Ok(code),
                _ => mint_and_share(engine, &codes, tenant, configured, deadline).await,
            };
            let _ = creds.clear_marker(tid, MINT_LEASE, &owner).await;
            return result;
        }
        if Instant::now() + POLL >= deadline {
            return Err(Error::deadline(
                "deadline exceeded while another replica was creating the pre-auth code",
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn mint_and_share(
    engine: &Arc<Engine>,
    codes: &PreAuthCodes,
    tenant: &Tenant,
    configured_ms: u64,
    deadline: Instant,
) -> Result<SharedPreAuth, Error> {
    let code = mint(engine, tenant, deadline).await?;
    let window = share_window(configured_ms, code.expires_at_ms - engine.now_ms());
    if !window.is_zero()
        && let Err(e) = codes.share(tenant.id.as_str(), &code, window).await
    {
        // The code is good for this page; the next view mints again.
        tracing::warn!(tenant = %tenant.id, error = %e, "cannot share the pre-auth code");
    }
    Ok(code)
}

/// Asks WeChat for a new pre-auth code (retrying once on a rejected component token).
async fn mint(
    engine: &Arc<Engine>,
    tenant: &Tenant,
    deadline: Instant,
) -> Result<SharedPreAuth, Error> {
    let tid = tenant.id.as_str();
    let mut retried = false;
    let started = engine.now_ms();
    let code = loop {
        let ct = engine
            .get_token(tid, &Credential::Component, 60_000, deadline)
            .await?;
        match engine
            .api()
            .until(deadline)
            .create_preauthcode(&ct.value, &tenant.app_id)
            .await
        {
            Ok(code) => break code,
            Err(e) if e.class() == ErrorClass::Token && !retried => {
                retried = true;
                engine
                    .invalidate(tid, &Credential::Component, ct.value.expose(), deadline)
                    .await?;
            }
            Err(e) => return Err(Error::wechat("creating a pre-auth code", &e)),
        }
    };
    metrics::counter!("wxhub_pre_auth_codes_total", "tenant" => tid.to_owned(), "source" => "minted")
        .increment(1);
    Ok(SharedPreAuth {
        marker: marker(code.code.expose()),
        expires_at_ms: started + i64::try_from(code.expires_in).unwrap_or(600) * 1000,
        code: code.code,
    })
}

/// Stops sharing the code named by `marker` (best effort: the share window bounds a failure).
pub(crate) async fn retire(engine: &Engine, tenant: &str, marker: &str, why: &'static str) {
    let codes = PreAuthCodes::new(engine.credentials().store().clone());
    match codes.retire(tenant, marker).await {
        Ok(true) => tracing::info!(tenant, why, "shared pre-auth code used; retired"),
        Ok(false) => {}
        Err(e) => tracing::warn!(tenant, why, error = %e, "cannot retire the used pre-auth code"),
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
