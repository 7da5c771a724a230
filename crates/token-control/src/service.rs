//! The gRPC service `wxhub.token.v1.TokenControl`.
//!
//! Every call: the API key from `authorization: Bearer <key>` is authenticated against the
//! tenants file, the tenant id is validated and must be one of the client's tenants, and the
//! deadline is `min(grpc-timeout, token_control.request_timeout_ms)`; WeChat calls made for the
//! request are bounded by it. Errors carry a clear message and never a secret.
//!
//! This module only maps: a request to the engine's call (after validating its fields), the
//! answer to the reply, an [`Error`] to its status. Everything else happens in the engine.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};
use wxhub_proto::token::v1 as pb;
use wxhub_proto::token::v1::token_control_server::TokenControl;
use wxhub_runtime::{Tenant, TenantKind};
use wxhub_store::AuthorizerRecord;

use crate::engine::{AuthType, Credential, Engine, Offer, Token, valid_marker};
use crate::error::Error;

/// Metadata key carrying `Bearer <api key>`.
pub use wxhub_runtime::grpc::AUTH_HEADER;

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

/// `value` of the field `field` if it is an appid.
fn appid_arg<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    if valid_appid(value) {
        Ok(value)
    } else {
        Err(Status::invalid_argument(format!(
            "{field} must match (wx|ww)[A-Za-z0-9_-]{{1,30}}"
        )))
    }
}

