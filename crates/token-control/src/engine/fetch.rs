//! Fetching a credential from WeChat, one function per kind: the component token (from the
//! ticket), an Official Account's token (`stable_token`, or `/cgi-bin/token`), a WeCom app's,
//! an authorizer's (from its refresh token, with the component token), and a JS-SDK ticket
//! (with an access token).
//!
//! Guarantee: no call is made by a holder that lost its refresh lease: the lease is checked
//! right before each call (after any token the call needs was obtained, which can take long).
//! That narrows the window in which a paused holder calls next to the new holder; the fenced
//! write (`refresh`) closes it. The failures a fetch acts on: a missing or refused ticket asks
//! WeChat to push one; 61023 recovers the refresh token from the authorizer list once, else
//! revokes; 61003 revokes.

use std::sync::Arc;
use std::time::Instant;

use wxhub_runtime::{Tenant, TenantKind};
use wxhub_store::Lease;
use wxhub_wechat_api::{AccessToken, ErrorClass};

use super::authorizers::AuthorizerRecords;
use super::component::{TokenSource, with_component_token, with_token};
use super::credential::{Credential, Issued};
use super::reconcile::Reconciler;
use super::recovery::Recovery;
use super::shared::Shared;
use super::tickets::Tickets;
use crate::error::{Error, note_failure};

/// Fetching from WeChat.
pub(crate) struct Fetch {
    s: Arc<Shared>,
    tickets: Arc<Tickets>,
    recovery: Arc<Recovery>,
    reconciler: Arc<Reconciler>,
    authorizers: Arc<AuthorizerRecords>,
}

impl Fetch {
    pub(crate) fn new(
        s: Arc<Shared>,
        tickets: Arc<Tickets>,
        recovery: Arc<Recovery>,
        reconciler: Arc<Reconciler>,
        authorizers: Arc<AuthorizerRecords>,
    ) -> Self {
        Self {
            s,
            tickets,
            recovery,
            reconciler,
            authorizers,
        }
    }

    /// A new value of `cred` (`rejected`: the value a client reported rejected, if any), or
    /// `None` when the lease was lost before the call.
    pub(crate) async fn fetch(
        &self,
        tokens: &dyn TokenSource,
        tenant: &Arc<Tenant>,
        cred: &Credential,
        rejected: Option<&str>,
        lease: &Lease,
        deadline: Instant,
    ) -> Result<Option<Issued>, Error> {
        // The tenant's own credentials need no other token: the lease is checked right before
        // the call. The others check it once they hold the token their call needs.
        let own = matches!(
            (cred, tenant.kind),
            (Credential::Component, TenantKind::Component)
                | (
                    Credential::App,
                    TenantKind::OfficialAccount | TenantKind::Wecom
                )
        );
        if own && !self.holds(lease).await? {
            return Ok(None);
        }
        match (cred, tenant.kind) {
            (Credential::Component, TenantKind::Component) => {
                self.component(tenant, deadline).await
            }
            // /cgi-bin/token always issues a new token.
            (Credential::App, TenantKind::OfficialAccount)
                if self.s.cfg.oa_token_api == crate::config::OaTokenApi::Token =>
            {
                self.app(tenant, deadline).await
            }
            (Credential::App, TenantKind::OfficialAccount) => {
                self.stable(tenant, rejected, deadline).await
            }
            (Credential::App, TenantKind::Wecom) => self.app(tenant, deadline).await,
            (Credential::Authorizer(appid), TenantKind::Component) => {
                self.authorizer(tokens, tenant, appid, lease, deadline)
                    .await
            }
            (Credential::Jsapi(Some(appid)), TenantKind::Component) => {
                let access = Credential::Authorizer(appid.clone());
                self.jsapi(tokens, tenant, &access, lease, deadline).await
            }
            (Credential::Jsapi(None), TenantKind::OfficialAccount) => {
                self.jsapi(tokens, tenant, &Credential::App, lease, deadline)
                    .await
            }
            (Credential::Jsapi(_), _) => Err(Error::NoJsapiTicket),
            (cred, kind) => Err(Error::NoToken {
                kind,
                credential: cred.kind(),
            }),
        }
    }

