//! Tokens: the read path and the refresh of every credential (design §6; reliability.md P1–P5,
//! P7, P8).
//!
//! Guarantee: a caller is served a token that satisfies its need, from the cache or Redis when
//! one does (including the old token while another replica refreshes it), else from one
//! refresh: single-flight in this replica, one lease holder across replicas, and a write that
//! never replaces a newer token. How:
//!
//! 1. **Reads** come from the in-process cache, else Redis (`recovery` restores what a store
//!    that lost its state no longer has). A token satisfies a caller when it is not rejected,
//!    has not expired, and either is not due yet (whatever life the caller asked for: the
//!    window that bounds upstream calls to one) or has the caller's minimum left.
//! 2. **Single-flight**: callers with the same need share one refresh, in a task of its own.
//! 3. **Lease**: `SET NX PX`, random owner, fence from the tenant's counter. Under the lease the
//!    need is checked again, WeChat is called (`fetch`, bounded by the caller's deadline; it
//!    checks the lease once more right before each call), and the result is stored by the
//!    fenced write (`write`), which refuses the token of a holder whose lease was taken over or
//!    whose fence is older. The lease is released by compare-and-delete.
//! 4. **Replacement**: a token reported rejected is marked so only if it still is the stored
//!    value (compare); one refresh replaces it.
//! 5. **Failures**: transient ones retry with backoff within the deadline (proactive ones come
//!    back with the schedule's claim).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use wxhub_runtime::Tenant;
use wxhub_store::{Lease, TokenRecord};

use super::authorizers::AuthorizerRecords;
use super::component::{CALL_MIN_REMAINING_MS, TokenSource};
use super::credential::{Credential, Token};
use super::fetch::Fetch;
use super::flight::SingleFlight;
use super::recovery::Recovery;
use super::shared::Shared;
use super::write::Writer;
use crate::error::Error;

/// Why a refresh runs (and when it is unnecessary).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Need {
    /// A caller needs at least this many ms of life.
    Demand(i64),
    /// The schedule says it is due; done if someone refreshed it meanwhile.
    Proactive,
    /// A client reported this value rejected.
    Replace(String),
}

impl Need {
    fn trigger(&self) -> &'static str {
        match self {
            Need::Demand(_) => "demand",
            Need::Proactive => "proactive",
            Need::Replace(_) => "invalidate",
        }
    }

    /// The stored token if it already satisfies this need.
    ///
    /// Until its due time a valid token satisfies any demand, whatever life the caller asked
    /// for: WeChat was asked for it no longer than one refresh window ago, and asking again
    /// would return the same lifetime (a short `expires_in`) or the same token (stable_token's
    /// normal mode), so a shortfall would become a refresh on every read. Past the due time
    /// the caller's minimum applies, so a late schedule is made up by the first read.
    fn satisfied(&self, stored: Option<&TokenRecord>, now_ms: i64) -> Option<Token> {
        let t = stored.filter(|t| !t.rejected)?;
        let ok = match self {
            Need::Demand(min) => {
                let left = t.remaining_ms(now_ms);
                left > 0 && (left >= *min || now_ms < t.due_ms)
            }
            // Not due yet: another replica refreshed it.
            Need::Proactive => now_ms < t.due_ms,
            Need::Replace(rejected) => {
                t.value.expose() != rejected.as_str() && t.remaining_ms(now_ms) > 0
            }
        };
        ok.then(|| Token::from(t))
    }
}

/// Callers with the same key share one refresh.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FlightKey {
    tenant: String,
    cred: Credential,
    need: Need,
}

/// The tokens of every tenant.
pub(crate) struct Tokens {
    s: Arc<Shared>,
    recovery: Arc<Recovery>,
    authorizers: Arc<AuthorizerRecords>,
    fetch: Fetch,
    writer: Arc<Writer>,
    flights: SingleFlight<FlightKey, Result<Token, Error>>,
}

impl Tokens {
    pub(crate) fn new(
        s: Arc<Shared>,
        recovery: Arc<Recovery>,
        authorizers: Arc<AuthorizerRecords>,
        fetch: Fetch,
        writer: Arc<Writer>,
    ) -> Self {
        Self {
            s,
            recovery,
            authorizers,
            fetch,
            writer,
            flights: SingleFlight::new(|e| {
                Err(Error::Internal(format!("refresh task failed: {e}")))
            }),
        }
    }

