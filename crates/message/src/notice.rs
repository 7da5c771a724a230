//! Notices pushed to the component's authorization-event URL (wechat-protocol.md §2.2, §2.4).

use crate::MessageError;
use crate::inbound::{
    Generic, digest64, hex64, opt, opt_i64, required, required_i64, routing_word, text,
};
use crate::xml::{Element, Limits, parse_document};

/// An `authorized` / `updateauthorized` notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The component appid.
    pub app_id: String,
    pub create_time: i64,
    pub authorizer_appid: String,
    /// Exchange with `api_query_auth`.
    pub authorization_code: String,
    /// As sent (absolute unix time in practice).
    pub authorization_code_expired_time: Option<i64>,
    pub pre_auth_code: String,
}

/// The fast-registration and filing notices (`notify_third_fasteregister`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    pub info_type: String,
    pub app_id: String,
    pub create_time: i64,
    /// The created mini program's appid, when present.
    pub appid: Option<String>,
    /// `0` means success.
    pub status: Option<i64>,
    /// Exchange with `api_query_auth` when status is 0.
    pub auth_code: Option<String>,
    pub msg: Option<String>,
    /// Leaf fields of the `info` element.
    pub info: Vec<(String, String)>,
    pub generic: Generic,
}

/// A notice of the component (it carries `InfoType`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentNotice {
    /// `component_verify_ticket`, every 10 minutes; valid 12 hours.
    VerifyTicket {
        app_id: String,
        create_time: i64,
        ticket: String,
    },
    /// `authorized`
    Authorized(Authorization),
    /// `updateauthorized`
    UpdateAuthorized(Authorization),
    /// `unauthorized`
    Unauthorized {
        app_id: String,
        create_time: i64,
        authorizer_appid: String,
    },
    /// `notify_*` registration, verification and filing notices.
    Notify(Notify),
    /// Any other InfoType, kept whole (acknowledge and log it).
    Other {
        info_type: String,
        app_id: String,
        create_time: i64,
        generic: Generic,
    },
}

impl ComponentNotice {
    /// The InfoType as sent.
    pub fn info_type(&self) -> &str {
        match self {
            ComponentNotice::VerifyTicket { .. } => "component_verify_ticket",
            ComponentNotice::Authorized(_) => "authorized",
            ComponentNotice::UpdateAuthorized(_) => "updateauthorized",
            ComponentNotice::Unauthorized { .. } => "unauthorized",
            ComponentNotice::Notify(n) => &n.info_type,
            ComponentNotice::Other { info_type, .. } => info_type,
        }
    }

    /// The component appid the notice is for.
    pub fn app_id(&self) -> &str {
        match self {
            ComponentNotice::VerifyTicket { app_id, .. }
            | ComponentNotice::Unauthorized { app_id, .. }
            | ComponentNotice::Other { app_id, .. } => app_id,
            ComponentNotice::Authorized(a) | ComponentNotice::UpdateAuthorized(a) => &a.app_id,
            ComponentNotice::Notify(n) => &n.app_id,
        }
    }

    /// `CreateTime`.
    pub fn create_time(&self) -> i64 {
        match self {
            ComponentNotice::VerifyTicket { create_time, .. }
            | ComponentNotice::Unauthorized { create_time, .. }
            | ComponentNotice::Other { create_time, .. } => *create_time,
            ComponentNotice::Authorized(a) | ComponentNotice::UpdateAuthorized(a) => a.create_time,
            ComponentNotice::Notify(n) => n.create_time,
        }
    }

    /// The authorizer the notice is about, if any.
    pub fn authorizer_appid(&self) -> Option<&str> {
        match self {
            ComponentNotice::Authorized(a) | ComponentNotice::UpdateAuthorized(a) => {
                Some(&a.authorizer_appid)
            }
            ComponentNotice::Unauthorized {
                authorizer_appid, ..
            } => Some(authorizer_appid),
            ComponentNotice::Notify(n) => n.appid.as_deref(),
            _ => None,
        }
    }

    /// Routing kind: the InfoType lower-cased, as a safe routing-key word.
    pub fn routing_kind(&self) -> String {
        routing_word(self.info_type())
    }