/// `value` of the field `field` if it is an absolute http(s) URL of at most `max` bytes.
fn http_url_arg(field: &str, value: &str, max: usize) -> Result<url::Url, Status> {
    url::Url::parse(value)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .filter(|_| value.len() <= max)
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "{field} must be an absolute http(s) URL (≤ {max} bytes)"
            ))
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
        let tenant = wxhub_runtime::grpc::admit(&self.engine.tenants().current(), req, tenant)?;
        Ok(Call {
            tenant,
            deadline: self
                .engine
                .deadline_for(wxhub_runtime::grpc::grpc_timeout(req)),
        })
    }

    /// The access credential a request names.
    fn access_credential(tenant: &Tenant, appid: &str) -> Result<Credential, Status> {
        match (tenant.kind, appid.is_empty()) {
            (TenantKind::Component, true) => Ok(Credential::Component),
            (TenantKind::Component, false) => {
                if appid_arg("appid", appid)? == tenant.app_id {
                    Ok(Credential::Component)
                } else {
                    Ok(Credential::Authorizer(appid.to_owned()))
                }
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

    /// The JS-SDK ticket a request names, and the appid it is of.
    fn jsapi_credential(tenant: &Tenant, appid: &str) -> Result<(Credential, String), Status> {
        let cred = match (tenant.kind, appid.is_empty()) {
            (TenantKind::Component, true) => {
                return Err(Status::invalid_argument(
                    "appid (the authorizer) is required for a component tenant",
                ));
            }
            (TenantKind::Component, false) => {
                Credential::Jsapi(Some(appid_arg("appid", appid)?.to_owned()))
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
        let appid = match &cred {
            Credential::Jsapi(Some(a)) => a.clone(),
            _ => tenant.app_id.to_string(),
        };
        Ok((cred, appid))
    }

    fn token_reply(tenant: &Tenant, appid: &str, t: Token) -> pb::AccessToken {
        pb::AccessToken {
            access_token: t.value.expose().to_owned(),
            expires_at_ms: t.expires_at_ms,
            issued_at_ms: t.issued_at_ms,
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
        Err(e) => e.code().as_str(),
    };
    metrics::counter!("wxhub_token_rpc_total", "rpc" => rpc, "code" => code).increment(1);
    result.map(Response::new).map_err(|e| e.status())
}

fn component_only(tenant: &Tenant) -> Result<(), Status> {
    if tenant.kind == TenantKind::Component {
        Ok(())
    } else {
        Err(Error::NotComponent {
            tenant: tenant.id.to_string(),
            kind: tenant.kind,
        }
        .status())
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
        let min = self.engine.min_remaining_ms(req.min_remaining_secs);
        let result = self
            .engine
            .token(&call.tenant, &cred, min, call.deadline)
            .await;
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
        let result = self
            .engine
            .invalidate(&call.tenant, &cred, &req.rejected_token, call.deadline)
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
        let redirect = http_url_arg("redirect_uri", &req.redirect_uri, 1024)?;
        let auth_type = match pb::AuthType::try_from(req.auth_type) {
            Ok(pb::AuthType::Unspecified) => None,
            Ok(pb::AuthType::OfficialAccount) => Some(AuthType::OfficialAccounts),
            Ok(pb::AuthType::MiniProgram) => Some(AuthType::MiniPrograms),
            Ok(pb::AuthType::Both) => Some(AuthType::Both),
            Err(_) => return Err(Status::invalid_argument("unknown auth_type")),
        };
        let biz = (!req.biz_appid.is_empty()).then_some(req.biz_appid.as_str());
        if let Some(b) = biz {
            appid_arg("biz_appid", b)?;
            if auth_type.is_some() {
                return Err(Status::invalid_argument(
                    "auth_type and biz_appid are mutually exclusive",
                ));
            }
        }
        let offer = match (biz, auth_type) {
            (Some(b), _) => Offer::Account(b),
            (None, Some(kind)) => Offer::Kind(kind),
            (None, None) => Offer::Any,
        };
        let result = self
            .engine
            .authorization_url(&call.tenant, &redirect, offer, call.deadline)
            .await
            .map(|u| pb::AuthorizationUrl {
                pc_url: u.pc_url,
                mobile_url: u.mobile_url,
                pre_auth_code: u.pre_auth_code.expose().to_owned(),
                expires_at_ms: u.expires_at_ms,
            });
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
        if !req.pre_auth_marker.is_empty() && !valid_marker(&req.pre_auth_marker) {
            return Err(Status::invalid_argument(
                "pre_auth_marker must be the redirect's wxhub_pac value (16 hex digits)",
            ));
        }
        let marker = (!req.pre_auth_marker.is_empty()).then_some(req.pre_auth_marker.as_str());
        let result = self
            .engine
            .exchange_auth_code(&call.tenant, &req.auth_code, marker, call.deadline)
            .await;
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
        let appid = appid_arg("appid", &req.appid)?;
        let result = self.engine.authorizer(&call.tenant, appid).await;
        outcome(RPC, result.map(authorizer_reply))
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
        let after = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
        let result = self
            .engine
            .list_authorizers(&call.tenant, after, size)
            .await
            .map(|page| pb::ListAuthorizersResponse {
                authorizers: page.authorizers.into_iter().map(authorizer_reply).collect(),
                next_page_token: page.next.unwrap_or_default(),
                total: page.total,
            });
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
            .sync_authorizers(&call.tenant, call.deadline)
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
        let (cred, _) = Self::jsapi_credential(&call.tenant, &req.appid)?;
        let result = self
            .engine
            .jsapi_ticket(&call.tenant, &cred, call.deadline)
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
        http_url_arg("url", &req.url, 2048)?;
        let (cred, appid) = Self::jsapi_credential(&call.tenant, &req.appid)?;
        let result = self
            .engine
            .sign_jsapi_url(&call.tenant, &cred, appid, &req.url, call.deadline)
            .await
            .map(|s| pb::JsapiSignature {
                appid: s.appid,
                nonce_str: s.nonce_str,
                timestamp: s.timestamp,
                signature: s.signature,
                url: s.url,
            });
        outcome(RPC, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appids_are_restricted() {
        assert!(valid_appid("wx0123456789abcdef"));
        assert!(!valid_appid(""));
        assert!(!valid_appid("wx:1"));
        assert!(!valid_appid(&"a".repeat(65)));
    }
}
