//! The gRPC service `wxhub.token.v1.TokenControl`.
//!
//! Every call: the API key from `authorization: Bearer <key>` is authenticated against the
//! tenants file, the tenant id is validated and must be one of the client's tenants, and the
//! deadline is `min(grpc-timeout, token_control.request_timeout_ms)`; WeChat calls made for the
//! request are bounded by it. Errors carry a clear message and never a secret.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};
use wxhub_proto::token::v1 as pb;
use wxhub_proto::token::v1::token_control_server::TokenControl;
use wxhub_runtime::{ErrorCode, Tenant, TenantKind};
use wxhub_store::{AuthorizerRecord, AuthorizerStatus};

use crate::engine::{Credential, Engine, ExchangeBy, Token};
use crate::error::Error;
use crate::pre_auth;

/// Metadata key carrying `Bearer <api key>`.
pub const AUTH_HEADER: &str = "authorization";

/// The service over one engine.
#[derive(Debug, Clone)]
pub struct TokenControlService {
    engine: Arc<Engine>,
}

impl TokenControlService {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

/// WeChat appids and corpids, by the one appid rule ([`wxhub_runtime::AppId`]).
fn valid_appid(s: &str) -> bool {
    wxhub_runtime::AppId::is_valid(s)
}

/// Parses `grpc-timeout` (`<digits><H|M|S|m|u|n>`).
fn grpc_timeout<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

struct Call {
    tenant: Arc<Tenant>,
    deadline: Instant,
}

impl TokenControlService {
    /// Authenticates, authorizes and validates the tenant; the deadline of the call.
    fn begin<T>(&self, rpc: &'static str, req: &Request<T>, tenant: &str) -> Result<Call, Status> {
        let result = self.check(req, tenant);
        if let Err(status) = &result {
            metrics::counter!("wxhub_token_rpc_rejected_total", "rpc" => rpc, "code" => format!("{:?}", status.code()))
                .increment(1);
        }
        result
    }

    fn check<T>(&self, req: &Request<T>, tenant: &str) -> Result<Call, Status> {
        let key = req
            .metadata()
            .get(AUTH_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                Status::unauthenticated("missing API key: send `authorization: Bearer <api key>`")
            })?;
        let tenants = self.engine.tenants().current();
        let client = tenants
            .authenticate(key)
            .ok_or_else(|| Status::unauthenticated("unknown API key"))?;
        if wxhub_runtime::TenantId::parse(tenant).is_err() {
            return Err(Status::invalid_argument(
                "tenant must match [a-z0-9-]{1,32}",
            ));
        }
        if !client.may_access(tenant) {
            return Err(Status::permission_denied(format!(
                "client {:?} may not access tenant {tenant:?}",
                client.name
            )));
        }
        let tenant = tenants
            .get(tenant)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("unknown tenant {tenant:?}")))?;
        Ok(Call {
            tenant,
            deadline: self.engine.deadline_for(grpc_timeout(req)),
        })
    }

    /// The access credential a request names.
    fn access_credential(tenant: &Tenant, appid: &str) -> Result<Credential, Status> {
        match (tenant.kind, appid.is_empty()) {
            (TenantKind::Component, true) => Ok(Credential::Component),
            (TenantKind::Component, false) => {
                if !valid_appid(appid) {
                    return Err(Status::invalid_argument(
                        "appid must match [A-Za-z0-9_-]{1,64}",
                    ));
                }
                if appid == tenant.app_id {
                    return Ok(Credential::Component);
                }
                Ok(Credential::Authorizer(appid.to_owned()))
            }
            (_, true) => Ok(Credential::App),
            (_, false) if appid == tenant.app_id => Ok(Credential::App),
            (kind, false) => Err(Status::invalid_argument(format!(
                "a {} tenant has no authorizers: leave appid empty or use {:?}",
                kind.as_str(),
                tenant.app_id
            ))),
        }
    }

    /// For authorizer credentials: the authorizer must exist and be authorized (so unknown
    /// appids are NotFound before any token call; the store may first re-list, see
    /// `Engine::find_authorizer`).
    async fn check_authorizer(&self, tenant: &str, cred: &Credential) -> Result<(), Status> {
        let appid = match cred {
            Credential::Authorizer(a) | Credential::Jsapi(Some(a)) => a,
            _ => return Ok(()),
        };
        match self.engine.find_authorizer(tenant, appid).await {
            Ok(Some(r)) if r.status == AuthorizerStatus::Authorized => Ok(()),
            Ok(Some(r)) => Err(Error::revoked(appid, r.revoked_reason.as_deref()).status()),
            Ok(None) => Err(Status::not_found(format!("unknown authorizer {appid}"))),
            Err(e) => Err(e.status()),
        }
    }

    fn token_reply(tenant: &Tenant, appid: &str, t: Token) -> pb::AccessToken {
        pb::AccessToken {
            access_token: t.value.expose().to_owned(),
            expires_at_ms: t.expires_at_ms,
            appid: if appid.is_empty() {
                tenant.app_id.to_string()
            } else {
                appid.to_owned()
            },
        }
    }
}