    /// Retry-dedupe key: identical for a WeChat retry, different for any two distinct notices.
    /// It starts `info:{InfoType}:{CreateTime}`, then:
    ///
    /// - `component_verify_ticket`: `:{digest of the ticket}` — every push carries a new ticket;
    ///   the ticket itself is a credential and stays out of the key (it becomes the AMQP
    ///   `message_id` and consumers' Redis markers);
    /// - `authorized` / `updateauthorized`: `:{AuthorizerAppid}:{digest of AuthorizationCode}` —
    ///   a new authorization always has a new code (also a credential);
    /// - `unauthorized`: `:{AuthorizerAppid}` — the notice has no other field: two revocations
    ///   of one authorizer in one second would be byte-identical, as indistinguishable from a
    ///   retry as they are to any reader;
    /// - `notify_*`: `[:{appid}]:{digest of the notice}`, and any other InfoType
    ///   `:{digest of the notice}` — the protocol gives them no id, and a retry is the identical
    ///   message.
    ///
    /// Digests are the first 64 bits of SHA-1 in 16 hex digits.
    pub fn dedupe_key(&self) -> String {
        let mut key = format!("info:{}:{}", self.info_type(), self.create_time());
        let mut push = |part: &str| {
            key.push(':');
            key.push_str(part);
        };
        match self {
            ComponentNotice::VerifyTicket { ticket, .. } => push(&hex64(digest64(ticket))),
            ComponentNotice::Authorized(a) | ComponentNotice::UpdateAuthorized(a) => {
                push(&a.authorizer_appid);
                push(&hex64(digest64(&a.authorization_code)));
            }
            ComponentNotice::Unauthorized {
                authorizer_appid, ..
            } => push(authorizer_appid),
            ComponentNotice::Notify(n) => {
                if let Some(appid) = n.appid.as_deref().filter(|a| !a.is_empty()) {
                    push(appid);
                }
                push(&hex64(digest64(&n.generic.raw)));
            }
            ComponentNotice::Other { generic, .. } => push(&hex64(digest64(&generic.raw))),
        }
        key
    }
}

/// Parses a decrypted component notice.
pub fn parse_notice(xml: &str) -> Result<ComponentNotice, MessageError> {
    let root = parse_document(xml, &Limits::default())?;
    from_element(&root, xml)
}

pub(crate) fn from_element(root: &Element<'_>, raw: &str) -> Result<ComponentNotice, MessageError> {
    let info_type = required(root, "InfoType")?;
    let app_id = required(root, "AppId")?;
    let create_time = required_i64(root, "CreateTime")?;
    let authorization = |app_id: String| -> Result<Authorization, MessageError> {
        Ok(Authorization {
            app_id,
            create_time,
            authorizer_appid: required(root, "AuthorizerAppid")?,
            authorization_code: required(root, "AuthorizationCode")?,
            authorization_code_expired_time: opt_i64(
                root,
                "AuthorizationCodeExpiredTime",
                "AuthorizationCodeExpiredTime",
            )?,
            pre_auth_code: text(root, "PreAuthCode"),
        })
    };
    Ok(match info_type.as_str() {
        "component_verify_ticket" => ComponentNotice::VerifyTicket {
            app_id,
            create_time,
            ticket: required(root, "ComponentVerifyTicket")?,
        },
        "authorized" => ComponentNotice::Authorized(authorization(app_id)?),
        "updateauthorized" => ComponentNotice::UpdateAuthorized(authorization(app_id)?),
        "unauthorized" => ComponentNotice::Unauthorized {
            app_id,
            create_time,
            authorizer_appid: required(root, "AuthorizerAppid")?,
        },
        t if t.starts_with("notify_") => ComponentNotice::Notify(Notify {
            info_type: info_type.clone(),
            app_id,
            create_time,
            appid: opt(root, "appid"),
            status: opt_i64(root, "status", "status")?,
            auth_code: opt(root, "auth_code"),
            msg: opt(root, "msg"),
            info: root
                .child("info")
                .map(|i| {
                    i.children()
                        .iter()
                        .filter(|c| c.is_leaf())
                        .map(|c| (c.name().to_owned(), c.text().to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
            generic: Generic::from_element(root, raw),
        }),
        _ => ComponentNotice::Other {
            info_type: info_type.clone(),
            app_id,
            create_time,
            generic: Generic::from_element(root, raw),
        },
    })
}
