//! The callback pusher: builds WeChat's XML, signs and encrypts it exactly as WeChat does, posts
//! it with WeChat's retry policy and decodes the receiver's reply.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wxhub_crypto::{Crypt, KeySlot, msg_signature, signature};
use wxhub_message::{Limits, parse_envelope};

use crate::SimError;
use crate::clock::VirtualClock;
use crate::seed::Encryption;
use crate::state::Interaction;

/// A message or event a user "sends" to an account (wechat-protocol.md §3.3, §3.4).
///
/// As JSON: `{"msgtype":"text","content":"hi"}`,
/// `{"msgtype":"event","event":"LOCATION","fields":{"Latitude":"23.1"}}`,
/// `{"msgtype":"raw","xml":"<xml>...</xml>"}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "msgtype", rename_all = "lowercase", deny_unknown_fields)]
pub enum MessageSpec {
    /// A text message.
    Text {
        /// `Content`.
        content: String,
    },
    /// An image message.
    Image {
        /// `PicUrl`.
        #[serde(default = "default_pic_url")]
        pic_url: String,
        /// `MediaId`.
        #[serde(default = "default_media_id")]
        media_id: String,
    },
    /// A voice message.
    Voice {
        /// `MediaId`.
        #[serde(default = "default_media_id")]
        media_id: String,
        /// `Format` (amr, speex).
        #[serde(default = "default_format")]
        format: String,
        /// `Recognition`, when voice recognition is on.
        #[serde(default)]
        recognition: Option<String>,
    },
    /// A video message.
    Video {
        /// `MediaId`.
        #[serde(default = "default_media_id")]
        media_id: String,
        /// `ThumbMediaId`.
        #[serde(default = "default_media_id")]
        thumb_media_id: String,
    },
    /// A short video message.
    Shortvideo {
        /// `MediaId`.
        #[serde(default = "default_media_id")]
        media_id: String,
        /// `ThumbMediaId`.
        #[serde(default = "default_media_id")]
        thumb_media_id: String,
    },
    /// A location message.
    Location {
        /// `Location_X` (latitude).
        location_x: f64,
        /// `Location_Y` (longitude).
        location_y: f64,
        /// `Scale`.
        #[serde(default = "default_scale")]
        scale: u32,
        /// `Label`.
        #[serde(default)]
        label: String,
    },
    /// A link message.
    Link {
        /// `Title`.
        title: String,
        /// `Description`.
        #[serde(default)]
        description: String,
        /// `Url`.
        url: String,
    },
    /// Any event: `Event`, optional `EventKey`, further leaf fields, and raw XML for nested
    /// structures (`ScanCodeInfo`, `SendPicsInfo`, ...).
    Event {
        /// `Event` exactly as WeChat sends it (`subscribe`, `SCAN`, `LOCATION`, `CLICK`, ...).
        event: String,
        /// `EventKey`.
        #[serde(default)]
        event_key: Option<String>,
        /// Further leaf elements, written in order.
        #[serde(default)]
        fields: BTreeMap<String, String>,
        /// A raw XML fragment appended before `</xml>`.
        #[serde(default)]
        extra_xml: Option<String>,
    },
    /// A complete plaintext XML document, pushed as is.
    Raw {
        /// The document.
        xml: String,
    },
}

fn default_pic_url() -> String {
    "http://mmbiz.qpic.cn/sim/0".into()
}
fn default_media_id() -> String {
    "media_id_sim".into()
}
fn default_format() -> String {
    "amr".into()
}
fn default_scale() -> u32 {
    20
}

impl MessageSpec {
    /// A text message.
    pub fn text(content: impl Into<String>) -> Self {
        Self::Text {
            content: content.into(),
        }
    }

    /// An event with no extra fields.
    pub fn event(event: impl Into<String>) -> Self {
        Self::Event {
            event: event.into(),
            event_key: None,
            fields: BTreeMap::new(),
            extra_xml: None,
        }
    }

    /// Adds a leaf field to an event (no effect on other kinds).
    pub fn field(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        if let Self::Event { fields, .. } = &mut self {
            fields.insert(name.into(), value.into());
        }
        self
    }

