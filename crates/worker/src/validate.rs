//! What an Enqueue must satisfy before anything is stored: every message is checked against
//! WeChat's own rules (wechat-protocol.md §5, messaging.md §1) and refused with
//! INVALID_ARGUMENT naming the field, so a job that is queued can only fail for reasons WeChat
//! alone knows (the 48-hour window, credits, quotas). The checked message becomes the JSON body
//! WeChat takes, stored with the job: the sender posts it as it is.

use serde_json::{Map, Value, json};
use tonic::Status;
use wxhub_proto::messaging::v1 as pb;
use wxhub_proto::messaging::v1::enqueue_request::Message;

/// `/cgi-bin/message/custom/send`.
pub const CUSTOM_SEND: &str = "/cgi-bin/message/custom/send";
/// `/cgi-bin/message/template/send`.
pub const TEMPLATE_SEND: &str = "/cgi-bin/message/template/send";
/// `/cgi-bin/message/subscribe/send` (mini program).
pub const SUBSCRIBE_SEND: &str = "/cgi-bin/message/subscribe/send";
/// `/cgi-bin/message/subscribe/bizsend` (Official Account).
pub const BIZSEND: &str = "/cgi-bin/message/subscribe/bizsend";

/// The send API paths, as `'static` strings for the WeChat client.
pub fn api_path(api: &str) -> Option<&'static str> {
    [CUSTOM_SEND, TEMPLATE_SEND, SUBSCRIBE_SEND, BIZSEND]
        .into_iter()
        .find(|p| *p == api)
}

/// Customer-service message types (wechat-protocol.md §5.1; `link` is mini programs' only).
pub const MSGTYPES: [&str; 12] = [
    "text",
    "image",
    "voice",
    "video",
    "music",
    "news",
    "mpnews",
    "mpnewsarticle",
    "msgmenu",
    "wxcard",
    "miniprogrampage",
    "link",
];

/// Text content limit of a customer-service message, in bytes (WeChat: 2048, else 45002).
pub const MAX_TEXT_BYTES: usize = 2048;
/// Most keywords in a template's or subscribe message's data.
pub const MAX_DATA_KEYS: usize = 30;
/// Longest template keyword value (characters).
pub const MAX_TEMPLATE_VALUE_CHARS: usize = 200;
/// Longest URL or page path.
pub const MAX_URL_BYTES: usize = 1024;

/// A checked message: its kind, API, recipient and WeChat body (without `client_msg_id`,
/// which the service adds for templates once the job id is known).
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub kind: &'static str,
    pub api: &'static str,
    pub touser: String,
    pub body: Map<String, Value>,
}

fn bad(field: &str, why: &str) -> Status {
    Status::invalid_argument(format!("{field} {why}"))
}

/// An OpenID: 1–64 of `[A-Za-z0-9_-]` (WeChat's are 28).
pub fn check_openid(field: &str, v: &str) -> Result<(), Status> {
    if v.is_empty() {
        return Err(bad(field, "is required"));
    }
    if v.len() > 64
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(bad(field, "must be an OpenID: 1-64 of [A-Za-z0-9_-]"));
    }
    Ok(())
}

fn check_token_like(field: &str, v: &str, max: usize) -> Result<(), Status> {
    if v.is_empty() {
        return Err(bad(field, "is required"));
    }
    if v.len() > max
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(bad(field, &format!("must be 1-{max} of [A-Za-z0-9_-]")));
    }
    Ok(())
}

fn check_url(field: &str, v: &str) -> Result<(), Status> {
    let ok = v.len() <= MAX_URL_BYTES
        && url::Url::parse(v)
            .ok()
            .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    if ok {
        Ok(())
    } else {
        Err(bad(
            field,
            &format!("must be an absolute http(s) URL of at most {MAX_URL_BYTES} bytes"),
        ))
    }
}

fn check_len(field: &str, v: &str, max_bytes: usize) -> Result<(), Status> {
    if v.len() > max_bytes {
        return Err(bad(field, &format!("is longer than {max_bytes} bytes")));
    }
    Ok(())
}

/// An idempotency key: at most 128 printable ASCII characters.
pub fn check_idempotency_key(v: &str) -> Result<(), Status> {
    if v.len() > 128 || !v.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(bad(
            "idempotency_key",
            "must be at most 128 printable ASCII characters without spaces",
        ));
    }
    Ok(())
}

