//! Messages and events pushed to an account's message URL (wechat-protocol.md §3).

use crate::MessageError;
use crate::xml::{Element, Limits, parse_document};

/// Fields every account message and event carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The account's original id (`gh_...`) or WeCom corpid.
    pub to_user_name: String,
    /// The user's OpenID (or WeCom UserID).
    pub from_user_name: String,
    /// Unix seconds.
    pub create_time: i64,
    /// As sent (`text`, `event`, ...).
    pub msg_type: String,
    /// WeCom application id, when present.
    pub agent_id: Option<String>,
    /// The first 64 bits of the SHA-1 of the whole message as received (after decryption): tells
    /// apart two callbacks that no protocol field does, while a WeChat retry, which carries the
    /// identical message, keeps it. See [`Message::dedupe_key`].
    pub digest: u64,
}

/// Whatever a parser does not model: the leaf fields in order, plus the raw XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generic {
    /// Top-level leaf elements `(name, text)` in document order.
    pub fields: Vec<(String, String)>,
    /// The XML exactly as received (after decryption).
    pub raw: String,
}

impl Generic {
    pub(crate) fn from_element(root: &Element<'_>, raw: &str) -> Self {
        let fields = root
            .children()
            .iter()
            .filter(|c| c.is_leaf())
            .map(|c| (c.name().to_owned(), c.text().to_owned()))
            .collect();
        Self {
            fields,
            raw: raw.to_owned(),
        }
    }

    /// The text of the first field with this name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    pub header: Header,
    pub msg_id: Option<u64>,
    pub content: String,
    /// Set when the user tapped an option of a menu message.
    pub biz_msg_menu_id: Option<String>,
}

/// `image`, `voice`, `video` and `shortvideo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub header: Header,
    pub msg_id: Option<u64>,
    pub media_id: String,
    /// image
    pub pic_url: Option<String>,
    /// voice (`amr`, `speex`, ...)
    pub format: Option<String>,
    /// voice, when recognition is enabled
    pub recognition: Option<String>,
    /// video, shortvideo
    pub thumb_media_id: Option<String>,
}

/// `location`.
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    pub header: Header,
    pub msg_id: Option<u64>,
    /// Latitude.
    pub location_x: Option<f64>,
    /// Longitude.
    pub location_y: Option<f64>,
    pub scale: Option<f64>,
    pub label: String,
}

/// `link`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub header: Header,
    pub msg_id: Option<u64>,
    pub title: String,
    pub description: String,
    pub url: String,
}

/// `miniprogrampage` (mini-program customer service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MiniProgramPage {
    pub header: Header,
    pub msg_id: Option<u64>,
    pub app_id: String,
    pub title: String,
    pub page_path: String,
    pub thumb_url: String,
    pub thumb_media_id: String,
}

/// `ScanCodeInfo` of `scancode_push` / `scancode_waitmsg`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanCodeInfo {
    pub scan_type: String,
    pub scan_result: String,
}

/// `SendPicsInfo` of the `pic_*` menu events.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PicsInfo {
    pub count: u32,
    pub pic_md5_sums: Vec<String>,
}

/// `SendLocationInfo` of `location_select`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SelectedLocation {
    pub location_x: Option<f64>,
    pub location_y: Option<f64>,
    pub scale: Option<f64>,
    pub label: String,
    pub poiname: String,
}

/// One `List` entry of the subscription-notice events.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscribeMsgItem {
    pub template_id: String,
    pub subscribe_status: Option<String>,
    pub popup_scene: Option<String>,
    pub msg_id: Option<String>,
    pub error_code: Option<String>,
    pub error_status: Option<String>,
}

/// An event (`MsgType` = `event`).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub header: Header,
    /// The `Event` value exactly as sent (`subscribe`, `SCAN`, `TEMPLATESENDJOBFINISH`, ...).
    pub event: String,
    pub kind: EventKind,
}

