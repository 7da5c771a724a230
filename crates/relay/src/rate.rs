//! The per-(account, WeChat path) rate limit of relayed calls.
//!
//! Guarantee: across every relay replica, calls of one account to one WeChat path are admitted
//! at most at `relay.rate_limit` (default 600 a minute, bursts of 100), plus at most
//! `R × (lease + ⌊lease/4⌋)` in any interval across `R` replicas (`lease`:
//! `relay.rate_limit_lease`, at most a quarter of the burst); a call past it is refused with 429 before anything is sent to
//! WeChat, and a refused call takes nothing from the bucket. Why a limit at all: one runaway
//! internal client must not spend an account's WeChat quota (45009 ends a path's day for every
//! system of that account) or trip WeChat's minute limits (45011) for the others.
//!
//! It is the one Redis-side GCRA limiter every service shares, with the bucket
//! `relay:{appid}:{path}` under the tenant's hash tag (`own` for the tenant's own account),
//! through [`wxhub_store::LeasedLimiter`]: a replica busy with one bucket takes a few units in
//! one Redis call and spends them on its next calls, so a hot path costs a Redis script per
//! lease, not per call. When Redis cannot be asked, the call goes on unmetered (logged and
//! counted in `wxhub_relay_unmetered_total`): relayed calls do not need Redis otherwise, and
//! WeChat's own quotas still bound them.

use axum::http::StatusCode;
use wxhub_store::Admission;

use crate::Shared;
use crate::access::{Credential, Refusal, Target};

/// Whether the call of `tenant` to `path` for `target` may go now.
pub(crate) async fn admit(
    shared: &Shared,
    tenant: &str,
    target: &Target,
    path: &str,
) -> Result<(), Refusal> {
    let appid = match &target.credential {
        Credential::Own => "own",
        Credential::Authorizer(appid) | Credential::ComponentFor(appid) => appid.as_str(),
    };
    let subject = format!("relay:{appid}:{path}");
    let rate = shared.config.relay.rate_limit;
    match shared.limits.acquire(tenant, &subject, rate).await {
        Ok(Admission::Admitted) => Ok(()),
        Ok(Admission::Limited { retry_after }) => Err(Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "over relay.rate_limit ({} per {} ms) for {appid} {path}; retry in {} ms",
                rate.count,
                rate.period_ms,
                retry_after.as_millis().max(1)
            ),
        )),
        Ok(Admission::Unchecked) => {
            metrics::counter!("wxhub_relay_unmetered_total").increment(1);
            Ok(())
        }
        Err(e) => {
            metrics::counter!("wxhub_relay_unmetered_total").increment(1);
            tracing::warn!(tenant, error = %e, "rate limit not checked (Redis); the call goes on");
            Ok(())
        }
    }
}