fn authorizer_reply(r: AuthorizerRecord) -> pb::Authorizer {
    pb::Authorizer {
        appid: r.appid,
        status: r.status.as_str().to_owned(),
        func_info: r.func_info,
        authorized_at_ms: r.authorized_at_ms,
        updated_at_ms: r.updated_at_ms,
        revoked_at_ms: r.revoked_at_ms.unwrap_or(0),
        revoked_reason: r.revoked_reason.unwrap_or_default(),
        has_refresh_token: r.refresh_token.is_some(),
        nick_name: r.profile.nick_name,
        user_name: r.profile.user_name,
        principal_name: r.profile.principal_name,
        head_img: r.profile.head_img,
        is_mini_program: r.profile.is_mini_program,
    }
}

fn outcome<T>(rpc: &'static str, result: Result<T, Error>) -> Result<Response<T>, Status> {
    let code = match &result {
        Ok(_) => "ok",
        Err(e) => e.code.as_str(),
    };
    metrics::counter!("wxhub_token_rpc_total", "rpc" => rpc, "code" => code).increment(1);
    result.map(Response::new).map_err(|e| e.status())
}

fn component_only(tenant: &Tenant) -> Result<(), Status> {
    if tenant.kind == TenantKind::Component {
        Ok(())
    } else {
        Err(Status::failed_precondition(format!(
            "tenant {:?} is a {} tenant; this call is for components",
            tenant.id.as_str(),
            tenant.kind.as_str()
        )))
    }
}

#[tonic::async_trait]
impl TokenControl for TokenControlService {
    async fn get_access_token(
        &self,
        request: Request<pb::GetAccessTokenRequest>,
    ) -> Result<Response<pb::AccessToken>, Status> {
        const RPC: &str = "GetAccessToken";
        let call = self.begin(RPC, &request, &request.get_ref().tenant)?;
        let req = request.into_inner();
        if req.min_remaining_secs > 3600 {
            return Err(Status::invalid_argument(
                "min_remaining_secs must be at most 3600",
            ));
        }
        let cred = Self::access_credential(&call.tenant, &req.appid)?;
        let tid = call.tenant.id.as_str();
        // Served from the cache/Redis without the authorizer lookup; the lookup only runs
        // when a refresh is needed (below, through the engine's own checks).
        let min = self.engine.min_remaining_ms(req.min_remaining_secs);
        let result = match self.engine.get_token(tid, &cred, min, call.deadline).await {
            Err(e) if e.code == ErrorCode::NotFound => {
                self.check_authorizer(tid, &cred).await?;
                Err(e)
            }
            other => other,
        };
        outcome(
            RPC,
            result.map(|t| Self::token_reply(&call.tenant, &req.appid, t)),
        )
    }

    async fn invalidate_access_token(
        &self,
        request: Request<pb::InvalidateAccessTokenRequest>,
    ) -> Result<Response<pb::AccessToken>, Status> {
        const RPC: &str = "InvalidateAccessToken";
        let call = self.begin(RPC, &request, &request.get_ref().tenant)?;
        let req = request.into_inner();
        if req.rejected_token.is_empty() || req.rejected_token.len() > 2048 {
            return Err(Status::invalid_argument(
                "rejected_token must be the token WeChat rejected (1..=2048 bytes)",
            ));
        }
        let cred = Self::access_credential(&call.tenant, &req.appid)?;
        let tid = call.tenant.id.as_str();
        self.check_authorizer(tid, &cred).await?;
        let result = self
            .engine
            .invalidate(tid, &cred, &req.rejected_token, call.deadline)
            .await;
        outcome(
            RPC,
            result.map(|t| Self::token_reply(&call.tenant, &req.appid, t)),
        )
    }