/// The typed payload of an event; event names are matched case-insensitively.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// `subscribe` (with `qrscene_` key and ticket when via a parametric QR code).
    Subscribe {
        event_key: Option<String>,
        ticket: Option<String>,
    },
    /// `unsubscribe`
    Unsubscribe,
    /// `SCAN`: an already-subscribed user scanned a parametric QR code.
    Scan {
        event_key: String,
        ticket: Option<String>,
    },
    /// `LOCATION` report.
    Location {
        latitude: Option<f64>,
        longitude: Option<f64>,
        precision: Option<f64>,
    },
    /// `CLICK` on a menu.
    Click { event_key: String },
    /// `VIEW` a menu link.
    View {
        event_key: String,
        menu_id: Option<String>,
    },
    /// `scancode_push` / `scancode_waitmsg`.
    ScanCode {
        event_key: String,
        info: ScanCodeInfo,
    },
    /// `pic_sysphoto` / `pic_photo_or_album` / `pic_weixin`.
    Pics { event_key: String, info: PicsInfo },
    /// `location_select`.
    LocationSelect {
        event_key: String,
        location: SelectedLocation,
    },
    /// `view_miniprogram`.
    ViewMiniprogram {
        event_key: String,
        menu_id: Option<String>,
    },
    /// `TEMPLATESENDJOBFINISH`: the final result of a template message.
    TemplateSendJobFinish { msg_id: Option<u64>, status: String },
    /// `MASSSENDJOBFINISH`.
    MassSendJobFinish {
        msg_id: Option<u64>,
        status: String,
        total_count: Option<u64>,
        filter_count: Option<u64>,
        sent_count: Option<u64>,
        error_count: Option<u64>,
    },
    /// `subscribe_msg_popup_event`.
    SubscribeMsgPopup { items: Vec<SubscribeMsgItem> },
    /// `subscribe_msg_change_event`.
    SubscribeMsgChange { items: Vec<SubscribeMsgItem> },
    /// `subscribe_msg_sent_event`.
    SubscribeMsgSent { items: Vec<SubscribeMsgItem> },
    /// `kf_create_session`.
    KfCreateSession { kf_account: String },
    /// `kf_close_session`.
    KfCloseSession { kf_account: String },
    /// `kf_switch_session`.
    KfSwitchSession {
        from_kf_account: String,
        to_kf_account: String,
    },
    /// `user_authorization_revoke`.
    UserAuthorizationRevoke {
        open_id: String,
        app_id: String,
        revoke_info: String,
    },
    /// `weapp_audit_success`.
    WeappAuditSuccess { succ_time: Option<i64> },
    /// `weapp_audit_fail`.
    WeappAuditFail {
        reason: String,
        fail_time: Option<i64>,
        screen_shot: Option<String>,
    },
    /// `weapp_audit_delay`.
    WeappAuditDelay {
        reason: String,
        delay_time: Option<i64>,
    },
    /// WeCom `change_contact`: a member, department or tag changed (`FromUserName` is `sys`).
    ChangeContact {
        /// `create_user`, `update_user`, `delete_user`, `create_party`, `update_party`,
        /// `delete_party`, `update_tag`.
        change_type: String,
        /// `UserID` (member changes).
        user_id: Option<String>,
        /// `Id` (department changes).
        party_id: Option<String>,
        /// `TagId` (tag changes).
        tag_id: Option<String>,
    },
    /// WeCom `batch_job_result`: an asynchronous batch job finished.
    BatchJobResult {
        /// `BatchJob/JobId`.
        job_id: String,
        /// `BatchJob/JobType` (`sync_user`, `replace_user`, `invite_user`, `replace_party`).
        job_type: String,
        err_code: Option<i64>,
        err_msg: String,
    },
    /// Any other event, kept whole.
    Other(Generic),
}

/// A message or event of an account.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Text(Text),
    Image(Media),
    Voice(Media),
    Video(Media),
    ShortVideo(Media),
    Location(Location),
    Link(Link),
    MiniProgramPage(MiniProgramPage),
    Event(Event),
    /// A `MsgType` this crate does not model, kept whole.
    Unknown {
        header: Header,
        msg_id: Option<u64>,
        generic: Generic,
    },
}

