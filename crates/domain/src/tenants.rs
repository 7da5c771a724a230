//! The tenants-and-clients file (a Kubernetes Secret in production), parsed and validated into
//! [`Tenants`]: every tenant's kind, appid, secret and message crypto, and the internal clients
//! with the tenants each may act for. (Reading the file and reloading it when it changes is the
//! service kit's `TenantsHandle`.)
//!
//! ```toml
//! [[tenants]]
//! id = "acme"                       # [a-z0-9-]{1,32}; appears in URLs, keys, routing keys
//! kind = "component"                # component | official_account | wecom
//! app_id = "wx..."                  # component appid, OA appid, or WeCom corpid (an AppId)
//! app_secret = "..."                # component appsecret, OA appsecret, or WeCom corpsecret
//! token = "..."                     # message verification token
//! encoding_aes_key = "..."          # 43 characters
//! previous_encoding_aes_key = "..." # optional, during key rotation
//! agent_id = "1000002"              # wecom only; a string or an integer (1000002)
//! plaintext = false                 # official_account only: accept WeChat's plaintext mode
//!
//! [[clients]]
//! name = "crm"
//! api_key_sha256 = "<64 hex>"       # SHA-256 of the client's API key
//! tenants = ["acme"]                # or ["*"] for every tenant (operators' tools)
//! relay_paths = ["/cgi-bin/menu/"]  # optional: WeChat path prefixes this client may call
//!                                   # through the relay (default: all but the deny-list)
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wxhub_crypto::{AesKey, Crypt};

use crate::id::{AppId, IdError, TenantId, truncate};
use crate::secret::Secret;

/// What kind of WeChat credential set a tenant is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantKind {
    /// A third-party platform; owns many authorizers.
    Component,
    /// A directly configured Official Account.
    OfficialAccount,
    /// A WeCom (企业微信) self-built application.
    Wecom,
}

impl TenantKind {
    /// As written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantKind::Component => "component",
            TenantKind::OfficialAccount => "official_account",
            TenantKind::Wecom => "wecom",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: TenantId,
    kind: TenantKind,
    app_id: String,
    app_secret: Secret,
    token: Secret,
    encoding_aes_key: Secret,
    #[serde(default)]
    previous_encoding_aes_key: Option<Secret>,
    #[serde(default, deserialize_with = "agent_id")]
    agent_id: Option<String>,
    #[serde(default)]
    plaintext: bool,
}

/// `agent_id` as written: operators copy it from the WeCom console as a number, so an integer
/// is accepted as well as a string (both become the decimal string).
fn agent_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum AgentId {
        Text(String),
        Number(u64),
    }
    match AgentId::deserialize(d) {
        Ok(AgentId::Text(s)) => Ok(Some(s)),
        Ok(AgentId::Number(n)) => Ok(Some(n.to_string())),
        Err(_) => Err(serde::de::Error::custom(
            "agent_id must be a string or a non-negative integer",
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: String,
    api_key_sha256: String,
    tenants: Vec<String>,
    #[serde(default)]
    relay_paths: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    tenants: Vec<RawTenant>,
    #[serde(default)]
    clients: Vec<RawClient>,
}

/// One tenant with its parsed message crypto.
pub struct Tenant {
    pub id: TenantId,
    pub kind: TenantKind,
    pub app_id: AppId,
    pub app_secret: Secret,
    pub agent_id: Option<String>,
    /// Accept WeChat's plaintext mode (no `encrypt_type`), whose signature covers only token,
    /// timestamp and nonce — not the body. Only an Official Account can opt in; component and
    /// WeCom callbacks are always encrypted.
    pub plaintext: bool,
    crypt: Crypt,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("app_id", &self.app_id)
            .field("agent_id", &self.agent_id)
            .field("plaintext", &self.plaintext)
            .finish_non_exhaustive()
    }
}

impl Tenant {
    /// Token, appid/corpid and keys for verifying and (de|en)crypting this tenant's callbacks.
    pub fn crypt(&self) -> &Crypt {
        &self.crypt
    }
}

/// Which tenants a client may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every tenant (operators' tools).
    All,
    /// Only these.
    Only(Vec<TenantId>),
}