    async fn create_authorization_url(
        &self,
        request: Request<pb::CreateAuthorizationUrlRequest>,
    ) -> Result<Response<pb::AuthorizationUrl>, Status> {
        const RPC: &str = "CreateAuthorizationUrl";
        let call = self.begin(RPC, &request, &request.get_ref().tenant)?;
        let req = request.into_inner();
        component_only(&call.tenant)?;
        let redirect = url::Url::parse(&req.redirect_uri)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .filter(|_| req.redirect_uri.len() <= 1024)
            .ok_or_else(|| {
                Status::invalid_argument(
                    "redirect_uri must be an absolute http(s) URL (≤ 1024 bytes)",
                )
            })?;
        let auth_type = match pb::AuthType::try_from(req.auth_type) {
            Ok(pb::AuthType::Unspecified) => None,
            Ok(pb::AuthType::OfficialAccount) => Some("1"),
            Ok(pb::AuthType::MiniProgram) => Some("2"),
            Ok(pb::AuthType::Both) => Some("3"),
            Err(_) => return Err(Status::invalid_argument("unknown auth_type")),
        };
        let biz = (!req.biz_appid.is_empty()).then_some(req.biz_appid.as_str());
        if let Some(b) = biz {
            if !valid_appid(b) {
                return Err(Status::invalid_argument(
                    "biz_appid must match [A-Za-z0-9_-]{1,64}",
                ));
            }
            if auth_type.is_some() {
                return Err(Status::invalid_argument(
                    "auth_type and biz_appid are mutually exclusive",
                ));
            }
        }
        let result = self.create_pre_auth(&call, &redirect, auth_type, biz).await;
        outcome(RPC, result)
    }

    async fn exchange_auth_code(
        &self,
        request: Request<pb::ExchangeAuthCodeRequest>,
    ) -> Result<Response<pb::Authorizer>, Status> {
        const RPC: &str = "ExchangeAuthCode";
        let call = self.begin(RPC, &request, &request.get_ref().tenant)?;
        let req = request.into_inner();
        component_only(&call.tenant)?;
        if req.auth_code.is_empty() || req.auth_code.len() > 512 {
            return Err(Status::invalid_argument("auth_code must be 1..=512 bytes"));
        }
        if !req.pre_auth_marker.is_empty() && !pre_auth::valid_marker(&req.pre_auth_marker) {
            return Err(Status::invalid_argument(
                "pre_auth_marker must be the redirect's wxhub_pac value (16 hex digits)",
            ));
        }
        let tid = call.tenant.id.as_str();
        let result = self
            .engine
            .exchange_auth_code(
                tid,
                &req.auth_code,
                ExchangeBy::Redirect,
                None,
                call.deadline,
            )
            .await;
        // A code WeChat accepted proves the pre-auth code of its link was used.
        if result.is_ok() && !req.pre_auth_marker.is_empty() {
            pre_auth::retire(&self.engine, tid, &req.pre_auth_marker, "redirect").await;
        }
        outcome(RPC, result.map(authorizer_reply))
    }

    async fn get_authorizer(
        &self,
        request: Request<pb::GetAuthorizerRequest>,
    ) -> Result<Response<pb::Authorizer>, Status> {
        const RPC: &str = "GetAuthorizer";
        let call = self.begin(RPC, &request, &request.get_ref().tenant)?;
        let req = request.into_inner();
        component_only(&call.tenant)?;
        if !valid_appid(&req.appid) {
            return Err(Status::invalid_argument(
                "appid must match [A-Za-z0-9_-]{1,64}",
            ));
        }
        let result = match self
            .engine
            .authorizers()
            .get(call.tenant.id.as_str(), &req.appid)
            .await
        {
            Ok(Some(r)) => Ok(authorizer_reply(r)),
            Ok(None) => Err(Error::not_found(format!(
                "unknown authorizer {}",
                req.appid
            ))),
            Err(e) => Err(e.into()),
        };
        outcome(RPC, result)
    }