    /// Sets the `EventKey` of an event (no effect on other kinds).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        if let Self::Event { event_key, .. } = &mut self {
            *event_key = Some(key.into());
        }
        self
    }

    /// `subscribe`.
    pub fn subscribe() -> Self {
        Self::event("subscribe")
    }

    /// `unsubscribe`.
    pub fn unsubscribe() -> Self {
        Self::event("unsubscribe")
    }

    /// `SCAN` of a parametric QR code.
    pub fn scan(scene: impl Into<String>, ticket: impl Into<String>) -> Self {
        Self::event("SCAN").key(scene).field("Ticket", ticket)
    }

    /// `LOCATION` report.
    pub fn location_event(latitude: f64, longitude: f64, precision: f64) -> Self {
        Self::event("LOCATION")
            .field("Latitude", format!("{latitude:.6}"))
            .field("Longitude", format!("{longitude:.6}"))
            .field("Precision", format!("{precision:.6}"))
    }

    /// `CLICK` on a menu.
    pub fn click(key: impl Into<String>) -> Self {
        Self::event("CLICK").key(key)
    }

    /// `VIEW` of a menu link.
    pub fn view(url: impl Into<String>) -> Self {
        Self::event("VIEW").key(url)
    }

    /// `TEMPLATESENDJOBFINISH` for an earlier template message.
    pub fn template_send_job_finish(msg_id: u64, status: impl Into<String>) -> Self {
        Self::event("TEMPLATESENDJOBFINISH")
            .field("MsgID", msg_id.to_string())
            .field("Status", status)
    }

    /// Whether the message carries a `MsgId` (normal messages do, events do not).
    pub fn has_msg_id(&self) -> bool {
        !matches!(self, Self::Event { .. } | Self::Raw { .. })
    }

    /// What this does to the customer-service window (§5.1).
    pub(crate) fn interaction(&self) -> Interaction {
        match self {
            Self::Event { event, .. } => event_interaction(event),
            Self::Raw { xml } => match wxhub_message::parse_message(xml) {
                Ok(m) => match m.event() {
                    Some(e) => event_interaction(e),
                    None => Interaction::Message,
                },
                Err(_) => Interaction::None,
            },
            _ => Interaction::Message,
        }
    }

    /// The plaintext XML as WeChat would push it.
    pub fn to_xml(&self, to: &str, from: &str, create_time: i64, msg_id: u64) -> String {
        if let Self::Raw { xml } = self {
            return xml.clone();
        }
        let mut out = String::with_capacity(384);
        out.push_str("<xml>");
        cdata_el(&mut out, "ToUserName", to);
        cdata_el(&mut out, "FromUserName", from);
        let _ = write!(out, "<CreateTime>{create_time}</CreateTime>");
        let msg_type = match self {
            Self::Text { .. } => "text",
            Self::Image { .. } => "image",
            Self::Voice { .. } => "voice",
            Self::Video { .. } => "video",
            Self::Shortvideo { .. } => "shortvideo",
            Self::Location { .. } => "location",
            Self::Link { .. } => "link",
            Self::Event { .. } | Self::Raw { .. } => "event",
        };
        cdata_el(&mut out, "MsgType", msg_type);
        match self {
            Self::Text { content } => cdata_el(&mut out, "Content", content),
            Self::Image { pic_url, media_id } => {
                cdata_el(&mut out, "PicUrl", pic_url);
                cdata_el(&mut out, "MediaId", media_id);
            }
            Self::Voice {
                media_id,
                format,
                recognition,
            } => {
                cdata_el(&mut out, "MediaId", media_id);
                cdata_el(&mut out, "Format", format);
                if let Some(r) = recognition {
                    cdata_el(&mut out, "Recognition", r);
                }
            }
            Self::Video {
                media_id,
                thumb_media_id,
            }
            | Self::Shortvideo {
                media_id,
                thumb_media_id,
            } => {
                cdata_el(&mut out, "MediaId", media_id);
                cdata_el(&mut out, "ThumbMediaId", thumb_media_id);
            }
            Self::Location {
                location_x,
                location_y,
                scale,
                label,
            } => {
                let _ = write!(
                    out,
                    "<Location_X>{location_x}</Location_X><Location_Y>{location_y}</Location_Y><Scale>{scale}</Scale>"
                );
                cdata_el(&mut out, "Label", label);
            }
            Self::Link {
                title,
                description,
                url,
            } => {
                cdata_el(&mut out, "Title", title);
                cdata_el(&mut out, "Description", description);
                cdata_el(&mut out, "Url", url);
            }
            Self::Event {
                event,
                event_key,
                fields,
                extra_xml,
            } => {
                cdata_el(&mut out, "Event", event);
                if let Some(key) = event_key {
                    cdata_el(&mut out, "EventKey", key);
                }
                for (name, value) in fields {
                    cdata_el(&mut out, name, value);
                }
                if let Some(extra) = extra_xml {
                    out.push_str(extra);
                }
            }
            Self::Raw { .. } => {}
        }
        if self.has_msg_id() {
            let _ = write!(out, "<MsgId>{msg_id}</MsgId>");
        }
        out.push_str("</xml>");
        out
    }
}

