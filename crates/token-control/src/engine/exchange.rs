//! The authorization-code exchange (`api_query_auth`): an authorization becomes a stored
//! authorizer with its refresh token, its first access token and its profile.
//!
//! Guarantee: a code is exchanged with WeChat at most once, whichever of its two paths (the
//! redirect page, the `authorized` notice) and replicas present it: the other path is answered
//! from the first exchange, the same path presenting it again is refused (`CodeUsed`), and a
//! code WeChat refused (61009/61010: invalid, expired or used elsewhere) is refused again from
//! memory, without asking WeChat, for as long as any code lives. How: a claim per code in the
//! store (`wxhub_store::auth_codes`, named by a digest of the code); a failure that is not the
//! code's (Redis, WeChat down) gives the claim back, so a later attempt may succeed.
//!
//! The record is written with a fence taken before WeChat is asked (so a newer refresh token
//! is never replaced by this answer), and in the order of the events' times (a late
//! authorization does not undo a newer revocation). The token that comes with the code is
//! stored like a refresh's (`Writer::store_issued`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::Digest as _;
use wxhub_runtime::Tenant;
use wxhub_store::authorizers::Authorization;
use wxhub_store::{AuthCodes, AuthorizerRecord, CodeClaim, Store};
use wxhub_wechat_api::ErrorClass;

use super::authorizers::AuthorizerRecords;
use super::component::with_component_token;
use super::credential::{Credential, Issued};
use super::refresh::Tokens;
use super::shared::Shared;
use super::write::Writer;
use crate::error::Error;

/// How long the outcome of an authorization code (exchanged, or refused by WeChat) is
/// remembered: longer than any code lives (600 s by the redirect's `expires_in`).
const CODE_MEMORY: Duration = Duration::from_secs(3600);

/// How often a caller waiting for the other path's exchange looks again.
const POLL: Duration = Duration::from_millis(50);

/// Who exchanges an authorization code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeBy {
    /// The redirect after authorization (ExchangeAuthCode RPC).
    Redirect,
    /// The `authorized` / `updateauthorized` notice from the bus.
    Event,
}

impl ExchangeBy {
    fn as_str(self) -> &'static str {
        match self {
            ExchangeBy::Redirect => "redirect",
            ExchangeBy::Event => "event",
        }
    }
}

/// The exchange.
pub(crate) struct Exchange {
    s: Arc<Shared>,
    /// The component token for the exchange's WeChat calls.
    tokens: Arc<Tokens>,
    writer: Arc<Writer>,
    authorizers: Arc<AuthorizerRecords>,
    codes: AuthCodes,
}

impl Exchange {
    pub(crate) fn new(
        s: Arc<Shared>,
        store: Store,
        tokens: Arc<Tokens>,
        writer: Arc<Writer>,
        authorizers: Arc<AuthorizerRecords>,
    ) -> Self {
        // A claim outlives the exchange's deadline by a margin, so it is never taken over
        // while its exchange still runs.
        let pending = s.cfg.request_timeout() + Duration::from_secs(5);
        Self {
            codes: AuthCodes::new(store, pending, CODE_MEMORY),
            s,
            tokens,
            writer,
            authorizers,
        }
    }