    async fn list_authorizers(
        &self,
        request: Request<pb::ListAuthorizersRequest>,
    ) -> Result<Response<pb::ListAuthorizersResponse>, Status> {
        const RPC: &str = "ListAuthorizers";
        let call = self.begin(RPC, &request, &request.get_ref().tenant)?;
        let req = request.into_inner();
        component_only(&call.tenant)?;
        if req.page_size > 500 {
            return Err(Status::invalid_argument("page_size must be at most 500"));
        }
        if !req.page_token.is_empty() && !valid_appid(&req.page_token) {
            return Err(Status::invalid_argument("malformed page_token"));
        }
        let size = if req.page_size == 0 {
            100
        } else {
            req.page_size as usize
        };
        let tid = call.tenant.id.as_str();
        let after = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
        let auths = self.engine.authorizers();
        let result = async {
            let (records, next) = auths.list(tid, after, size).await?;
            let total = auths.count(tid).await?;
            Ok::<_, Error>(pb::ListAuthorizersResponse {
                authorizers: records.into_iter().map(authorizer_reply).collect(),
                next_page_token: next.unwrap_or_default(),
                total,
            })
        }
        .await;
        outcome(RPC, result)
    }

    async fn sync_authorizers(
        &self,
        request: Request<pb::SyncAuthorizersRequest>,
    ) -> Result<Response<pb::SyncAuthorizersResponse>, Status> {
        const RPC: &str = "SyncAuthorizers";
        let call = self.begin(RPC, &request, &request.get_ref().tenant)?;
        component_only(&call.tenant)?;
        let result = self
            .engine
            .reconcile(call.tenant.id.as_str(), call.deadline)
            .await
            .map(|s| pb::SyncAuthorizersResponse {
                listed: s.listed,
                authorized: s.authorized,
                refresh_tokens: s.refresh_tokens,
            });
        outcome(RPC, result)
    }

    async fn get_jsapi_ticket(
        &self,
        request: Request<pb::GetJsapiTicketRequest>,
    ) -> Result<Response<pb::JsapiTicket>, Status> {
        const RPC: &str = "GetJsapiTicket";
        let call = self.begin(RPC, &request, &request.get_ref().tenant)?;
        let req = request.into_inner();
        let (cred, _) = self.jsapi_credential(&call, &req.appid).await?;
        let result = self
            .engine
            .get_token(call.tenant.id.as_str(), &cred, 60_000, call.deadline)
            .await
            .map(|t| pb::JsapiTicket {
                ticket: t.value.expose().to_owned(),
                expires_at_ms: t.expires_at_ms,
            });
        outcome(RPC, result)
    }

    async fn sign_jsapi_url(
        &self,
        request: Request<pb::SignJsapiUrlRequest>,
    ) -> Result<Response<pb::JsapiSignature>, Status> {
        const RPC: &str = "SignJsapiUrl";
        let call = self.begin(RPC, &request, &request.get_ref().tenant)?;
        let req = request.into_inner();
        let page = url::Url::parse(&req.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .filter(|_| req.url.len() <= 2048)
            .ok_or_else(|| {
                Status::invalid_argument("url must be an absolute http(s) URL (≤ 2048 bytes)")
            })?;
        let _ = page;
        // Sign the URL exactly as the page will report it (minus the fragment).
        let url = req.url.split('#').next().unwrap_or_default().to_owned();
        let (cred, appid) = self.jsapi_credential(&call, &req.appid).await?;
        let result = self
            .engine
            .get_token(call.tenant.id.as_str(), &cred, 60_000, call.deadline)
            .await
            .map(|ticket| {
                let nonce = wxhub_crypto::random_nonce(16);
                let timestamp = self.engine.now_ms() / 1000;
                let signature = wxhub_crypto::jssdk_signature(
                    ticket.value.expose(),
                    &nonce,
                    &timestamp.to_string(),
                    &url,
                );
                pb::JsapiSignature {
                    appid,
                    nonce_str: nonce,
                    timestamp,
                    signature,
                    url,
                }
            });
        outcome(RPC, result)
    }
}

impl TokenControlService {
    async fn jsapi_credential(
        &self,
        call: &Call,
        appid: &str,
    ) -> Result<(Credential, String), Status> {
        let tenant = &call.tenant;
        let cred = match (tenant.kind, appid.is_empty()) {
            (TenantKind::Component, true) => {
                return Err(Status::invalid_argument(
                    "appid (the authorizer) is required for a component tenant",
                ));
            }
            (TenantKind::Component, false) => {
                if !valid_appid(appid) {
                    return Err(Status::invalid_argument(
                        "appid must match [A-Za-z0-9_-]{1,64}",
                    ));
                }
                Credential::Jsapi(Some(appid.to_owned()))
            }
            (TenantKind::OfficialAccount, true) => Credential::Jsapi(None),
            (TenantKind::OfficialAccount, false) if appid == tenant.app_id => {
                Credential::Jsapi(None)
            }
            (TenantKind::OfficialAccount, false) => {
                return Err(Status::invalid_argument(
                    "an Official Account tenant has no authorizers: leave appid empty",
                ));
            }
            (TenantKind::Wecom, _) => {
                return Err(Status::failed_precondition(
                    "JS-SDK tickets are served for component authorizers and Official Accounts",
                ));
            }
        };
        self.check_authorizer(tenant.id.as_str(), &cred).await?;
        let appid = match &cred {
            Credential::Jsapi(Some(a)) => a.clone(),
            _ => tenant.app_id.to_string(),
        };
        Ok((cred, appid))
    }