fn event_interaction(event: &str) -> Interaction {
    match event.to_ascii_lowercase().as_str() {
        "subscribe" | "scan" | "click" | "scancode_push" | "scancode_waitmsg" => Interaction::Event,
        "unsubscribe" => Interaction::Unsubscribe,
        "user_enter_tempsession" => Interaction::EnterSession,
        _ => Interaction::None,
    }
}

/// Writes `<name><![CDATA[value]]></name>`, splitting any `]]>` in the value.
pub(crate) fn cdata_el(out: &mut String, name: &str, value: &str) {
    let _ = write!(
        out,
        "<{name}><![CDATA[{}]]></{name}>",
        value.replace("]]>", "]]]]><![CDATA[>")
    );
}

/// Which envelope a push uses.
#[derive(Debug, Clone)]
pub(crate) enum Envelope {
    /// Component authorization-event URL: `<AppId>` + `<Encrypt>`, always encrypted.
    Component { appid: String },
    /// A message URL: `<ToUserName>` + `<Encrypt>`, `openid` in the query.
    Account {
        to_user_name: String,
        openid: String,
    },
    /// WeCom: `<ToUserName>` (corpid) + `<AgentID>` + `<Encrypt>`, only `msg_signature`.
    WeCom { corpid: String, agentid: u64 },
}

/// One signed, framed request ready to post (possibly several times).
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub url: String,
    pub body: String,
    pub crypt: Crypt,
    pub encryption: Encryption,
    pub plaintext: String,
}

/// Builds the query and body exactly as WeChat does. `timestamp` is real wall-clock seconds.
pub(crate) fn frame(
    base_url: &str,
    crypt: &Crypt,
    envelope: &Envelope,
    encryption: Encryption,
    plaintext: &str,
    timestamp: i64,
) -> Result<Outgoing, String> {
    let mut url = url::Url::parse(base_url).map_err(|e| format!("bad push URL: {e}"))?;
    let timestamp = timestamp.to_string();
    let nonce = numeric_nonce();
    let encryption = match envelope {
        Envelope::Component { .. } | Envelope::WeCom { .. } => Encryption::Safe,
        Envelope::Account { .. } => encryption,
    };
    let encrypt = match encryption {
        Encryption::Plain => None,
        _ => Some(crypt.encrypt(plaintext.as_bytes(), KeySlot::Current)),
    };
    {
        let mut q = url.query_pairs_mut();
        match envelope {
            Envelope::WeCom { .. } => {
                let encrypt = encrypt.as_deref().unwrap_or_default();
                q.append_pair(
                    "msg_signature",
                    &msg_signature(crypt.token(), &timestamp, &nonce, encrypt),
                );
                q.append_pair("timestamp", &timestamp);
                q.append_pair("nonce", &nonce);
            }
            _ => {
                q.append_pair("signature", &signature(crypt.token(), &timestamp, &nonce));
                q.append_pair("timestamp", &timestamp);
                q.append_pair("nonce", &nonce);
                if let Envelope::Account { openid, .. } = envelope {
                    q.append_pair("openid", openid);
                }
                if let Some(encrypt) = &encrypt {
                    q.append_pair("encrypt_type", "aes");
                    q.append_pair(
                        "msg_signature",
                        &msg_signature(crypt.token(), &timestamp, &nonce, encrypt),
                    );
                }
            }
        }
    }
    let body = envelope_body(envelope, encryption, plaintext, encrypt.as_deref())?;
    Ok(Outgoing {
        url: url.into(),
        body,
        crypt: crypt.clone(),
        encryption,
        plaintext: plaintext.to_owned(),
    })
}