/// Checks `message` and builds its WeChat body.
pub fn prepare(message: Option<&Message>) -> Result<Prepared, Status> {
    match message {
        None => Err(bad(
            "message",
            "is required: custom, template, subscribe or bizsend",
        )),
        Some(Message::Custom(c)) => custom(c),
        Some(Message::Template(t)) => template(t),
        Some(Message::Subscribe(s)) => subscribe("subscribe", SUBSCRIBE_SEND, s),
        Some(Message::Bizsend(s)) => subscribe("bizsend", BIZSEND, s),
    }
}

fn str_field<'a>(obj: &'a Map<String, Value>, prefix: &str, name: &str) -> Result<&'a str, Status> {
    match obj.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) | None => Err(bad(&format!("{prefix}.{name}"), "is required")),
        Some(_) => Err(bad(&format!("{prefix}.{name}"), "must be a string")),
    }
}

fn opt_str_field<'a>(
    obj: &'a Map<String, Value>,
    prefix: &str,
    name: &str,
) -> Result<Option<&'a str>, Status> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(&format!("{prefix}.{name}"), "must be a string")),
    }
}

fn required(obj: &Map<String, Value>, prefix: &str, names: &[&str]) -> Result<(), Status> {
    for name in names {
        let v = str_field(obj, prefix, name)?;
        check_len(&format!("{prefix}.{name}"), v, MAX_URL_BYTES)?;
    }
    Ok(())
}

fn custom(c: &pb::CustomMessage) -> Result<Prepared, Status> {
    check_openid("custom.touser", &c.touser)?;
    let msgtype = c.msgtype.as_str();
    if !MSGTYPES.contains(&msgtype) {
        return Err(bad(
            "custom.msgtype",
            &format!("must be one of {}", MSGTYPES.join(", ")),
        ));
    }
    if c.body_json.len() > 16 * 1024 {
        return Err(bad("custom.body_json", "is longer than 16384 bytes"));
    }
    let body: Value = serde_json::from_str(&c.body_json)
        .map_err(|e| bad("custom.body_json", &format!("is not JSON: {e}")))?;
    let Value::Object(obj) = body else {
        return Err(bad("custom.body_json", "must be a JSON object"));
    };
    let p = format!("custom.{msgtype}");
    match msgtype {
        "text" => {
            let content = str_field(&obj, &p, "content")?;
            check_len(&format!("{p}.content"), content, MAX_TEXT_BYTES)?;
        }
        "image" | "voice" | "mpnews" => required(&obj, &p, &["media_id"])?,
        "video" => {
            required(&obj, &p, &["media_id"])?;
            for f in ["thumb_media_id", "title", "description"] {
                opt_str_field(&obj, &p, f)?;
            }
        }
        "music" => required(&obj, &p, &["musicurl", "hqmusicurl", "thumb_media_id"])?,
        "news" => {
            let articles = obj
                .get("articles")
                .and_then(Value::as_array)
                .ok_or_else(|| bad(&format!("{p}.articles"), "must be an array"))?;
            if articles.len() != 1 {
                return Err(bad(
                    &format!("{p}.articles"),
                    "must hold exactly one article (WeChat: 45008)",
                ));
            }
            let article = articles[0]
                .as_object()
                .ok_or_else(|| bad(&format!("{p}.articles[0]"), "must be an object"))?;
            let ap = format!("{p}.articles[0]");
            required(article, &ap, &["title"])?;
            for f in ["url", "picurl"] {
                if let Some(u) = opt_str_field(article, &ap, f)?.filter(|u| !u.is_empty()) {
                    check_url(&format!("{ap}.{f}"), u)?;
                }
            }
            opt_str_field(article, &ap, "description")?;
        }
        "mpnewsarticle" => required(&obj, &p, &["article_id"])?,
        "msgmenu" => {
            let list = obj
                .get("list")
                .and_then(Value::as_array)
                .filter(|l| !l.is_empty())
                .ok_or_else(|| bad(&format!("{p}.list"), "must be a non-empty array"))?;
            if list.len() > 10 {
                return Err(bad(&format!("{p}.list"), "has more than 10 items"));
            }
            for (i, item) in list.iter().enumerate() {
                let ip = format!("{p}.list[{i}]");
                let item = item
                    .as_object()
                    .ok_or_else(|| bad(&ip, "must be an object"))?;
                required(item, &ip, &["id", "content"])?;
            }
            opt_str_field(&obj, &p, "head_content")?;
            opt_str_field(&obj, &p, "tail_content")?;
        }
        "wxcard" => required(&obj, &p, &["card_id"])?,
        "miniprogrampage" => {
            required(&obj, &p, &["title", "pagepath", "thumb_media_id"])?;
            if let Some(appid) = opt_str_field(&obj, &p, "appid")?
                && !appid.is_empty()
                && !wxhub_runtime::AppId::is_valid(appid)
            {
                return Err(bad(&format!("{p}.appid"), "must be a mini program appid"));
            }
        }
        "link" => {
            required(&obj, &p, &["title", "description", "url", "thumb_url"])?;
            check_url(&format!("{p}.url"), str_field(&obj, &p, "url")?)?;
        }
        _ => {}
    }
    let mut body = Map::new();
    body.insert("touser".into(), json!(c.touser));
    body.insert("msgtype".into(), json!(msgtype));
    body.insert(msgtype.into(), Value::Object(obj));
    if !c.kf_account.is_empty() {
        let ok = c.kf_account.len() <= 64
            && c.kf_account.split_once('@').is_some_and(|(a, b)| {
                !a.is_empty() && !b.is_empty() && !c.kf_account.contains(char::is_whitespace)
            });
        if !ok {
            return Err(bad(
                "custom.kf_account",
                "must look like account@wechat_id (at most 64 bytes)",
            ));
        }
        body.insert("customservice".into(), json!({"kf_account": c.kf_account}));
    }
    Ok(Prepared {
        kind: "custom",
        api: CUSTOM_SEND,
        touser: c.touser.clone(),
        body,
    })
}