/// An internal client of the gRPC APIs and the relay.
#[derive(Debug, Clone)]
pub struct Client {
    pub name: String,
    pub scope: Scope,
    /// WeChat path prefixes the client may call through the relay; `None`: every path but the
    /// relay's deny-list (credential-changing APIs).
    pub relay_paths: Option<Vec<String>>,
}

impl Client {
    /// Whether this client may act for `tenant`.
    pub fn may_access(&self, tenant: &str) -> bool {
        match &self.scope {
            Scope::All => true,
            Scope::Only(ids) => ids.iter().any(|t| t.as_str() == tenant),
        }
    }
}

/// Why a caller was not admitted to a tenant ([`Tenants::admit`]). The messages are the ones
/// every API answers with (token-control's gRPC, the relay's HTTP), naming no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// No `Bearer` key was presented.
    #[error("missing API key: send `authorization: Bearer <api key>`")]
    MissingKey,
    /// The key is not one of the file's clients.
    #[error("unknown API key")]
    UnknownKey,
    /// The tenant id is malformed.
    #[error("tenant must match [a-z0-9-]{{1,32}}")]
    BadTenant,
    /// The client may not act for the tenant.
    #[error("client {client:?} may not access tenant {tenant:?}")]
    Forbidden { client: String, tenant: String },
    /// No such tenant.
    #[error("unknown tenant {0:?}")]
    UnknownTenant(String),
}

/// A caller admitted to a tenant.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub client: Arc<Client>,
    pub tenant: Arc<Tenant>,
}