    /// Whether `lease` is still ours, checked right before each upstream call.
    async fn holds(&self, lease: &Lease) -> Result<bool, Error> {
        Ok(self.s.creds.holds(lease).await?)
    }

    /// component_access_token, from the stored ticket (WeChat is asked to push one when there
    /// is none or it refuses it).
    async fn component(&self, tenant: &Tenant, deadline: Instant) -> Result<Option<Issued>, Error> {
        let Some(ticket) = self.recovery.usable_ticket(tenant, deadline).await? else {
            self.tickets.request_push(tenant).await;
            return Err(Error::NoTicket {
                tenant: tenant.id.to_string(),
            });
        };
        let answer = self
            .s
            .api
            .until(deadline)
            .component_token(&tenant.app_id, &tenant.app_secret, &ticket.value)
            .await;
        match answer {
            Ok(t) => Ok(Some(Issued::access(t))),
            Err(e) => {
                note_failure(tenant.id.as_str(), &e);
                if e.class() == ErrorClass::Ticket {
                    self.tickets.request_push(tenant).await;
                }
                Err(Error::wechat("fetching the component_access_token", e))
            }
        }
    }

    /// An Official Account's token from `/cgi-bin/token`, or a WeCom app's from `gettoken`:
    /// each call issues a new one.
    async fn app(&self, tenant: &Tenant, deadline: Instant) -> Result<Option<Issued>, Error> {
        let api = self.s.api.until(deadline);
        let (answer, what) = if tenant.kind == TenantKind::Wecom {
            let answer = api.wecom_token(&tenant.app_id, &tenant.app_secret).await;
            (answer, "fetching the WeCom access_token")
        } else {
            let answer = api.oa_token(&tenant.app_id, &tenant.app_secret).await;
            (answer, "fetching the Official Account access_token")
        };
        answer.map(|t| Some(Issued::access(t))).map_err(|e| {
            note_failure(tenant.id.as_str(), &e);
            Error::wechat(what, e)
        })
    }

    /// stable_token. Normal mode answers the current token with what is left of its life, the
    /// same token until it expires, so the answer is marked idempotent and refreshed when it
    /// expires (never `force_refresh` on a timer: WeChat allows 20 a day, 30 s apart, and it
    /// kills the token every client holds). A token reported rejected is replaced by the
    /// normal answer unless WeChat still answers that very token; only then is
    /// `force_refresh` used (counted in `wxhub_stable_token_force_refresh_total`), and when
    /// WeChat refuses it (its daily limit), the normal answer is served: WeChat itself still
    /// issues that token, and keeping the rejected mark would make every read call again.
    async fn stable(
        &self,
        tenant: &Tenant,
        rejected: Option<&str>,
        deadline: Instant,
    ) -> Result<Option<Issued>, Error> {
        let api = self.s.api.until(deadline);
        let failed = |e| {
            note_failure(tenant.id.as_str(), &e);
            Error::wechat("fetching the Official Account access_token", e)
        };
        let stable = |t: AccessToken| Issued {
            idempotent: true,
            ..Issued::access(t)
        };
        let normal = api
            .stable_token(&tenant.app_id, &tenant.app_secret, false)
            .await
            .map_err(failed)?;
        if rejected != Some(normal.token.expose()) {
            return Ok(Some(stable(normal)));
        }
        let forced = api
            .stable_token(&tenant.app_id, &tenant.app_secret, true)
            .await;
        let label = match &forced {
            Ok(_) => "ok",
            Err(e) if e.class() == ErrorClass::Quota => "refused",
            Err(_) => "error",
        };
        metrics::counter!("wxhub_stable_token_force_refresh_total", "tenant" => tenant.id.to_string(), "result" => label)
            .increment(1);
        match forced {
            Ok(t) => Ok(Some(stable(t))),
            Err(e) if e.class() == ErrorClass::Quota => {
                note_failure(tenant.id.as_str(), &e);
                tracing::warn!(
                    tenant = %tenant.id,
                    "force_refresh refused; serving the token stable_token still issues"
                );
                Ok(Some(stable(normal)))
            }
            Err(e) => Err(failed(e)),
        }
    }