fn data_key(field: &str, key: &str) -> Result<(), Status> {
    if key.is_empty()
        || key.len() > 32
        || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(bad(field, "keys must be 1-32 of [A-Za-z0-9_]"));
    }
    Ok(())
}

fn mini_program(field: &str, mp: &pb::MiniProgramLink) -> Result<Value, Status> {
    if !wxhub_runtime::AppId::is_valid(&mp.appid) {
        return Err(bad(
            &format!("{field}.appid"),
            "must be a mini program appid",
        ));
    }
    check_len(&format!("{field}.pagepath"), &mp.pagepath, MAX_URL_BYTES)?;
    Ok(json!({"appid": mp.appid, "pagepath": mp.pagepath}))
}

fn template(t: &pb::TemplateMessage) -> Result<Prepared, Status> {
    check_openid("template.touser", &t.touser)?;
    check_token_like("template.template_id", &t.template_id, 64)?;
    if t.data.is_empty() {
        return Err(bad("template.data", "needs at least one keyword"));
    }
    if t.data.len() > MAX_DATA_KEYS {
        return Err(bad(
            "template.data",
            &format!("has more than {MAX_DATA_KEYS} keywords"),
        ));
    }
    let mut data = Map::new();
    let mut keys: Vec<_> = t.data.keys().collect();
    keys.sort();
    for key in keys {
        let v = &t.data[key];
        let field = format!("template.data.{key}");
        data_key("template.data", key)?;
        if v.value.chars().count() > MAX_TEMPLATE_VALUE_CHARS {
            return Err(bad(
                &format!("{field}.value"),
                &format!("is longer than {MAX_TEMPLATE_VALUE_CHARS} characters"),
            ));
        }
        let mut entry = Map::new();
        entry.insert("value".into(), json!(v.value));
        if !v.color.is_empty() {
            let ok = v.color.len() == 7
                && v.color.starts_with('#')
                && v.color[1..].bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(bad(&format!("{field}.color"), "must be #RRGGBB"));
            }
            entry.insert("color".into(), json!(v.color));
        }
        data.insert(key.clone(), Value::Object(entry));
    }
    let mut body = Map::new();
    body.insert("touser".into(), json!(t.touser));
    body.insert("template_id".into(), json!(t.template_id));
    if !t.url.is_empty() {
        check_url("template.url", &t.url)?;
        body.insert("url".into(), json!(t.url));
    }
    if let Some(mp) = &t.miniprogram {
        body.insert(
            "miniprogram".into(),
            mini_program("template.miniprogram", mp)?,
        );
    }
    if !t.client_msg_id.is_empty() {
        check_token_like("template.client_msg_id", &t.client_msg_id, 64)?;
        body.insert("client_msg_id".into(), json!(t.client_msg_id));
    }
    body.insert("data".into(), Value::Object(data));
    Ok(Prepared {
        kind: "template",
        api: TEMPLATE_SEND,
        touser: t.touser.clone(),
        body,
    })
}