/// The API key of an `authorization` header value `Bearer <key>`, if there is one.
pub fn bearer_key(header: Option<&str>) -> Option<&str> {
    header
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// Why a tenants file was rejected. Messages name the entry and field, never a secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantsError {
    #[error("cannot read tenants file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("tenants file is not valid TOML: {0}")]
    Parse(String),
    #[error(transparent)]
    BadId(#[from] IdError),
    #[error("tenant {tenant:?}: {field}: {reason}")]
    BadTenant {
        tenant: String,
        field: &'static str,
        reason: String,
    },
    #[error("tenant id {0:?} appears more than once")]
    Duplicate(String),
    #[error("client {client:?}: {reason}")]
    BadClient { client: String, reason: String },
}

/// A validated snapshot of the tenants file.
#[derive(Debug, Default)]
pub struct Tenants {
    by_id: HashMap<String, Arc<Tenant>>,
    clients_by_key: HashMap<[u8; 32], Arc<Client>>,
}

impl Tenants {
    /// Parses and validates the file's text.
    pub fn from_toml(text: &str) -> Result<Self, TenantsError> {
        let raw: RawFile =
            toml::from_str(text).map_err(|e| TenantsError::Parse(e.message().to_owned()))?;
        let mut by_id = HashMap::new();
        for t in raw.tenants {
            let id = t.id.as_str().to_owned();
            let bad = |field, reason: String| TenantsError::BadTenant {
                tenant: id.clone(),
                field,
                reason,
            };
            let app_id = AppId::parse(&t.app_id).map_err(|e| bad("app_id", e.to_string()))?;
            if t.app_secret.is_empty() {
                return Err(bad("app_secret", "must not be empty".into()));
            }
            if t.token.is_empty() {
                return Err(bad("token", "must not be empty".into()));
            }
            let current = AesKey::parse(t.encoding_aes_key.expose())
                .map_err(|e| bad("encoding_aes_key", e.to_string()))?;
            let previous = match &t.previous_encoding_aes_key {
                Some(k) if !k.is_empty() => Some(
                    AesKey::parse(k.expose())
                        .map_err(|e| bad("previous_encoding_aes_key", e.to_string()))?,
                ),
                _ => None,
            };
            match (t.kind, &t.agent_id) {
                (TenantKind::Wecom, None) => {
                    return Err(bad("agent_id", "is required for kind = \"wecom\"".into()));
                }
                (TenantKind::Component | TenantKind::OfficialAccount, Some(_)) => {
                    return Err(bad("agent_id", "is only valid for kind = \"wecom\"".into()));
                }
                _ => {}
            }
            if t.plaintext && t.kind != TenantKind::OfficialAccount {
                return Err(bad(
                    "plaintext",
                    format!(
                        "is only valid for kind = \"official_account\" (WeChat always encrypts \
                         {} callbacks)",
                        if t.kind == TenantKind::Wecom {
                            "WeCom"
                        } else {
                            "third-party platform"
                        }
                    ),
                ));
            }
            let crypt = Crypt::new(t.token.expose(), app_id.to_string(), current, previous);
            let tenant = Tenant {
                id: t.id,
                kind: t.kind,
                app_id,
                app_secret: t.app_secret,
                agent_id: t.agent_id,
                plaintext: t.plaintext,
                crypt,
            };
            if by_id.insert(id.clone(), Arc::new(tenant)).is_some() {
                return Err(TenantsError::Duplicate(id));
            }
        }
        let mut clients_by_key = HashMap::new();
        for c in raw.clients {
            let bad = |reason: String| TenantsError::BadClient {
                client: c.name.clone(),
                reason,
            };
            let mut hash = [0u8; 32];
            hex::decode_to_slice(c.api_key_sha256.trim(), &mut hash)
                .map_err(|_| bad("api_key_sha256 must be 64 hex digits".into()))?;
            let scope = if c.tenants.iter().any(|t| t == "*") {
                Scope::All
            } else {
                let mut ids = Vec::new();
                for t in &c.tenants {
                    if !by_id.contains_key(t) {
                        return Err(bad(format!("unknown tenant {:?}", truncate(t))));
                    }
                    ids.push(TenantId::parse(t)?);
                }
                Scope::Only(ids)
            };
            if let Some(paths) = &c.relay_paths
                && let Some(p) = paths
                    .iter()
                    .find(|p| !p.starts_with('/') || p.len() > 256 || p.contains(".."))
            {
                return Err(bad(format!(
                    "relay_paths entry {:?} must start with '/' (at most 256 bytes, no '..')",
                    truncate(p)
                )));
            }
            let client = Arc::new(Client {
                name: c.name.clone(),
                scope,
                relay_paths: c.relay_paths.clone(),
            });
            if clients_by_key.insert(hash, client).is_some() {
                return Err(bad("another client has the same api key".into()));
            }
        }
        Ok(Self {
            by_id,
            clients_by_key,
        })
    }

    /// The tenant with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.by_id.get(id)
    }

    /// Every tenant, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.by_id.values()
    }

    /// Number of tenants.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The client presenting this API key, if any. Keys are compared by SHA-256, so the lookup
    /// reveals nothing about stored keys.
    pub fn authenticate(&self, api_key: &str) -> Option<&Arc<Client>> {
        if api_key.is_empty() {
            return None;
        }
        let hash: [u8; 32] = Sha256::digest(api_key.as_bytes()).into();
        self.clients_by_key.get(&hash)
    }
}

impl Tenants {
    /// The one admission check of every API: the `authorization` header's `Bearer` key names a
    /// client, `tenant` is a well-formed id, one of the client's tenants, and known. Checked in
    /// this order, so an unauthenticated caller learns nothing about tenants.
    pub fn admit(
        &self,
        authorization: Option<&str>,
        tenant: &str,
    ) -> Result<Admitted, AccessError> {
        let key = bearer_key(authorization).ok_or(AccessError::MissingKey)?;
        let client = self.authenticate(key).ok_or(AccessError::UnknownKey)?;
        if TenantId::parse(tenant).is_err() {
            return Err(AccessError::BadTenant);
        }
        if !client.may_access(tenant) {
            return Err(AccessError::Forbidden {
                client: client.name.clone(),
                tenant: tenant.to_owned(),
            });
        }
        let tenant = self
            .get(tenant)
            .cloned()
            .ok_or_else(|| AccessError::UnknownTenant(tenant.to_owned()))?;
        Ok(Admitted {
            client: client.clone(),
            tenant,
        })
    }
}