    /// Exchanges `code` (by `by`; `event_ms`: the notice's time, else now) and stores the
    /// authorizer.
    pub(crate) async fn exchange(
        &self,
        tenant: &Arc<Tenant>,
        code: &str,
        by: ExchangeBy,
        event_ms: Option<i64>,
        deadline: Instant,
    ) -> Result<AuthorizerRecord, Error> {
        let digest = code_digest(code);
        loop {
            match self
                .codes
                .claim(tenant.id.as_str(), &digest, by.as_str())
                .await?
            {
                CodeClaim::Fresh => break,
                CodeClaim::Done { by: first, appid } => {
                    if first == by.as_str() {
                        return Err(Error::CodeUsed);
                    }
                    return self.authorizers.record(tenant, &appid).await;
                }
                CodeClaim::Refused { reason } => {
                    metrics::counter!("wxhub_auth_codes_refused_total", "tenant" => tenant.id.to_string(), "source" => "memory")
                        .increment(1);
                    return Err(Error::CodeRefused(reason));
                }
                // Being exchanged elsewhere (or its claim just expired): look again.
                CodeClaim::InFlight => {
                    if Instant::now() >= deadline {
                        return Err(Error::Deadline(
                            "deadline exceeded while the code was being exchanged elsewhere",
                        ));
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
        }
        let codes = &self.codes;
        match self.claimed(tenant, code, event_ms, deadline).await {
            Ok(record) => {
                codes
                    .complete(tenant.id.as_str(), &digest, by.as_str(), &record.appid)
                    .await?;
                Ok(record)
            }
            Err(e) if e.class() == Some(ErrorClass::AuthCode) => {
                // Final: WeChat will refuse this code every time.
                metrics::counter!("wxhub_auth_codes_refused_total", "tenant" => tenant.id.to_string(), "source" => "wechat")
                    .increment(1);
                if let Err(err) = codes
                    .refuse(tenant.id.as_str(), &digest, &e.to_string())
                    .await
                {
                    tracing::warn!(tenant = %tenant.id, error = %err, "cannot remember a refused authorization code");
                }
                Err(e)
            }
            Err(e) => {
                let _ = codes
                    .release(tenant.id.as_str(), &digest, by.as_str())
                    .await;
                Err(e)
            }
        }
    }

    /// The exchange of a claimed code.
    async fn claimed(
        &self,
        tenant: &Arc<Tenant>,
        code: &str,
        event_ms: Option<i64>,
        deadline: Instant,
    ) -> Result<AuthorizerRecord, Error> {
        let fence = self.s.creds.next_fence(tenant.id.as_str()).await?;
        let started = self.s.now_ms();
        let api = self.s.api.until(deadline);
        let info = with_component_token(&self.tokens, tenant, deadline, |token| {
            let api = &api;
            async move {
                api.query_auth(&token, &tenant.app_id, code)
                    .await
                    .map_err(|e| Error::wechat("exchanging the authorization code", e))
            }
        })
        .await?;
        let appid = info.authorizer_appid.as_str();
        let (applied, _) = self
            .s
            .auths
            .authorize(
                tenant.id.as_str(),
                &Authorization {
                    appid,
                    event_ms: event_ms.unwrap_or(started),
                    now_ms: self.s.now_ms(),
                    fence,
                    refresh_token: info.refresh_token.as_ref(),
                    func_info: &info.func_info,
                },
            )
            .await?;
        if !applied {
            tracing::info!(tenant = %tenant.id, appid, "authorization event older than the stored status; kept the newer state");
        }
        metrics::counter!("wxhub_authorizations_total", "tenant" => tenant.id.to_string())
            .increment(1);
        self.s.forget_authorizer(tenant.id.as_str(), appid);
        if let Some(token) = info.access_token.filter(|_| applied) {
            // If a refresh holds the lease now, the schedule fetches a new one.
            let issued = Issued::new(token.token, token.expires_in, Some(appid.to_owned()));
            let cred = Credential::Authorizer(appid.to_owned());
            self.writer
                .store_issued(tenant, &cred, issued, started)
                .await?;
        }
        self.authorizers
            .refresh_profile(&self.tokens, tenant, appid, deadline)
            .await;
        self.s
            .auths
            .get(tenant.id.as_str(), appid)
            .await?
            .ok_or_else(|| Error::Internal("authorizer vanished after exchange".into()))
    }
}

/// Names `code` without revealing it: 32 hex digits of its SHA-256.
fn code_digest(code: &str) -> String {
    hex::encode(&sha2::Sha256::digest(code.as_bytes())[..16])
}