    /// A token of `cred` with at least `min_remaining_ms` of life (or, before its due time,
    /// any life left), refreshing if needed.
    pub(crate) async fn read_or_refresh(
        self: &Arc<Self>,
        tenant: &Arc<Tenant>,
        cred: &Credential,
        min_remaining_ms: i64,
        deadline: Instant,
    ) -> Result<Token, Error> {
        let need = Need::Demand(min_remaining_ms);
        let now = self.s.now_ms();
        let cached = self.s.cache.cached(tenant.id.as_str(), cred, |record| {
            need.satisfied(Some(record), now)
        });
        if let Some(t) = cached {
            metrics::counter!("wxhub_token_reads_total", "source" => "cache").increment(1);
            return Ok(t);
        }
        let stored = self
            .recovery
            .read_or_restore(self, tenant, cred, deadline)
            .await?;
        if let Some(t) = need.satisfied(stored.as_ref(), now) {
            metrics::counter!("wxhub_token_reads_total", "source" => "redis").increment(1);
            return Ok(t);
        }
        metrics::counter!("wxhub_token_reads_total", "source" => "refresh").increment(1);
        for _ in 0..3 {
            let result = self.flight(tenant, cred, &need, deadline).await?;
            // The flight's answer satisfied this need under the lease: fresh from WeChat
            // (whatever lifetime WeChat gave it) or refreshed within its window. Asking again
            // for more life would only repeat the call, so it is served while valid; only a
            // token that expired meanwhile (WeChat's answer in a token's last second) is
            // asked for again.
            if result.expires_at_ms > self.s.now_ms() {
                return Ok(result);
            }
        }
        Err(Error::Unavailable(
            "could not obtain a token that has not expired yet",
        ))
    }

    /// WeChat rejected `rejected`: refresh once if it is still the stored token, otherwise
    /// return the current one.
    pub(crate) async fn replace(
        self: &Arc<Self>,
        tenant: &Arc<Tenant>,
        cred: &Credential,
        rejected: &str,
        deadline: Instant,
    ) -> Result<Token, Error> {
        let name = cred.name();
        let matched = self
            .s
            .creds
            .invalidate(tenant.id.as_str(), &name, rejected, self.s.now_ms())
            .await?;
        self.s.cache.evict(tenant.id.as_str(), cred);
        self.s
            .memory
            .forget(tenant.id.as_str(), &name, Some(rejected));
        metrics::counter!("wxhub_token_invalidations_total", "credential" => cred.kind(), "matched" => if matched { "yes" } else { "no" })
            .increment(1);
        let need = Need::Replace(rejected.to_owned());
        self.flight(tenant, cred, &need, deadline).await
    }

    /// The schedule's refresh of `cred`: nothing to do when another replica refreshed it
    /// meanwhile (or holds the lease now).
    pub(crate) async fn refresh_due(
        self: &Arc<Self>,
        tenant: &Arc<Tenant>,
        cred: &Credential,
        deadline: Instant,
    ) -> Result<Token, Error> {
        self.flight(tenant, cred, &Need::Proactive, deadline).await
    }

    /// Joins (or starts) this replica's refresh for `need`.
    async fn flight(
        self: &Arc<Self>,
        tenant: &Arc<Tenant>,
        cred: &Credential,
        need: &Need,
        deadline: Instant,
    ) -> Result<Token, Error> {
        let key = FlightKey {
            tenant: tenant.id.to_string(),
            cred: cred.clone(),
            need: need.clone(),
        };
        loop {
            let work = Arc::clone(self).refresh_owned(Arc::clone(tenant), key.clone(), deadline);
            match self.flights.join(&key, deadline, work).await {
                None => return Err(Error::Deadline("deadline exceeded waiting for a refresh")),
                // A flight started by a caller with a shorter deadline may have given up; retry
                // with ours.
                Some(Err(Error::Deadline(_))) if Instant::now() < deadline => continue,
                Some(answer) => return answer,
            }
        }
    }

