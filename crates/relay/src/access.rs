//! What a relay call may do, decided before anything is sent: the caller is admitted to the
//! tenant (the tenants file's one check, shared with token-control), the WeChat path is well
//! formed and inside the client's allow-list, the query carries no credential of the caller's,
//! and the appid names an account of the tenant, which fixes the host and the credential.
//!
//! Every refusal is a [`Refusal`]: an HTTP status, a stable reason label for metrics and a
//! message that names what was wrong (never a secret). Nothing refused here reaches WeChat.

use axum::http::StatusCode;
use wxhub_runtime::{AccessError, Client, Tenant, TenantKind};
use wxhub_wechat_api::Host;

/// Longest WeChat path accepted.
const MAX_PATH: usize = 256;

/// Paths no client reaches unless its allow-list names them: they mint, rotate or expose
/// credentials that token-control owns (a second minter breaks its one-authority guarantee), or
/// spend the monthly quota resets.
pub const DENY_LIST: &[&str] = &[
    "/cgi-bin/token",
    "/cgi-bin/stable_token",
    "/cgi-bin/gettoken",
    "/cgi-bin/ticket/getticket",
    "/cgi-bin/component/api_component_token",
    "/cgi-bin/component/api_authorizer_token",
    "/cgi-bin/component/api_query_auth",
    "/cgi-bin/component/api_get_authorizer_list",
    "/cgi-bin/component/api_create_preauthcode",
    "/cgi-bin/component/api_start_push_ticket",
    "/cgi-bin/component/clear_quota",
    "/cgi-bin/clear_quota",
    "/cgi-bin/openapi/quota/clear",
];

/// Paths called with the component's credential (`component_access_token` and
/// `component_appid`) rather than an account's `access_token`.
const COMPONENT_SCOPED: &[&str] = &[
    "/cgi-bin/component/",
    "/sns/oauth2/component/",
    "/sns/component/",
];

/// Whether `path` is called with the component's credential.
pub fn component_scoped(path: &str) -> bool {
    COMPONENT_SCOPED.iter().any(|p| path.starts_with(p))
}

/// A refused call.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    /// Stable label (metrics, the JSON `error` field).
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
        }
    }
}

impl From<AccessError> for Refusal {
    fn from(e: AccessError) -> Self {
        let (status, reason) = match &e {
            AccessError::MissingKey | AccessError::UnknownKey => {
                (StatusCode::UNAUTHORIZED, "unauthenticated")
            }
            AccessError::BadTenant => (StatusCode::BAD_REQUEST, "bad_tenant"),
            AccessError::Forbidden { .. } => (StatusCode::FORBIDDEN, "permission_denied"),
            AccessError::UnknownTenant(_) => (StatusCode::NOT_FOUND, "unknown_tenant"),
        };
        Self::new(status, reason, e.to_string())
    }
}

/// `/` + the path after `/v1/{tenant}/{appid}`, if it is a plain WeChat API path: ASCII
/// letters, digits and `_-./`, no empty, `.` or `..` segment, at most 256 bytes.
pub fn wechat_path(rest: &str) -> Result<String, Refusal> {
    let path = format!("/{rest}");
    let bad = |why: &str| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_path",
            format!("the WeChat path {why}"),
        )
    };
    if rest.is_empty() {
        return Err(bad("is missing: /v1/{tenant}/{appid}/{wechat path}"));
    }
    if path.len() > MAX_PATH {
        return Err(bad("is longer than 256 bytes"));
    }
    if !path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'.'))
    {
        return Err(bad("may hold only ASCII letters, digits and _-./"));
    }
    if path[1..]
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(bad("has an empty, '.' or '..' segment"));
    }
    Ok(path)
}

/// Whether `client` may call `path`: its allow-list's prefixes, or else everything but
/// [`DENY_LIST`].
pub fn allowed(client: &Client, path: &str) -> Result<(), Refusal> {
    let ok = match &client.relay_paths {
        Some(prefixes) => prefixes.iter().any(|p| path.starts_with(p.as_str())),
        None => !DENY_LIST.iter().any(|d| {
            path.strip_prefix(d)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        }),
    };
    if ok {
        Ok(())
    } else {
        Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "path_not_allowed",
            format!(
                "client {:?} may not call {path} through the relay ({})",
                client.name,
                if client.relay_paths.is_some() {
                    "outside its relay_paths"
                } else {
                    "credential-changing APIs are token-control's"
                }
            ),
        ))
    }
}

/// The caller's query pairs, refusing credentials: the relay adds the credential, and a caller
/// holding a token of its own is exactly what it exists to end. A `component_appid` other than
/// the tenant's is refused too; the relay sets it.
pub fn caller_query(raw: Option<&str>) -> Result<Vec<(String, String)>, Refusal> {
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    if let Some((k, _)) = pairs
        .iter()
        .find(|(k, _)| k == "access_token" || k == "component_access_token")
    {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "caller_token",
            format!("remove `{k}` from the query: the relay adds the credential itself"),
        ));
    }
    Ok(pairs)
}