impl Message {
    /// The common header.
    pub fn header(&self) -> &Header {
        match self {
            Message::Text(m) => &m.header,
            Message::Image(m) | Message::Voice(m) | Message::Video(m) | Message::ShortVideo(m) => {
                &m.header
            }
            Message::Location(m) => &m.header,
            Message::Link(m) => &m.header,
            Message::MiniProgramPage(m) => &m.header,
            Message::Event(e) => &e.header,
            Message::Unknown { header, .. } => header,
        }
    }

    /// `MsgId` of a message (events have none, except the `MsgID` of job-finish events, which
    /// is the id of the message sent earlier and is not returned here).
    pub fn msg_id(&self) -> Option<u64> {
        match self {
            Message::Text(m) => m.msg_id,
            Message::Image(m) | Message::Voice(m) | Message::Video(m) | Message::ShortVideo(m) => {
                m.msg_id
            }
            Message::Location(m) => m.msg_id,
            Message::Link(m) => m.msg_id,
            Message::MiniProgramPage(m) => m.msg_id,
            Message::Event(_) => None,
            Message::Unknown { msg_id, .. } => *msg_id,
        }
    }

    /// The `Event` value as sent, for events.
    pub fn event(&self) -> Option<&str> {
        match self {
            Message::Event(e) => Some(&e.event),
            _ => None,
        }
    }

    /// The `EventKey`, for the events that carry one.
    pub fn event_key(&self) -> Option<&str> {
        let Message::Event(e) = self else { return None };
        match &e.kind {
            EventKind::Subscribe { event_key, .. } => event_key.as_deref(),
            EventKind::Scan { event_key, .. }
            | EventKind::Click { event_key }
            | EventKind::View { event_key, .. }
            | EventKind::ScanCode { event_key, .. }
            | EventKind::Pics { event_key, .. }
            | EventKind::LocationSelect { event_key, .. }
            | EventKind::ViewMiniprogram { event_key, .. } => Some(event_key),
            EventKind::Other(g) => g.get("EventKey"),
            _ => None,
        }
    }

    /// The routing kind: the lower-cased `MsgType`, or `event.{event}` lower-cased, restricted
    /// to `[a-z0-9_-]` so it is always a safe AMQP routing-key segment.
    pub fn routing_kind(&self) -> String {
        match self.event() {
            Some(event) => format!("event.{}", routing_word(event)),
            None => routing_word(&self.header().msg_type),
        }
    }

    /// The retry-dedupe key: identical for a WeChat retry (the same message again), different
    /// for any two distinct callbacks of one account.
    ///
    /// - A message with `MsgId` (every normal message type, WeCom's too): `msg:{MsgId}`.
    /// - Every other callback starts `evt:{FromUserName}:{CreateTime}:{Event or MsgType}`, then:
    ///   - `TEMPLATESENDJOBFINISH` / `MASSSENDJOBFINISH`: `:{MsgID}`, the id of the job, which
    ///     WeChat reports once (two jobs for one user in one second differ only by it);
    ///   - WeCom `batch_job_result`: `:{JobId}`;
    ///   - WeCom `change_contact`: `:{ChangeType}:{UserID|Id|TagId}:{digest}` (one bulk sync
    ///     sends many, all from `sys`, several for one member in one second);
    ///   - any other event (or a message without `MsgId`): `[:{EventKey}]:{digest}`.
    ///
    ///   `{digest}` is [`Header::digest`] in 16 hex digits: the protocol gives these callbacks no
    ///   id, and two distinct ones always differ somewhere in their XML (a location, a scan
    ///   result, a list of templates, a changed field), while a retry is byte-identical.
    ///   Without a `MsgID`/`JobId` the job events fall back to the digest as well.
    pub fn dedupe_key(&self) -> String {
        if let Some(id) = self.msg_id() {
            return format!("msg:{id}");
        }
        let h = self.header();
        let mut key = format!(
            "evt:{}:{}:{}",
            h.from_user_name,
            h.create_time,
            self.event().unwrap_or(&h.msg_type)
        );
        let mut push = |part: &str| {
            key.push(':');
            key.push_str(part);
        };
        if let Message::Event(e) = self {
            match &e.kind {
                EventKind::TemplateSendJobFinish {
                    msg_id: Some(id), ..
                }
                | EventKind::MassSendJobFinish {
                    msg_id: Some(id), ..
                } => {
                    push(&id.to_string());
                    return key;
                }
                EventKind::BatchJobResult { job_id, .. } if !job_id.is_empty() => {
                    push(job_id);
                    return key;
                }
                EventKind::ChangeContact {
                    change_type,
                    user_id,
                    party_id,
                    tag_id,
                } => {
                    push(change_type);
                    push(
                        user_id
                            .as_deref()
                            .or(party_id.as_deref())
                            .or(tag_id.as_deref())
                            .unwrap_or_default(),
                    );
                }
                _ => {
                    if let Some(event_key) = self.event_key().filter(|k| !k.is_empty()) {
                        push(event_key);
                    }
                }
            }
        }
        push(&hex64(h.digest));
        key
    }
}