    /// [`Tokens::refresh`] as the future of a flight's task, owning what it uses.
    fn refresh_owned(
        self: Arc<Self>,
        tenant: Arc<Tenant>,
        key: FlightKey,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<Token, Error>> {
        async move { self.refresh(&tenant, &key.cred, &key.need, deadline).await }.boxed()
    }

    /// Takes the lease (waiting for another holder), refreshes under it, releases it; retries
    /// transient failures with backoff within the deadline.
    async fn refresh(
        self: &Arc<Self>,
        tenant: &Arc<Tenant>,
        cred: &Credential,
        need: &Need,
        deadline: Instant,
    ) -> Result<Token, Error> {
        let name = cred.name();
        let mut transient_retries = 0u32;
        let mut checked = false;
        loop {
            if Instant::now() >= deadline {
                return Err(Error::Deadline(
                    "deadline exceeded before the token was refreshed",
                ));
            }
            let stored = self.s.read_token(tenant.id.as_str(), cred).await?;
            if let Some(t) = need.satisfied(stored.as_ref(), self.s.now_ms()) {
                return Ok(t);
            }
            // An unknown authorizer is refused before any lease or fence is taken (a stored
            // token proves it was known; the fenced write refuses a revoked one).
            if !checked && stored.is_none() {
                if let Some(appid) = cred.authorizer() {
                    self.authorizers.active(self, tenant, appid).await?;
                }
                checked = true;
            }
            let Some(lease) = self.writer.lease(tenant, &name).await? else {
                if *need == Need::Proactive {
                    // Another replica refreshes it; nothing to do here.
                    return stored
                        .as_ref()
                        .map(Token::from)
                        .ok_or(Error::Unavailable("being refreshed elsewhere"));
                }
                let wait = Duration::from_millis(25)
                    .min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(wait).await;
                continue;
            };
            let result = self.leased(tenant, cred, need, &lease, deadline).await;
            self.writer.release(&lease).await;
            let label = match &result {
                Ok(Some(_)) => "ok",
                Ok(None) => "superseded",
                Err(e) => e.code().as_str(),
            };
            metrics::counter!("wxhub_token_refresh_total", "credential" => cred.kind(), "trigger" => need.trigger(), "result" => label)
                .increment(1);
            match result {
                Ok(Some(token)) => return Ok(token),
                // A newer token was written meanwhile: read it.
                Ok(None) => continue,
                Err(e)
                    if e.code() == wxhub_runtime::ErrorCode::Unavailable
                        && transient_retries < 3
                        && *need != Need::Proactive =>
                {
                    transient_retries += 1;
                    let backoff = Duration::from_millis(100 * 2u64.pow(transient_retries));
                    if Instant::now() + backoff >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Under the lease: check again, call WeChat, write fenced. `Ok(None)` when the lease was
    /// lost before the call or the write was refused because a newer token exists.
    async fn leased(
        self: &Arc<Self>,
        tenant: &Arc<Tenant>,
        cred: &Credential,
        need: &Need,
        lease: &Lease,
        deadline: Instant,
    ) -> Result<Option<Token>, Error> {
        let stored = self.s.read_token(tenant.id.as_str(), cred).await?;
        let mut started = self.s.now_ms();
        if let Some(t) = need.satisfied(stored.as_ref(), started) {
            return Ok(Some(t));
        }
        // Expired before its due time: WeChat answered with the token it had already issued
        // (stable_token's normal mode) and issues another only once that one has expired on
        // its side, up to a second after ours (it rounds `expires_in` down). Wait for the due
        // time rather than ask early and get the same token back.
        if let Some(t) = stored
            .as_ref()
            .filter(|t| !t.rejected && started < t.due_ms)
            && matches!(need, Need::Demand(_))
        {
            let wait = Duration::from_millis(u64::try_from(t.due_ms - started).unwrap_or(0));
            tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now()))).await;
            started = self.s.now_ms();
        }
        let timer = Instant::now();
        // A token reported rejected must not come back from stable_token's normal mode.
        let rejected = match need {
            Need::Replace(r) => Some(r.as_str()),
            _ => None,
        }
        .or_else(|| {
            stored
                .as_ref()
                .filter(|t| t.rejected)
                .map(|t| t.value.expose())
        });
        let fetched = self
            .fetch
            .fetch(self, tenant, cred, rejected, lease, deadline)
            .await?;
        let Some(issued) = fetched else {
            tracing::info!(tenant = %tenant.id, credential = %lease.credential, "lease lost before the WeChat call; not calling");
            return Ok(None);
        };
        metrics::histogram!("wxhub_token_refresh_seconds", "credential" => cred.kind())
            .record(timer.elapsed().as_secs_f64());
        self.writer
            .write(tenant, cred, lease, issued, started, stored.as_ref())
            .await
    }
}

impl TokenSource for Arc<Tokens> {
    fn for_call<'a>(
        &'a self,
        tenant: &'a Arc<Tenant>,
        cred: &'a Credential,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Token, Error>> {
        self.read_or_refresh(tenant, cred, CALL_MIN_REMAINING_MS, deadline)
            .boxed()
    }

    fn replaced<'a>(
        &'a self,
        tenant: &'a Arc<Tenant>,
        cred: &'a Credential,
        rejected: &'a str,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Token, Error>> {
        Tokens::replace(self, tenant, cred, rejected, deadline).boxed()
    }

    fn owned(&self) -> Arc<dyn TokenSource> {
        Arc::new(Arc::clone(self))
    }
}
