//! Passive replies (被动回复) and the encrypted reply envelope (wechat-protocol.md §1.5, §3.5).

use std::fmt::Write;

use wxhub_crypto::{Crypt, CryptoError, KeySlot, msg_signature};

use crate::Header;

/// One article of a `news` reply (WeChat shows only the first since 2018).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Article {
    pub title: String,
    pub description: String,
    pub pic_url: String,
    pub url: String,
}

/// The `music` reply payload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Music {
    pub title: String,
    pub description: String,
    pub music_url: String,
    pub hq_music_url: String,
    pub thumb_media_id: String,
}

/// What a passive reply says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyBody {
    Text {
        content: String,
    },
    Image {
        media_id: String,
    },
    Voice {
        media_id: String,
    },
    Video {
        media_id: String,
        title: String,
        description: String,
    },
    Music(Music),
    News(Vec<Article>),
    /// Hand the conversation to customer service, optionally to one account.
    TransferCustomerService {
        kf_account: Option<String>,
    },
}

/// A passive reply: To/From are the request's From/To.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub to_user_name: String,
    pub from_user_name: String,
    pub create_time: i64,
    pub body: ReplyBody,
}

impl Reply {
    /// Answers the message with this header (swapping To and From).
    pub fn answer(request: &Header, create_time: i64, body: ReplyBody) -> Self {
        Self {
            to_user_name: request.from_user_name.clone(),
            from_user_name: request.to_user_name.clone(),
            create_time,
            body,
        }
    }

    /// A text reply to `request`.
    pub fn text(request: &Header, create_time: i64, content: impl Into<String>) -> Self {
        Self::answer(
            request,
            create_time,
            ReplyBody::Text {
                content: content.into(),
            },
        )
    }

    /// The reply XML, every string in CDATA (`]]>` inside text survives the round trip).
    pub fn to_xml(&self) -> String {
        let mut out = String::with_capacity(256);
        out.push_str("<xml><ToUserName>");
        cdata(&mut out, &self.to_user_name);
        out.push_str("</ToUserName><FromUserName>");
        cdata(&mut out, &self.from_user_name);
        let _ = write!(
            out,
            "</FromUserName><CreateTime>{}</CreateTime><MsgType>",
            self.create_time
        );
        match &self.body {
            ReplyBody::Text { content } => {
                cdata(&mut out, "text");
                out.push_str("</MsgType>");
                element(&mut out, "Content", content);
            }
            ReplyBody::Image { media_id } => {
                cdata(&mut out, "image");
                out.push_str("</MsgType><Image>");
                element(&mut out, "MediaId", media_id);
                out.push_str("</Image>");
            }
            ReplyBody::Voice { media_id } => {
                cdata(&mut out, "voice");
                out.push_str("</MsgType><Voice>");
                element(&mut out, "MediaId", media_id);
                out.push_str("</Voice>");
            }
            ReplyBody::Video {
                media_id,
                title,
                description,
            } => {
                cdata(&mut out, "video");
                out.push_str("</MsgType><Video>");
                element(&mut out, "MediaId", media_id);
                element(&mut out, "Title", title);
                element(&mut out, "Description", description);
                out.push_str("</Video>");
            }
            ReplyBody::Music(m) => {
                cdata(&mut out, "music");
                out.push_str("</MsgType><Music>");
                element(&mut out, "Title", &m.title);
                element(&mut out, "Description", &m.description);
                element(&mut out, "MusicUrl", &m.music_url);
                element(&mut out, "HQMusicUrl", &m.hq_music_url);
                element(&mut out, "ThumbMediaId", &m.thumb_media_id);
                out.push_str("</Music>");
            }
            ReplyBody::News(articles) => {
                cdata(&mut out, "news");
                let _ = write!(
                    out,
                    "</MsgType><ArticleCount>{}</ArticleCount><Articles>",
                    articles.len()
                );
                for a in articles {
                    out.push_str("<item>");
                    element(&mut out, "Title", &a.title);
                    element(&mut out, "Description", &a.description);
                    element(&mut out, "PicUrl", &a.pic_url);
                    element(&mut out, "Url", &a.url);
                    out.push_str("</item>");
                }
                out.push_str("</Articles>");
            }
            ReplyBody::TransferCustomerService { kf_account } => {
                cdata(&mut out, "transfer_customer_service");
                out.push_str("</MsgType>");
                if let Some(account) = kf_account {
                    out.push_str("<TransInfo>");
                    element(&mut out, "KfAccount", account);
                    out.push_str("</TransInfo>");
                }
            }
        }
        out.push_str("</xml>");
        out
    }
}