/// The credential a call is made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// The tenant's own token: an Official Account's, a WeCom app's, or the component's
    /// (component-scoped paths).
    Own,
    /// An authorizer's access token.
    Authorizer(String),
    /// The component's token for a component-scoped path about an authorizer (`appid` is
    /// added to the query when the caller left it out).
    ComponentFor(String),
}

/// Where and with what a call goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: Host,
    pub credential: Credential,
    /// Query name of the credential (`access_token` or `component_access_token`).
    pub token_param: &'static str,
    /// `component_appid` to add (component credential).
    pub component_appid: Option<String>,
}

impl Target {
    /// The appid token-control is asked about (empty: the tenant's own token).
    pub fn token_appid(&self) -> &str {
        match &self.credential {
            Credential::Authorizer(a) => a,
            Credential::Own | Credential::ComponentFor(_) => "",
        }
    }
}

/// The target of `appid` (`-`: the tenant's own account) and `path` in `tenant`.
pub fn target(tenant: &Tenant, appid: &str, path: &str) -> Result<Target, Refusal> {
    let own = appid == "-" || appid == tenant.app_id.as_str();
    if !own && !wxhub_runtime::AppId::is_valid(appid) {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_appid",
            "appid must be '-' (the tenant's own account) or match (wx|ww)[A-Za-z0-9_-]{1,30}",
        ));
    }
    let scoped = component_scoped(path);
    match tenant.kind {
        TenantKind::Component => {
            let component = Some(tenant.app_id.to_string());
            if own {
                if !scoped {
                    return Err(Refusal::new(
                        StatusCode::BAD_REQUEST,
                        "not_component_scoped",
                        format!(
                            "{path} is an account API: name the authorizer's appid instead of the \
                             component"
                        ),
                    ));
                }
                Ok(Target {
                    host: Host::Api,
                    credential: Credential::Own,
                    token_param: "component_access_token",
                    component_appid: component,
                })
            } else if scoped {
                Ok(Target {
                    host: Host::Api,
                    credential: Credential::ComponentFor(appid.to_owned()),
                    token_param: "component_access_token",
                    component_appid: component,
                })
            } else {
                Ok(Target {
                    host: Host::Api,
                    credential: Credential::Authorizer(appid.to_owned()),
                    token_param: "access_token",
                    component_appid: None,
                })
            }
        }
        kind @ (TenantKind::OfficialAccount | TenantKind::Wecom) => {
            if !own {
                return Err(Refusal::new(
                    StatusCode::NOT_FOUND,
                    "unknown_appid",
                    format!(
                        "tenant {:?} is one account ({}): use '-' or {}",
                        tenant.id.as_str(),
                        tenant.app_id,
                        tenant.app_id
                    ),
                ));
            }
            if scoped {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "component_scoped",
                    format!("{path} is a third-party-platform API; tenant is not a component"),
                ));
            }
            Ok(Target {
                host: if kind == TenantKind::Wecom {
                    Host::Qyapi
                } else {
                    Host::Api
                },
                credential: Credential::Own,
                token_param: "access_token",
                component_appid: None,
            })
        }
    }
}