/// The body WeChat posts for `plaintext`: as is when unencrypted; in compatible mode the
/// plaintext fields with `<Encrypt>` beside them; otherwise (safe mode, and always for the
/// component and WeCom envelopes) only the envelope's routing element(s) and `<Encrypt>`.
fn envelope_body(
    envelope: &Envelope,
    encryption: Encryption,
    plaintext: &str,
    encrypt: Option<&str>,
) -> Result<String, String> {
    Ok(match (encrypt, encryption) {
        (None, _) => plaintext.to_owned(),
        (Some(encrypt), Encryption::Compatible) => {
            // Compatible mode: the plaintext fields and Encrypt side by side.
            let Some(stripped) = plaintext.trim_end().strip_suffix("</xml>") else {
                return Err("compatible mode needs an <xml> document".into());
            };
            let mut out = stripped.to_owned();
            cdata_el(&mut out, "Encrypt", encrypt);
            out.push_str("</xml>");
            out
        }
        (Some(encrypt), _) => {
            let mut out = String::with_capacity(encrypt.len() + 128);
            out.push_str("<xml>");
            match envelope {
                Envelope::Component { appid } => cdata_el(&mut out, "AppId", appid),
                Envelope::Account { to_user_name, .. } => {
                    cdata_el(&mut out, "ToUserName", to_user_name)
                }
                Envelope::WeCom { corpid, agentid } => {
                    cdata_el(&mut out, "ToUserName", corpid);
                    cdata_el(&mut out, "AgentID", &agentid.to_string());
                }
            }
            cdata_el(&mut out, "Encrypt", encrypt);
            out.push_str("</xml>");
            out
        }
    })
}

/// The body WeChat posts to an account's message URL, framed as the sim's own pushes frame it,
/// for callers that sign and post callbacks themselves (the load generator): `plaintext` as is
/// when `encrypt` is `None`, else framed for `encryption` around `encrypt` (the Base64
/// ciphertext of `plaintext`). Fails only in compatible mode when `plaintext` is not an
/// `<xml>` document.
pub fn message_body(
    to_user_name: &str,
    encryption: Encryption,
    plaintext: &str,
    encrypt: Option<&str>,
) -> Result<String, SimError> {
    let envelope = Envelope::Account {
        to_user_name: to_user_name.to_owned(),
        openid: String::new(),
    };
    envelope_body(&envelope, encryption, plaintext, encrypt).map_err(SimError::BadRequest)
}

/// WeChat's nonces are decimal numbers.
fn numeric_nonce() -> String {
    use rand::RngExt;
    rand::rng()
        .random_range(100_000_000u64..10_000_000_000)
        .to_string()
}

/// One try of a push.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attempt {
    /// 1-based attempt number.
    pub attempt: u32,
    /// HTTP status, when an answer arrived.
    pub status: Option<u16>,
    /// Time to the full answer (or to the failure), in milliseconds.
    pub latency_ms: f64,
    /// The answer body (truncated to 64 KiB), when one arrived.
    pub body: Option<String>,
    /// Why the attempt failed (timeout, connection error), when it did.
    pub error: Option<String>,
}

/// What the receiver answered, decoded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplyReport {
    /// `empty`, `success`, `encrypted` (verified and decrypted), `plain` (a plaintext XML
    /// reply) or `invalid`.
    pub kind: String,
    /// The reply XML (decrypted for `encrypted`).
    pub xml: Option<String>,
    /// Why the reply is `invalid` (bad signature, wrong appid, not XML, ...).
    pub error: Option<String>,
}

/// The result of one push with all its attempts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PushReport {
    /// What was pushed (`component_verify_ticket`, `authorized`, `text`, `event.LOCATION`...).
    pub what: String,
    /// The URL posted to, query included.
    pub url: String,
    /// The plaintext XML that was pushed.
    pub plaintext: String,
    /// The body as posted.
    pub body: String,
    /// True when an attempt got a 2xx answer.
    pub delivered: bool,
    /// Every attempt.
    pub attempts: Vec<Attempt>,
    /// The decoded answer of the successful attempt.
    pub reply: Option<ReplyReport>,
    /// Sim time of the push, ms.
    pub sim_time_ms: i64,
}

/// Posts callbacks with WeChat's retry policy.
#[derive(Debug, Clone)]
pub(crate) struct Pusher {
    client: reqwest::Client,
    pub timeout: Duration,
    pub attempts: u32,
}

/// A reqwest client with the rustls provider installed (reqwest is built without one).
pub(crate) fn http_client(pool_max_idle: usize) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .pool_max_idle_per_host(pool_max_idle)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

const MAX_BODY: usize = 64 * 1024;