/// Wraps `reply_xml` in WeChat's encrypted reply envelope, signed with the same timestamp and
/// nonce it carries, encrypted with the key that decrypted the request.
pub fn encrypted_envelope(
    crypt: &Crypt,
    slot: KeySlot,
    reply_xml: &str,
    timestamp: &str,
    nonce: &str,
) -> Result<String, CryptoError> {
    if timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CryptoError::ReturnXml("timestamp must be decimal digits"));
    }
    let encrypt = crypt.encrypt(reply_xml.as_bytes(), slot);
    Ok(envelope(
        &encrypt,
        &msg_signature(crypt.token(), timestamp, nonce, &encrypt),
        timestamp,
        nonce,
    ))
}

/// The exact template of the official samples.
pub(crate) fn envelope(encrypt: &str, signature: &str, timestamp: &str, nonce: &str) -> String {
    let mut out = String::with_capacity(encrypt.len() + 200);
    out.push_str("<xml>\n<Encrypt>");
    cdata(&mut out, encrypt);
    out.push_str("</Encrypt>\n<MsgSignature>");
    cdata(&mut out, signature);
    let _ = write!(
        out,
        "</MsgSignature>\n<TimeStamp>{timestamp}</TimeStamp>\n<Nonce>"
    );
    cdata(&mut out, nonce);
    out.push_str("</Nonce>\n</xml>");
    out
}

fn element(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, "<{name}>");
    cdata(out, value);
    let _ = write!(out, "</{name}>");
}

/// Writes `value` as CDATA, splitting any `]]>` across two sections.
fn cdata(out: &mut String, value: &str) {
    out.push_str("<![CDATA[");
    out.push_str(&value.replace("]]>", "]]]]><![CDATA[>"));
    out.push_str("]]>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v3b_envelope_template_is_exact() {
        let crypt = Crypt::from_parts(
            "123456",
            "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR",
            "wx49f0ab532d5d035a",
        )
        .unwrap();
        let reply = "<xml>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[test]]></Content>\n<FromUserName><![CDATA[wx49f0ab532d5d035a]]></FromUserName>\n<ToUserName><![CDATA[messense]]></ToUserName>\n<AgentID>1</AgentID>\n<CreateTime>1411525903</CreateTime>\n</xml>";
        let encrypt =
            crypt.encrypt_with_random(reply.as_bytes(), b"1234567890123456", KeySlot::Current);
        let signature = msg_signature("123456", "1411525903", "461056294", &encrypt);
        assert_eq!(
            envelope(&encrypt, &signature, "1411525903", "461056294"),
            "<xml>\n<Encrypt><![CDATA[9s4gMv99m88kKTh/H8IdkOiMg6bisoy3ypwy9H4hvSPe9nsGaqyw5hhSjdYbcrKk+j3nba4HMOTzHrluLBYqxgNcBqGsL8GqxlhZgURnAtObvesEl5nZ+uBE8bviY0LWke8Zy9V/QYKxNV2FqllNXcfmstttyIkMKCCmVbCFM2JTF5wY0nFhHZSjPUL2Q1qvSUCUld+/WIXrx0oyKQmpB6o8NRrrNrsDf03oxI1p9FxUgMnwKKZeOA/uu+2IEvEBtb7muXsVbwbgX05UPPJvFurDXafG0RQyPR+mf1nDnAtQmmNOuiR5MIkdQ39xn1vWwi1O5oazPoQJz0nTYjxxEE8kv3kFxtAGVRe3ypD3WeK2XeFYFMNMpatF9XiKzHo3]]></Encrypt>\n<MsgSignature><![CDATA[407518b7649e86ef23978113f92d27afa9296533]]></MsgSignature>\n<TimeStamp>1411525903</TimeStamp>\n<Nonce><![CDATA[461056294]]></Nonce>\n</xml>"
        );
    }

    #[test]
    fn rejects_non_numeric_timestamp() {
        let crypt =
            Crypt::from_parts("t", "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR", "wx1").unwrap();
        assert!(encrypted_envelope(&crypt, KeySlot::Current, "<xml/>", "12<", "n").is_err());
    }
}