/// The metric label of a path: its first two segments when the API family is a known one,
/// else `{first}/other` — bounded, whatever paths callers send.
pub fn family(path: &str) -> &'static str {
    const FAMILIES: &[&str] = &[
        "cgi-bin/menu",
        "cgi-bin/media",
        "cgi-bin/material",
        "cgi-bin/message",
        "cgi-bin/user",
        "cgi-bin/tags",
        "cgi-bin/qrcode",
        "cgi-bin/component",
        "cgi-bin/customservice",
        "cgi-bin/template",
        "cgi-bin/shorturl",
        "cgi-bin/get_current_selfmenu_info",
        "cgi-bin/agent",
        "cgi-bin/department",
        "cgi-bin/appchat",
        "cgi-bin/externalcontact",
        "sns/oauth2",
        "sns/userinfo",
        "sns/component",
        "wxa/getwxacode",
        "wxa/business",
        "datacube/getusersummary",
    ];
    let trimmed = path.trim_start_matches('/');
    let two: String = trimmed.splitn(3, '/').take(2).collect::<Vec<_>>().join("/");
    if let Some(f) = FAMILIES.iter().find(|f| **f == two) {
        return f;
    }
    match trimmed.split('/').next() {
        Some("cgi-bin") => "cgi-bin/other",
        Some("sns") => "sns/other",
        Some("wxa") => "wxa/other",
        Some("datacube") => "datacube/other",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wxhub_runtime::Tenants;
    use wxhub_runtime::tenants::Scope;

    fn client(paths: Option<Vec<&str>>) -> Client {
        Client {
            name: "crm".into(),
            scope: Scope::All,
            relay_paths: paths.map(|p| p.into_iter().map(str::to_owned).collect()),
        }
    }

    #[test]
    fn paths_are_plain_api_paths() {
        assert_eq!(
            wechat_path("cgi-bin/menu/get").unwrap(),
            "/cgi-bin/menu/get"
        );
        for bad in [
            "",
            "cgi-bin/../token",
            "cgi-bin//menu",
            "cgi-bin/menu/",
            "cgi-bin/./menu",
            "cgi-bin/menu?x",
            "cgi-bin/me%6eu",
            "cgi-bin/menu get",
        ] {
            assert!(wechat_path(bad).is_err(), "{bad:?}");
        }
        assert!(wechat_path(&"a".repeat(300)).is_err());
    }

    #[test]
    fn the_deny_list_guards_credentials_unless_an_allow_list_says_otherwise() {
        let default = client(None);
        assert!(allowed(&default, "/cgi-bin/menu/create").is_ok());
        assert!(allowed(&default, "/cgi-bin/tokenizer").is_ok());
        for denied in [
            "/cgi-bin/token",
            "/cgi-bin/token/",
            "/cgi-bin/token/more",
            "/cgi-bin/component/api_query_auth",
            "/cgi-bin/clear_quota",
        ] {
            let r = allowed(&default, denied).unwrap_err();
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{denied}");
        }
        let menus = client(Some(vec!["/cgi-bin/menu/"]));
        assert!(allowed(&menus, "/cgi-bin/menu/get").is_ok());
        let r = allowed(&menus, "/cgi-bin/media/get").unwrap_err();
        assert!(r.message.contains("relay_paths"), "{}", r.message);
    }

    #[test]
    fn callers_may_not_bring_a_token() {
        assert_eq!(
            caller_query(Some("agentid=1&type=image")).unwrap(),
            vec![
                ("agentid".into(), "1".into()),
                ("type".into(), "image".into())
            ]
        );
        for q in [
            "access_token=x",
            "a=1&component_access_token=y",
            "access_token=",
        ] {
            let r = caller_query(Some(q)).unwrap_err();
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}");
            assert_eq!(r.reason, "caller_token");
        }
    }

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    fn tenants() -> Tenants {
        Tenants::from_toml(&format!(
            "[[tenants]]\nid = \"acme\"\nkind = \"component\"\napp_id = \"wxcomp\"\napp_secret = \"s\"\ntoken = \"t\"\nencoding_aes_key = \"{KEY}\"\n\n\
             [[tenants]]\nid = \"oa\"\nkind = \"official_account\"\napp_id = \"wxoa\"\napp_secret = \"s\"\ntoken = \"t\"\nencoding_aes_key = \"{KEY}\"\n\n\
             [[tenants]]\nid = \"corp\"\nkind = \"wecom\"\napp_id = \"wwcorp\"\napp_secret = \"s\"\ntoken = \"t\"\nencoding_aes_key = \"{KEY}\"\nagent_id = 1000002\n"
        ))
        .unwrap()
    }

    #[test]
    fn targets_follow_the_tenant_kind() {
        let t = tenants();
        let acme = t.get("acme").unwrap();
        let a = target(acme, "wxa1", "/cgi-bin/menu/get").unwrap();
        assert_eq!(a.credential, Credential::Authorizer("wxa1".into()));
        assert_eq!((a.host, a.token_param), (Host::Api, "access_token"));
        let c = target(acme, "wxa1", "/sns/oauth2/component/access_token").unwrap();
        assert_eq!(c.credential, Credential::ComponentFor("wxa1".into()));
        assert_eq!(c.component_appid.as_deref(), Some("wxcomp"));
        assert_eq!(c.token_appid(), "");
        let own = target(acme, "-", "/cgi-bin/component/api_get_authorizer_info").unwrap();
        assert_eq!(own.credential, Credential::Own);
        assert_eq!(
            target(acme, "-", "/cgi-bin/menu/get").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            target(acme, "not an appid", "/x").unwrap_err().reason,
            "bad_appid"
        );

        let oa = t.get("oa").unwrap();
        assert_eq!(
            target(oa, "-", "/cgi-bin/menu/get").unwrap().host,
            Host::Api
        );
        assert_eq!(
            target(oa, "wxoa", "/cgi-bin/menu/get").unwrap().credential,
            Credential::Own
        );
        assert_eq!(
            target(oa, "wxother", "/cgi-bin/menu/get")
                .unwrap_err()
                .status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            target(oa, "-", "/cgi-bin/component/x").unwrap_err().reason,
            "component_scoped"
        );
        let corp = t.get("corp").unwrap();
        assert_eq!(
            target(corp, "-", "/cgi-bin/menu/get").unwrap().host,
            Host::Qyapi
        );
    }

    #[test]
    fn families_are_bounded() {
        assert_eq!(family("/cgi-bin/menu/create"), "cgi-bin/menu");
        assert_eq!(
            family("/cgi-bin/get_current_selfmenu_info"),
            "cgi-bin/get_current_selfmenu_info"
        );
        assert_eq!(family("/cgi-bin/random123/x"), "cgi-bin/other");
        assert_eq!(family("/whatever/x"), "other");
    }
}