/// The most characters a subscribe keyword's value may have, by the keyword's type (its name
/// without the trailing digits), per the official table (wechat-protocol.md §5.4).
fn subscribe_limit(key: &str) -> usize {
    let kind = key.trim_end_matches(|c: char| c.is_ascii_digit());
    match kind {
        "thing" => 20,
        "number" | "letter" | "character_string" => 32,
        "symbol" | "phrase" => 5,
        "phone_number" => 17,
        "car_number" => 8,
        "name" => 20,
        "amount" => 11,
        _ => 64,
    }
}

fn subscribe(
    kind: &'static str,
    api: &'static str,
    s: &pb::SubscribeMessage,
) -> Result<Prepared, Status> {
    check_openid(&format!("{kind}.touser"), &s.touser)?;
    check_token_like(&format!("{kind}.template_id"), &s.template_id, 128)?;
    if s.data.is_empty() {
        return Err(bad(&format!("{kind}.data"), "needs at least one keyword"));
    }
    if s.data.len() > MAX_DATA_KEYS {
        return Err(bad(
            &format!("{kind}.data"),
            &format!("has more than {MAX_DATA_KEYS} keywords"),
        ));
    }
    let mut data = Map::new();
    let mut keys: Vec<_> = s.data.keys().collect();
    keys.sort();
    for key in keys {
        data_key(&format!("{kind}.data"), key)?;
        let value = &s.data[key];
        let field = format!("{kind}.data.{key}");
        if value.is_empty() {
            return Err(bad(&field, "must not be empty"));
        }
        let limit = subscribe_limit(key);
        if value.chars().count() > limit {
            return Err(bad(
                &field,
                &format!("is longer than {limit} characters (WeChat: 47003)"),
            ));
        }
        data.insert(key.clone(), json!({"value": value}));
    }
    let mut body = Map::new();
    body.insert("touser".into(), json!(s.touser));
    body.insert("template_id".into(), json!(s.template_id));
    if !s.page.is_empty() {
        check_len(&format!("{kind}.page"), &s.page, MAX_URL_BYTES)?;
        body.insert("page".into(), json!(s.page));
    }
    if !s.miniprogram_state.is_empty() {
        if !["developer", "trial", "formal"].contains(&s.miniprogram_state.as_str()) {
            return Err(bad(
                &format!("{kind}.miniprogram_state"),
                "must be developer, trial or formal",
            ));
        }
        body.insert("miniprogram_state".into(), json!(s.miniprogram_state));
    }
    if !s.lang.is_empty() {
        if !["zh_CN", "en_US", "zh_HK", "zh_TW"].contains(&s.lang.as_str()) {
            return Err(bad(
                &format!("{kind}.lang"),
                "must be zh_CN, en_US, zh_HK or zh_TW",
            ));
        }
        body.insert("lang".into(), json!(s.lang));
    }
    if let Some(mp) = &s.miniprogram {
        if kind == "subscribe" {
            return Err(bad(
                "subscribe.miniprogram",
                "is for Official Account notices (bizsend); a mini program opens `page`",
            ));
        }
        body.insert(
            "miniprogram".into(),
            mini_program(&format!("{kind}.miniprogram"), mp)?,
        );
    }
    body.insert("data".into(), Value::Object(data));
    Ok(Prepared {
        kind,
        api,
        touser: s.touser.clone(),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn custom_msg(msgtype: &str, body: &str) -> Message {
        Message::Custom(pb::CustomMessage {
            touser: "o_user-1".into(),
            msgtype: msgtype.into(),
            body_json: body.into(),
            kf_account: String::new(),
        })
    }

    fn refused(m: Message) -> String {
        let s = prepare(Some(&m)).unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        s.message().to_owned()
    }

    #[test]
    fn every_msgtype_builds_its_body() {
        for (t, body) in [
            ("text", r#"{"content":"hi"}"#),
            ("image", r#"{"media_id":"m"}"#),
            ("voice", r#"{"media_id":"m"}"#),
            ("video", r#"{"media_id":"m","title":"t"}"#),
            (
                "music",
                r#"{"musicurl":"u","hqmusicurl":"h","thumb_media_id":"t"}"#,
            ),
            (
                "news",
                r#"{"articles":[{"title":"t","url":"https://a.b/c"}]}"#,
            ),
            ("mpnews", r#"{"media_id":"m"}"#),
            ("mpnewsarticle", r#"{"article_id":"a"}"#),
            ("msgmenu", r#"{"list":[{"id":"1","content":"yes"}]}"#),
            ("wxcard", r#"{"card_id":"c"}"#),
            (
                "miniprogrampage",
                r#"{"title":"t","appid":"wxabc","pagepath":"p","thumb_media_id":"m"}"#,
            ),
            (
                "link",
                r#"{"title":"t","description":"d","url":"https://x.y","thumb_url":"u"}"#,
            ),
        ] {
            let p = prepare(Some(&custom_msg(t, body))).unwrap_or_else(|e| panic!("{t}: {e}"));
            assert_eq!(p.body["msgtype"], t);
            assert!(p.body[t].is_object());
        }
    }

    #[test]
    fn bad_input_names_the_field() {
        assert!(refused(custom_msg("gif", "{}")).contains("custom.msgtype"));
        assert!(refused(custom_msg("text", "{}")).contains("custom.text.content"));
        assert!(refused(custom_msg("text", "[1]")).contains("custom.body_json"));
        let long = format!(r#"{{"content":"{}"}}"#, "x".repeat(2049));
        assert!(refused(custom_msg("text", &long)).contains("2048"));
        assert!(
            refused(custom_msg(
                "news",
                r#"{"articles":[{"title":"a"},{"title":"b"}]}"#
            ))
            .contains("45008")
        );
        assert!(
            refused(custom_msg("image", r#"{"media_id":1}"#)).contains("custom.image.media_id")
        );
        let mut m = pb::CustomMessage {
            touser: "bad openid!".into(),
            msgtype: "text".into(),
            body_json: r#"{"content":"x"}"#.into(),
            kf_account: String::new(),
        };
        assert!(refused(Message::Custom(m.clone())).contains("custom.touser"));
        m.touser = "o1".into();
        m.kf_account = "nobody".into();
        assert!(refused(Message::Custom(m)).contains("custom.kf_account"));
        let t = pb::TemplateMessage {
            touser: "o1".into(),
            template_id: "tpl".into(),
            ..Default::default()
        };
        assert!(refused(Message::Template(t.clone())).contains("template.data"));
        let mut t2 = t.clone();
        t2.data.insert(
            "k1".into(),
            pb::TemplateValue {
                value: "v".into(),
                color: "red".into(),
            },
        );
        assert!(refused(Message::Template(t2)).contains("template.data.k1.color"));
        let s = pb::SubscribeMessage {
            touser: "o1".into(),
            template_id: "tpl".into(),
            data: [("thing1".to_owned(), "x".repeat(21))].into(),
            ..Default::default()
        };
        assert!(refused(Message::Subscribe(s)).contains("subscribe.data.thing1"));
        assert!(prepare(None).unwrap_err().message().contains("message"));
    }

    #[test]
    fn template_and_subscribe_bodies() {
        let mut t = pb::TemplateMessage {
            touser: "o1".into(),
            template_id: "tpl".into(),
            url: "https://example.com/x".into(),
            client_msg_id: "c1".into(),
            ..Default::default()
        };
        t.data.insert(
            "k".into(),
            pb::TemplateValue {
                value: "v".into(),
                color: "#173177".into(),
            },
        );
        let p = prepare(Some(&Message::Template(t))).unwrap();
        assert_eq!(p.api, TEMPLATE_SEND);
        assert_eq!(p.body["data"]["k"]["color"], "#173177");
        assert_eq!(p.body["client_msg_id"], "c1");
        let s = pb::SubscribeMessage {
            touser: "o1".into(),
            template_id: "tpl".into(),
            data: [("thing1".to_owned(), "hello".to_owned())].into(),
            miniprogram_state: "trial".into(),
            ..Default::default()
        };
        let p = prepare(Some(&Message::Bizsend(s))).unwrap();
        assert_eq!((p.kind, p.api), ("bizsend", BIZSEND));
        assert_eq!(p.body["data"]["thing1"]["value"], "hello");
    }
}