impl Pusher {
    pub(crate) fn new(timeout: Duration, attempts: u32) -> Self {
        Self {
            client: http_client(32),
            timeout,
            attempts: attempts.max(1),
        }
    }

    /// Posts `out` up to `attempts` times (each bounded by `timeout`); retries on timeout,
    /// connection error or a non-2xx status.
    pub(crate) async fn send(
        &self,
        what: String,
        out: &Outgoing,
        attempts: u32,
        timeout: Duration,
        clock: &VirtualClock,
    ) -> PushReport {
        let mut report = PushReport {
            what,
            url: out.url.clone(),
            plaintext: out.plaintext.clone(),
            body: out.body.clone(),
            delivered: false,
            attempts: Vec::new(),
            reply: None,
            sim_time_ms: clock.now_ms(),
        };
        for n in 1..=attempts.max(1) {
            let started = Instant::now();
            let result = tokio::time::timeout(timeout, async {
                let resp = self
                    .client
                    .post(&out.url)
                    .header("content-type", "text/xml")
                    .body(out.body.clone())
                    .send()
                    .await?;
                let status = resp.status().as_u16();
                let bytes = resp.bytes().await?;
                Ok::<_, reqwest::Error>((status, bytes))
            })
            .await;
            let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            let attempt = match result {
                Ok(Ok((status, bytes))) => {
                    let cut = &bytes[..bytes.len().min(MAX_BODY)];
                    let body = String::from_utf8_lossy(cut).into_owned();
                    Attempt {
                        attempt: n,
                        status: Some(status),
                        latency_ms,
                        body: Some(body),
                        error: None,
                    }
                }
                Ok(Err(e)) => Attempt {
                    attempt: n,
                    status: None,
                    latency_ms,
                    body: None,
                    error: Some(describe(&e)),
                },
                Err(_) => Attempt {
                    attempt: n,
                    status: None,
                    latency_ms,
                    body: None,
                    error: Some(format!("timeout after {} ms", timeout.as_millis())),
                },
            };
            let ok = attempt.status.is_some_and(|s| (200..300).contains(&s));
            if ok {
                report.reply = Some(decode_reply(
                    attempt.body.as_deref().unwrap_or_default(),
                    out,
                ));
            }
            report.attempts.push(attempt);
            if ok {
                report.delivered = true;
                break;
            }
        }
        report
    }
}

fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "connection failed"
    } else if e.is_timeout() {
        "timeout"
    } else if e.is_body() || e.is_decode() {
        "broken answer"
    } else {
        "request failed"
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

/// Decodes an answer: `success`/empty, an encrypted reply envelope (signature verified,
/// decrypted, appid checked), or a plaintext reply in compatible/plaintext mode.
pub(crate) fn decode_reply(body: &str, out: &Outgoing) -> ReplyReport {
    let trimmed = body.trim();
    if trimmed.is_empty() {
        return reply("empty", None, None);
    }
    if trimmed == "success" {
        return reply("success", None, None);
    }
    let envelope = match parse_envelope(trimmed.as_bytes(), &Limits::default()) {
        Ok(e) => e,
        Err(e) => return reply("invalid", None, Some(format!("not XML: {e}"))),
    };
    let Some(encrypt) = envelope.encrypt() else {
        if out.encryption == Encryption::Safe {
            return reply(
                "invalid",
                Some(trimmed.to_owned()),
                Some("plaintext reply to an encrypted push".into()),
            );
        }
        return reply("plain", Some(trimmed.to_owned()), None);
    };
    let root = envelope.root();
    let (Some(sig), Some(ts), Some(nonce)) = (
        root.child_text("MsgSignature"),
        root.child_text("TimeStamp"),
        root.child_text("Nonce"),
    ) else {
        return reply(
            "invalid",
            None,
            Some("encrypted reply lacks MsgSignature, TimeStamp or Nonce".into()),
        );
    };
    match out.crypt.verify_and_decrypt(sig, ts, nonce, encrypt) {
        Ok(decrypted) => match decrypted.message_str() {
            Ok(xml) => reply("encrypted", Some(xml.to_owned()), None),
            Err(e) => reply("invalid", None, Some(e.to_string())),
        },
        Err(e) => reply("invalid", None, Some(format!("reply envelope: {e}"))),
    }
}

fn reply(kind: &str, xml: Option<String>, error: Option<String>) -> ReplyReport {
    ReplyReport {
        kind: kind.to_owned(),
        xml,
        error,
    }
}
