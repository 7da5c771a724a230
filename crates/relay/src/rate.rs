//! The per-(authorizer, path) rate limit — a hook, not yet a limit.
//!
//! The limit belongs in the one Redis-side GCRA limiter the messaging service shares
//! (`wxhub_store::limiter`, being reworked on the messaging branch); the relay must not grow a
//! second one. Until that lands, [`admit`] admits every call. When it does, this is the only
//! place to change: take one unit from the bucket `relay:{appid}:{family}` of the tenant (and a
//! per-tenant one), and refuse with 429 and `Retry-After` past either — refused calls are never
//! forwarded, like every other refusal.

use crate::Shared;
use crate::access::{Refusal, Target};

/// Whether the call may go now. Today: always (see the module docs).
pub(crate) async fn admit(
    _shared: &Shared,
    _tenant: &str,
    _target: &Target,
    _family: &'static str,
) -> Result<(), Refusal> {
    Ok(())
}