    async fn create_pre_auth(
        &self,
        call: &Call,
        redirect: &url::Url,
        auth_type: Option<&str>,
        biz: Option<&str>,
    ) -> Result<pb::AuthorizationUrl, Error> {
        let tenant = &call.tenant;
        let code = pre_auth::obtain(&self.engine, tenant, call.deadline).await?;
        // The redirect names the code, so /authorized can retire it once it was used.
        let mut redirect = redirect.clone();
        let kept: Vec<(String, String)> = redirect
            .query_pairs()
            .filter(|(k, _)| k != pre_auth::REDIRECT_PARAM)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        redirect
            .query_pairs_mut()
            .clear()
            .extend_pairs(kept)
            .append_pair(pre_auth::REDIRECT_PARAM, &code.marker);
        let redirect = redirect.as_str();
        let mp = &self.engine.mp_base;
        let mut params = url::form_urlencoded::Serializer::new(String::new());
        params
            .append_pair("component_appid", &tenant.app_id)
            .append_pair("pre_auth_code", code.code.expose())
            .append_pair("redirect_uri", redirect);
        let mut mobile_params = url::form_urlencoded::Serializer::new(String::new());
        mobile_params
            .append_pair("action", "bindcomponent")
            .append_pair("no_scan", "1")
            .append_pair("component_appid", &tenant.app_id)
            .append_pair("pre_auth_code", code.code.expose())
            .append_pair("redirect_uri", redirect);
        match (auth_type, biz) {
            (_, Some(b)) => {
                params.append_pair("biz_appid", b);
                mobile_params.append_pair("biz_appid", b);
            }
            (Some(t), None) => {
                params.append_pair("auth_type", t);
                mobile_params.append_pair("auth_type", t);
            }
            // The mobile page requires auth_type: default to both kinds.
            (None, None) => {
                mobile_params.append_pair("auth_type", "3");
            }
        }
        Ok(pb::AuthorizationUrl {
            pc_url: format!("{mp}/cgi-bin/componentloginpage?{}", params.finish()),
            mobile_url: format!(
                "{mp}/safe/bindcomponent?{}#wechat_redirect",
                mobile_params.finish()
            ),
            pre_auth_code: code.code.expose().to_owned(),
            expires_at_ms: code.expires_at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_parses_every_unit() {
        let with = |v: &str| {
            let mut r = Request::new(());
            r.metadata_mut().insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&r)
        };
        assert_eq!(with("2S"), Some(Duration::from_secs(2)));
        assert_eq!(with("150m"), Some(Duration::from_millis(150)));
        assert_eq!(with("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(with("5u"), Some(Duration::from_micros(5)));
        assert_eq!(with("x"), None);
        assert_eq!(with("10Q"), None);
        assert_eq!(grpc_timeout(&Request::new(())), None);
    }

    #[test]
    fn appids_are_restricted() {
        assert!(valid_appid("wx0123456789abcdef"));
        assert!(!valid_appid(""));
        assert!(!valid_appid("wx:1"));
        assert!(!valid_appid(&"a".repeat(65)));
    }
}