/// The first 64 bits of the SHA-1 of `text` (for dedupe keys: distinct inputs never meet in
/// practice, and a secret digested this way does not appear in the key).
pub(crate) fn digest64(text: &str) -> u64 {
    use sha1::{Digest, Sha1};
    let hash = Sha1::digest(text.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(first)
}

/// `digest` as 16 lower-case hex digits.
pub(crate) fn hex64(digest: u64) -> String {
    format!("{digest:016x}")
}

/// Lower-cases and replaces anything outside `[a-z0-9_-]` with `_` (empty becomes `unknown`).
pub(crate) fn routing_word(s: &str) -> String {
    if s.is_empty() {
        return "unknown".to_owned();
    }
    s.chars()
        .take(64)
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Parses a decrypted account message or event.
pub fn parse_message(xml: &str) -> Result<Message, MessageError> {
    let root = parse_document(xml, &Limits::default())?;
    from_element(&root, xml)
}

pub(crate) fn from_element(root: &Element<'_>, raw: &str) -> Result<Message, MessageError> {
    let header = Header {
        to_user_name: required(root, "ToUserName")?,
        from_user_name: required(root, "FromUserName")?,
        create_time: required_i64(root, "CreateTime")?,
        msg_type: required(root, "MsgType")?,
        agent_id: opt(root, "AgentID"),
        digest: digest64(raw),
    };
    let msg_id = opt_u64(root, "MsgId", "MsgId")?;
    let media = |header: Header| -> Media {
        Media {
            header,
            msg_id,
            media_id: text(root, "MediaId"),
            pic_url: opt(root, "PicUrl"),
            format: opt(root, "Format"),
            recognition: opt(root, "Recognition"),
            thumb_media_id: opt(root, "ThumbMediaId"),
        }
    };
    let kind = header.msg_type.to_ascii_lowercase();
    Ok(match kind.as_str() {
        "text" => Message::Text(Text {
            header,
            msg_id,
            content: text(root, "Content"),
            biz_msg_menu_id: opt(root, "bizmsgmenuid"),
        }),
        "image" => Message::Image(media(header)),
        "voice" => Message::Voice(media(header)),
        "video" => Message::Video(media(header)),
        "shortvideo" => Message::ShortVideo(media(header)),
        "location" => Message::Location(Location {
            header,
            msg_id,
            location_x: opt_f64(root, "Location_X", "Location_X")?,
            location_y: opt_f64(root, "Location_Y", "Location_Y")?,
            scale: opt_f64(root, "Scale", "Scale")?,
            label: text(root, "Label"),
        }),
        "link" => Message::Link(Link {
            header,
            msg_id,
            title: text(root, "Title"),
            description: text(root, "Description"),
            url: text(root, "Url"),
        }),
        "miniprogrampage" => Message::MiniProgramPage(MiniProgramPage {
            header,
            msg_id,
            app_id: text(root, "AppId"),
            title: text(root, "Title"),
            page_path: text(root, "PagePath"),
            thumb_url: text(root, "ThumbUrl"),
            thumb_media_id: text(root, "ThumbMediaId"),
        }),
        "event" => {
            let event = required(root, "Event")?;
            let kind = event_kind(root, &event, raw)?;
            Message::Event(Event {
                header,
                event,
                kind,
            })
        }
        _ => Message::Unknown {
            header,
            msg_id,
            generic: Generic::from_element(root, raw),
        },
    })
}

fn event_kind(root: &Element<'_>, event: &str, raw: &str) -> Result<EventKind, MessageError> {
    let key = || text(root, "EventKey");
    Ok(match event.to_ascii_lowercase().as_str() {
        "subscribe" => EventKind::Subscribe {
            event_key: opt(root, "EventKey").filter(|k| !k.is_empty()),
            ticket: opt(root, "Ticket"),
        },
        "unsubscribe" => EventKind::Unsubscribe,
        "scan" => EventKind::Scan {
            event_key: key(),
            ticket: opt(root, "Ticket"),
        },
        "location" => EventKind::Location {
            latitude: opt_f64(root, "Latitude", "Latitude")?,
            longitude: opt_f64(root, "Longitude", "Longitude")?,
            precision: opt_f64(root, "Precision", "Precision")?,
        },
        "click" => EventKind::Click { event_key: key() },
        "view" => EventKind::View {
            event_key: key(),
            menu_id: opt(root, "MenuId"),
        },
        "scancode_push" | "scancode_waitmsg" => {
            let info = root
                .child("ScanCodeInfo")
                .map_or_else(ScanCodeInfo::default, |i| ScanCodeInfo {
                    scan_type: text(i, "ScanType"),
                    scan_result: text(i, "ScanResult"),
                });
            EventKind::ScanCode {
                event_key: key(),
                info,
            }
        }
        "pic_sysphoto" | "pic_photo_or_album" | "pic_weixin" => {
            let info = match root.child("SendPicsInfo") {
                Some(i) => PicsInfo {
                    count: opt_u64(i, "Count", "Count")?
                        .unwrap_or(0)
                        .min(u64::from(u32::MAX)) as u32,
                    pic_md5_sums: i
                        .child("PicList")
                        .map(|list| list.children_named("item").map(|it| text(it, "PicMd5Sum")))
                        .into_iter()
                        .flatten()
                        .collect(),
                },
                None => PicsInfo::default(),
            };
            EventKind::Pics {
                event_key: key(),
                info,
            }
        }
        "location_select" => {
            let location = match root.child("SendLocationInfo") {
                Some(i) => SelectedLocation {
                    location_x: opt_f64(i, "Location_X", "Location_X")?,
                    location_y: opt_f64(i, "Location_Y", "Location_Y")?,
                    scale: opt_f64(i, "Scale", "Scale")?,
                    label: text(i, "Label"),
                    poiname: text(i, "Poiname"),
                },
                None => SelectedLocation::default(),
            };
            EventKind::LocationSelect {
                event_key: key(),
                location,
            }
        }
        "view_miniprogram" => EventKind::ViewMiniprogram {
            event_key: key(),
            menu_id: opt(root, "MenuId"),
        },
        "templatesendjobfinish" => EventKind::TemplateSendJobFinish {
            msg_id: opt_u64(root, "MsgID", "MsgID")?,
            status: text(root, "Status"),
        },
        "masssendjobfinish" => EventKind::MassSendJobFinish {
            msg_id: opt_u64(root, "MsgID", "MsgID")?,
            status: text(root, "Status"),
            total_count: opt_u64(root, "TotalCount", "TotalCount")?,
            filter_count: opt_u64(root, "FilterCount", "FilterCount")?,
            sent_count: opt_u64(root, "SentCount", "SentCount")?,
            error_count: opt_u64(root, "ErrorCount", "ErrorCount")?,
        },
        "subscribe_msg_popup_event" => EventKind::SubscribeMsgPopup {
            items: subscribe_items(root, "SubscribeMsgPopupEvent"),
        },
        "subscribe_msg_change_event" => EventKind::SubscribeMsgChange {
            items: subscribe_items(root, "SubscribeMsgChangeEvent"),
        },
        "subscribe_msg_sent_event" => EventKind::SubscribeMsgSent {
            items: subscribe_items(root, "SubscribeMsgSentEvent"),
        },
        "kf_create_session" => EventKind::KfCreateSession {
            kf_account: text(root, "KfAccount"),
        },
        "kf_close_session" => EventKind::KfCloseSession {
            kf_account: text(root, "KfAccount"),
        },
        "kf_switch_session" => EventKind::KfSwitchSession {
            from_kf_account: text(root, "FromKfAccount"),
            to_kf_account: text(root, "ToKfAccount"),
        },
        "user_authorization_revoke" => EventKind::UserAuthorizationRevoke {
            open_id: text(root, "OpenID"),
            app_id: text(root, "AppID"),
            revoke_info: text(root, "RevokeInfo"),
        },
        "weapp_audit_success" => EventKind::WeappAuditSuccess {
            succ_time: opt_i64(root, "SuccTime", "SuccTime")?,
        },
        "weapp_audit_fail" => EventKind::WeappAuditFail {
            reason: text(root, "Reason"),
            fail_time: opt_i64(root, "FailTime", "FailTime")?,
            screen_shot: opt(root, "ScreenShot"),
        },
        "weapp_audit_delay" => EventKind::WeappAuditDelay {
            reason: text(root, "Reason"),
            delay_time: opt_i64(root, "DelayTime", "DelayTime")?,
        },
        "change_contact" => EventKind::ChangeContact {
            change_type: text(root, "ChangeType"),
            user_id: opt(root, "UserID"),
            party_id: opt(root, "Id"),
            tag_id: opt(root, "TagId"),
        },
        "batch_job_result" => {
            let job = root.child("BatchJob");
            EventKind::BatchJobResult {
                job_id: job.map(|j| text(j, "JobId")).unwrap_or_default(),
                job_type: job.map(|j| text(j, "JobType")).unwrap_or_default(),
                err_code: match job {
                    Some(j) => opt_i64(j, "ErrCode", "ErrCode")?,
                    None => None,
                },
                err_msg: job.map(|j| text(j, "ErrMsg")).unwrap_or_default(),
            }
        }
        _ => EventKind::Other(Generic::from_element(root, raw)),
    })
}

fn subscribe_items(root: &Element<'_>, container: &str) -> Vec<SubscribeMsgItem> {
    let Some(container) = root.child(container) else {
        return Vec::new();
    };
    container
        .children_named("List")
        .map(|l| SubscribeMsgItem {
            template_id: text(l, "TemplateId"),
            subscribe_status: opt(l, "SubscribeStatusString"),
            popup_scene: opt(l, "PopupScene"),
            msg_id: opt(l, "MsgID"),
            error_code: opt(l, "ErrorCode"),
            error_status: opt(l, "ErrorStatus"),
        })
        .collect()
}

// Field helpers shared with the component notices.

pub(crate) fn required(el: &Element<'_>, name: &'static str) -> Result<String, MessageError> {
    el.child(name)
        .map(|c| c.text().to_owned())
        .ok_or(MessageError::MissingField(name))
}

pub(crate) fn required_i64(el: &Element<'_>, name: &'static str) -> Result<i64, MessageError> {
    opt_i64(el, name, name)?.ok_or(MessageError::MissingField(name))
}

pub(crate) fn text(el: &Element<'_>, name: &str) -> String {
    el.child_text(name).unwrap_or_default().to_owned()
}

pub(crate) fn opt(el: &Element<'_>, name: &str) -> Option<String> {
    el.child_text(name).map(str::to_owned)
}

fn number<T: std::str::FromStr>(
    el: &Element<'_>,
    name: &str,
    field: &'static str,
    reason: &'static str,
) -> Result<Option<T>, MessageError> {
    match el.child_ci(name).map(|c| c.text().trim()) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| MessageError::BadField { field, reason }),
    }
}

pub(crate) fn opt_i64(
    el: &Element<'_>,
    name: &str,
    field: &'static str,
) -> Result<Option<i64>, MessageError> {
    number(el, name, field, "not an integer")
}

pub(crate) fn opt_u64(
    el: &Element<'_>,
    name: &str,
    field: &'static str,
) -> Result<Option<u64>, MessageError> {
    number(el, name, field, "not an unsigned integer")
}

fn opt_f64(el: &Element<'_>, name: &str, field: &'static str) -> Result<Option<f64>, MessageError> {
    match number::<f64>(el, name, field, "not a number")? {
        Some(v) if !v.is_finite() => Err(MessageError::BadField {
            field,
            reason: "not finite",
        }),
        other => Ok(other),
    }
}
