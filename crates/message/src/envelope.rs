use crate::MessageError;
use crate::xml::{Element, Limits, parse_document};

/// The outer XML of a callback body.
///
/// - Safe mode: `ToUserName` (account) or `AppId` (component) plus `Encrypt`; WeCom adds
///   `AgentID`.
/// - Compatible mode: the plaintext message fields sit next to `Encrypt`.
/// - Plaintext mode: the body is the message itself and there is no `Encrypt`.
///
/// `Encrypt` is located by name, never by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    root: Element<'a>,
}

impl<'a> Envelope<'a> {
    /// The base64 ciphertext, if the body carries one.
    pub fn encrypt(&self) -> Option<&str> {
        self.root.child_text("Encrypt")
    }

    /// `ToUserName` of an account envelope.
    pub fn to_user_name(&self) -> Option<&str> {
        self.root.child_text("ToUserName")
    }

    /// `AppId` of a component envelope.
    pub fn app_id(&self) -> Option<&str> {
        self.root.child_text("AppId")
    }

    /// `AgentID` of a WeCom envelope.
    pub fn agent_id(&self) -> Option<&str> {
        self.root.child_text("AgentID")
    }

    /// The parsed document (in plaintext and compatible modes this is also the message).
    pub fn root(&self) -> &Element<'a> {
        &self.root
    }
}

/// Parses a raw callback body: it must be UTF-8, within `limits`, and well-formed.
pub fn parse_envelope<'a>(body: &'a [u8], limits: &Limits) -> Result<Envelope<'a>, MessageError> {
    if body.len() > limits.max_bytes {
        return Err(MessageError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    let text = simdutf8::basic::from_utf8(body).map_err(|_| MessageError::NotUtf8)?;
    Ok(Envelope {
        root: parse_document(text, limits)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_component_and_wecom_envelopes() {
        let limits = Limits::default();
        let safe = b"<xml><ToUserName><![CDATA[gh_1]]></ToUserName><Encrypt><![CDATA[abc=]]></Encrypt></xml>";
        let e = parse_envelope(safe, &limits).unwrap();
        assert_eq!(
            (e.to_user_name(), e.encrypt()),
            (Some("gh_1"), Some("abc="))
        );

        let component = b"<xml><AppId><![CDATA[wx805ef435fca595d2]]></AppId><Encrypt><![CDATA[x]]></Encrypt></xml>";
        let e = parse_envelope(component, &limits).unwrap();
        assert_eq!(e.app_id(), Some("wx805ef435fca595d2"));

        let wecom = b"<xml><ToUserName><![CDATA[ww1]]></ToUserName><AgentID><![CDATA[1000002]]></AgentID><Encrypt><![CDATA[y]]></Encrypt></xml>";
        let e = parse_envelope(wecom, &limits).unwrap();
        assert_eq!(e.agent_id(), Some("1000002"));
    }

    #[test]
    fn encrypt_is_found_by_name_in_compatible_mode() {
        let body = b"<xml><ToUserName><![CDATA[gh]]></ToUserName><FromUserName><![CDATA[o]]></FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi]]></Content><MsgId>1</MsgId><Encrypt><![CDATA[zz]]></Encrypt></xml>";
        let e = parse_envelope(body, &Limits::default()).unwrap();
        assert_eq!(e.encrypt(), Some("zz"));
        assert_eq!(e.root().child_text("Content"), Some("hi"));
    }

    #[test]
    fn rejects_non_utf8() {
        assert_eq!(
            parse_envelope(b"<xml>\xff</xml>", &Limits::default()),
            Err(MessageError::NotUtf8)
        );
    }
}