/// SHA-256 of an API key, hex-encoded, as stored in `api_key_sha256`.
pub fn api_key_sha256(api_key: &str) -> String {
    hex::encode(Sha256::digest(api_key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    fn file(extra: &str) -> String {
        format!(
            r#"
[[tenants]]
id = "acme"
kind = "component"
app_id = "wxcomp"
app_secret = "s3cret"
token = "tok"
encoding_aes_key = "{KEY}"

[[tenants]]
id = "corp-1"
kind = "wecom"
app_id = "ww123"
app_secret = "cs"
token = "tok2"
encoding_aes_key = "{KEY}"
agent_id = "1000002"

[[clients]]
name = "crm"
api_key_sha256 = "{}"
tenants = ["acme"]
{extra}"#,
            api_key_sha256("crm-key")
        )
    }

    #[test]
    fn loads_and_authenticates() {
        let t = Tenants::from_toml(&file("")).unwrap();
        assert_eq!(t.len(), 2);
        let acme = t.get("acme").unwrap();
        assert_eq!(acme.kind, TenantKind::Component);
        assert_eq!(acme.crypt().appid(), "wxcomp");
        let client = t.authenticate("crm-key").unwrap();
        assert!(client.may_access("acme"));
        assert!(!client.may_access("corp-1"));
        assert!(t.authenticate("wrong").is_none());
        assert!(t.authenticate("").is_none());
        assert!(!format!("{acme:?}").contains("s3cret"));
    }

    #[test]
    fn rejects_bad_entries_with_clear_messages() {
        let bad_key = file("").replace(
            &format!("encoding_aes_key = \"{KEY}\"\nagent_id"),
            "encoding_aes_key = \"short\"\nagent_id",
        );
        let err = Tenants::from_toml(&bad_key).unwrap_err().to_string();
        assert!(
            err.contains("corp-1") && err.contains("encoding_aes_key"),
            "{err}"
        );
        assert!(
            !err.contains("short"),
            "the key value must not be echoed: {err}"
        );

        let no_agent = file("").replace("agent_id = \"1000002\"\n", "");
        assert!(
            Tenants::from_toml(&no_agent)
                .unwrap_err()
                .to_string()
                .contains("agent_id")
        );

        let dup = file("").replace("id = \"corp-1\"", "id = \"acme\"");
        assert_eq!(
            Tenants::from_toml(&dup).unwrap_err(),
            TenantsError::Duplicate("acme".into())
        );

        let bad_id = file("").replace("id = \"acme\"", "id = \"ACME!\"");
        assert!(Tenants::from_toml(&bad_id).is_err());

        let unknown = file("").replace("tenants = [\"acme\"]", "tenants = [\"nobody\"]");
        assert!(
            Tenants::from_toml(&unknown)
                .unwrap_err()
                .to_string()
                .contains("nobody")
        );

        let typo = file("").replace("app_secret = \"cs\"", "app_secert = \"cs\"");
        assert!(Tenants::from_toml(&typo).is_err());
        assert!(Tenants::from_toml("not toml [").is_err());
    }

    #[test]
    fn agent_id_is_a_string_or_an_integer() {
        let as_int = file("").replace("agent_id = \"1000002\"", "agent_id = 1000002");
        let t = Tenants::from_toml(&as_int).unwrap();
        assert_eq!(
            t.get("corp-1").unwrap().agent_id.as_deref(),
            Some("1000002")
        );
        let t = Tenants::from_toml(&file("")).unwrap();
        assert_eq!(
            t.get("corp-1").unwrap().agent_id.as_deref(),
            Some("1000002")
        );
        for bad in ["-5", "1.5", "true", "[1]"] {
            let text = file("").replace("agent_id = \"1000002\"", &format!("agent_id = {bad}"));
            let err = Tenants::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains("agent_id"), "{bad}: {err}");
        }
    }

    #[test]
    fn plaintext_is_an_official_account_opt_in() {
        const OA: &str = "\n[[tenants]]\nid = \"oa\"\nkind = \"official_account\"\napp_id = \"wxoa\"\napp_secret = \"s\"\ntoken = \"t\"\nencoding_aes_key = \"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\"\n";
        let t = Tenants::from_toml(OA).unwrap();
        assert!(!t.get("oa").unwrap().plaintext, "off by default");
        let t = Tenants::from_toml(&format!("{OA}plaintext = true\n")).unwrap();
        assert!(t.get("oa").unwrap().plaintext);
        let t = Tenants::from_toml(&file("")).unwrap();
        assert!(t.iter().all(|t| !t.plaintext));
        for (tenant, after, what) in [
            ("acme", "encoding_aes_key = \"", "third-party platform"),
            ("corp-1", "agent_id = ", "WeCom"),
        ] {
            // `plaintext = true` on the line before `after` of that tenant.
            let text = file("");
            let start = text.find(&format!("id = \"{tenant}\"")).unwrap();
            let at = start + text[start..].find(after).unwrap();
            let text = format!("{}plaintext = true\n{}", &text[..at], &text[at..]);
            let err = Tenants::from_toml(&text).unwrap_err().to_string();
            assert!(
                err.contains(tenant) && err.contains("plaintext") && err.contains(what),
                "{err}"
            );
        }
    }

    #[test]
    fn admit_checks_key_tenant_id_scope_and_existence_in_order() {
        let extra = format!(
            "\n[[clients]]\nname = \"ops\"\napi_key_sha256 = \"{}\"\ntenants = [\"*\"]\nrelay_paths = [\"/cgi-bin/menu/\"]\n",
            api_key_sha256("ops-key")
        );
        let t = Tenants::from_toml(&file(&extra)).unwrap();
        assert_eq!(t.admit(None, "acme").unwrap_err(), AccessError::MissingKey);
        assert_eq!(
            t.admit(Some("Basic x"), "acme").unwrap_err(),
            AccessError::MissingKey
        );
        assert_eq!(
            t.admit(Some("Bearer nope"), "acme").unwrap_err(),
            AccessError::UnknownKey
        );
        assert_eq!(
            t.admit(Some("Bearer crm-key"), "A!").unwrap_err(),
            AccessError::BadTenant
        );
        assert!(matches!(
            t.admit(Some("Bearer crm-key"), "corp-1").unwrap_err(),
            AccessError::Forbidden { .. }
        ));
        assert_eq!(
            t.admit(Some("Bearer ops-key"), "nobody").unwrap_err(),
            AccessError::UnknownTenant("nobody".into())
        );
        let a = t.admit(Some("Bearer crm-key"), "acme").unwrap();
        assert_eq!(a.tenant.id.as_str(), "acme");
        assert_eq!(a.client.relay_paths, None);
        let ops = t.admit(Some("Bearer ops-key"), "corp-1").unwrap();
        assert_eq!(
            ops.client.relay_paths,
            Some(vec!["/cgi-bin/menu/".to_owned()])
        );
        let bad = file(&extra.replace("/cgi-bin/menu/", "cgi-bin"));
        assert!(
            Tenants::from_toml(&bad)
                .unwrap_err()
                .to_string()
                .contains("relay_paths")
        );
    }

    #[test]
    fn wildcard_client_sees_every_tenant() {
        let extra = format!(
            "\n[[clients]]\nname = \"ops\"\napi_key_sha256 = \"{}\"\ntenants = [\"*\"]\n",
            api_key_sha256("ops-key")
        );
        let t = Tenants::from_toml(&file(&extra)).unwrap();
        let ops = t.authenticate("ops-key").unwrap();
        assert!(ops.may_access("acme") && ops.may_access("corp-1") && ops.may_access("x"));
    }

    /// The tenants file's `app_id` follows the one appid rule (here: a corpid and appids pass,
    /// a value that is no WeChat id is refused naming the tenant and the field).
    #[test]
    fn app_ids_follow_the_one_rule() {
        let t = Tenants::from_toml(&file("")).unwrap();
        assert_eq!(t.get("corp-1").unwrap().app_id, "ww123");
        let bad = file("").replace("app_id = \"ww123\"", "app_id = \"corp 123\"");
        let err = Tenants::from_toml(&bad).unwrap_err().to_string();
        assert!(
            err.contains("corp-1") && err.contains("app_id") && err.contains("wx or ww"),
            "{err}"
        );
        let empty = file("").replace("app_id = \"wxcomp\"", "app_id = \"\"");
        assert!(
            Tenants::from_toml(&empty)
                .unwrap_err()
                .to_string()
                .contains("app_id")
        );
    }
}
