//! The query parameters WeChat puts on callback URLs (wechat-protocol.md §1.6, §1.7).
//!
//! Values are percent-decoded, but `+` stays `+`: every WeChat parameter is digits, hex, an
//! openid or base64 (WeCom's `echostr`), none contains a space, and base64's `+` arrives
//! unescaped from some senders.

use std::borrow::Cow;

/// The recognised parameters; the first occurrence of each wins, unknown ones are ignored.
#[derive(Debug, Default)]
pub(crate) struct Params<'a> {
    pub signature: Option<Cow<'a, str>>,
    pub msg_signature: Option<Cow<'a, str>>,
    pub timestamp: Option<Cow<'a, str>>,
    pub nonce: Option<Cow<'a, str>>,
    pub encrypt_type: Option<Cow<'a, str>>,
    pub echostr: Option<Cow<'a, str>>,
}

impl<'a> Params<'a> {
    pub(crate) fn parse(query: &'a str) -> Self {
        let mut p = Params::default();
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                "signature" => &mut p.signature,
                "msg_signature" => &mut p.msg_signature,
                "timestamp" => &mut p.timestamp,
                "nonce" => &mut p.nonce,
                "encrypt_type" => &mut p.encrypt_type,
                "echostr" => &mut p.echostr,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(decode(value));
            }
        }
        p
    }
}

/// Percent-decodes `s`; invalid escapes are kept literally, invalid UTF-8 is replaced (and then
/// simply fails signature verification).
fn decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A WeChat timestamp: 1 to 12 ASCII digits (no sign, no spaces), as unix seconds.
pub(crate) fn parse_timestamp(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wechat_queries() {
        let p = Params::parse(
            "signature=abc&timestamp=1409735669&nonce=1320562132&openid=o1&encrypt_type=aes&msg_signature=def&signature=ignored",
        );
        assert_eq!(p.signature.as_deref(), Some("abc"));
        assert_eq!(p.msg_signature.as_deref(), Some("def"));
        assert_eq!(p.timestamp.as_deref(), Some("1409735669"));
        assert_eq!(p.nonce.as_deref(), Some("1320562132"));
        assert_eq!(p.encrypt_type.as_deref(), Some("aes"));
        assert!(p.echostr.is_none());
    }

    #[test]
    fn decodes_percent_but_keeps_plus() {
        let p = Params::parse("echostr=ab%2Bc%3D%3D+x%2&nonce=%ZZ");
        assert_eq!(p.echostr.as_deref(), Some("ab+c==+x%2"));
        assert_eq!(p.nonce.as_deref(), Some("%ZZ"));
        let p = Params::parse("echostr=%FF%FE");
        assert!(p.echostr.unwrap().contains('\u{FFFD}'));
        let p = Params::parse("&&=&signature");
        assert_eq!(p.signature.as_deref(), Some(""));
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1700000000"), Some(1_700_000_000));
        assert_eq!(parse_timestamp("+170"), None);
        assert_eq!(parse_timestamp("-1"), None);
        assert_eq!(parse_timestamp(""), None);
        assert_eq!(parse_timestamp("9999999999999"), None);
        assert_eq!(parse_timestamp("17 0"), None);
    }
}