    /// An authorizer's token from its refresh token and the component token. A refresh token
    /// that is missing, or that WeChat says is invalid (61023), is recovered from the
    /// authorizer list once; when the list has no other, the authorizer is revoked, as it is
    /// on 61003.
    async fn authorizer(
        &self,
        tokens: &dyn TokenSource,
        tenant: &Arc<Tenant>,
        appid: &str,
        lease: &Lease,
        deadline: Instant,
    ) -> Result<Option<Issued>, Error> {
        let mut record = self.authorizers.active(tokens, tenant, appid).await?;
        if record.refresh_token.is_none() {
            // Lost (or never stored): recover it from WeChat's list.
            self.reconciler.reconcile(tokens, tenant, deadline).await?;
            record = self.authorizers.active(tokens, tenant, appid).await?;
        }
        let Some(mut refresh) = record.refresh_token else {
            return Err(Error::NoRefreshToken {
                appid: appid.to_owned(),
            });
        };
        let mut reconciled = false;
        loop {
            let api = self.s.api.until(deadline);
            let answer = with_component_token(tokens, tenant, deadline, |token| {
                let (api, refresh) = (&api, &refresh);
                async move {
                    if !self.holds(lease).await? {
                        return Ok(None);
                    }
                    api.authorizer_token(&token, &tenant.app_id, appid, refresh)
                        .await
                        .map(Some)
                        .map_err(|e| Error::wechat("refreshing the authorizer token", e))
                }
            })
            .await;
            let revoke = |reason| self.revoke(tenant, appid, reason);
            match answer {
                Ok(None) => return Ok(None),
                Ok(Some((t, returned))) => {
                    return Ok(Some(Issued {
                        refresh: returned.map(|r| (refresh, r)),
                        ..Issued::new(t.token, t.expires_in, Some(appid.to_owned()))
                    }));
                }
                Err(e) if e.class() == Some(ErrorClass::RefreshToken) && !reconciled => {
                    reconciled = true;
                    metrics::counter!("wxhub_refresh_token_invalid_total", "tenant" => tenant.id.to_string())
                        .increment(1);
                    tracing::warn!(
                        tenant = %tenant.id,
                        appid,
                        "61023: recovering the refresh token from the authorizer list"
                    );
                    self.reconciler.reconcile(tokens, tenant, deadline).await?;
                    let again = self.authorizers.active(tokens, tenant, appid).await?;
                    match again.refresh_token {
                        Some(r) if r != refresh => refresh = r,
                        _ => {
                            revoke("refresh_token_invalid").await?;
                            return Err(e);
                        }
                    }
                }
                Err(e) if e.class() == Some(ErrorClass::Deauthorized) => {
                    revoke("deauthorized").await?;
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Revokes `appid` now, for `reason` (WeChat's answer).
    async fn revoke(&self, tenant: &Tenant, appid: &str, reason: &str) -> Result<bool, Error> {
        let now = self.s.now_ms();
        self.authorizers.revoke(tenant, appid, now, reason).await
    }

    /// A jsapi_ticket, with the access token of `access` (an authorizer's, or the Official
    /// Account's own).
    async fn jsapi(
        &self,
        tokens: &dyn TokenSource,
        tenant: &Arc<Tenant>,
        access: &Credential,
        lease: &Lease,
        deadline: Instant,
    ) -> Result<Option<Issued>, Error> {
        let api = self.s.api.until(deadline);
        let ticket = with_token(tokens, tenant, access, deadline, |token| {
            let api = &api;
            async move {
                if !self.holds(lease).await? {
                    return Ok(None);
                }
                api.jsapi_ticket(&token)
                    .await
                    .map(Some)
                    .map_err(|e| Error::wechat("fetching the jsapi_ticket", e))
            }
        })
        .await?;
        Ok(ticket.map(|t| {
            Issued::new(
                t.ticket,
                t.expires_in,
                access.authorizer().map(str::to_owned),
            )
        }))
    }
}
