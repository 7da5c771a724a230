//! The bodies of a run, generated and signed before the clock starts.
//!
//! Each message has a unique `MsgId` and each event a unique `FromUserName`, so a deduplicating
//! gateway publishes every one. The pool is bounded by memory; when a run needs more bodies
//! than it holds they are reused and the report says so. Whole HTTP requests (signed URL,
//! headers, body) are pre-serialized and re-signed only when their timestamp is older than
//! 30 s, so receivers that check timestamp freshness accept long runs. The XML and its envelope
//! are the simulator's ([`MessageSpec`], [`message_body`]): what WeChat would post.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use wxhub_crypto::{Crypt, KeySlot, msg_signature, signature};
use wxhub_sim::{Encryption, MessageSpec, VirtualClock, message_body};

use crate::LoadError;
use crate::config::{LoadConfig, LoadKind};

/// One pre-generated callback: its body, its signed request, and what re-signing it needs.
pub(crate) struct Item {
    url: String,
    body: Bytes,
    /// The whole HTTP/1.1 request, ready to write.
    request: Bytes,
    encrypt: Option<String>,
    openid: String,
    nonce: String,
    timestamp: i64,
}

/// Signs the run's target URL as WeChat signs a callback, and frames requests for the wire.
pub(crate) struct Signer {
    base: String,
    /// `host:port` for the `Host` header.
    pub(crate) host: String,
    token: String,
    mode: Encryption,
}

impl Signer {
    pub(crate) fn new(cfg: &LoadConfig) -> Result<Self, LoadError> {
        let base = cfg.target();
        let parsed = url::Url::parse(&base)
            .map_err(|e| LoadError::Config(format!("bad gateway URL: {e}")))?;
        if parsed.scheme() != "http" {
            return Err(LoadError::Config(
                "the load generator speaks plain http:// only".into(),
            ));
        }
        let host = match (parsed.host_str(), parsed.port_or_known_default()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            _ => return Err(LoadError::Config("gateway URL without a host".into())),
        };
        Ok(Self {
            base,
            host,
            token: cfg.token.expose().to_owned(),
            mode: cfg.mode,
        })
    }

    /// `POST {path?query} HTTP/1.1` with the body, as bytes on the wire.
    fn request(&self, url: &str, body: &[u8]) -> Bytes {
        let path = url
            .strip_prefix("http://")
            .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
            .unwrap_or("/");
        let mut out = Vec::with_capacity(path.len() + body.len() + 128);
        out.extend_from_slice(b"POST ");
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(self.host.as_bytes());
        out.extend_from_slice(b"\r\nContent-Type: text/xml\r\nContent-Length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
        Bytes::from(out)
    }

    fn url(&self, timestamp: i64, nonce: &str, openid: &str, encrypt: Option<&str>) -> String {
        let ts = timestamp.to_string();
        let mut url = String::with_capacity(self.base.len() + 200);
        url.push_str(&self.base);
        url.push(if self.base.contains('?') { '&' } else { '?' });
        url.push_str("signature=");
        url.push_str(&signature(&self.token, &ts, nonce));
        url.push_str("&timestamp=");
        url.push_str(&ts);
        url.push_str("&nonce=");
        url.push_str(nonce);
        url.push_str("&openid=");
        url.extend(url::form_urlencoded::byte_serialize(openid.as_bytes()));
        if let (Some(encrypt), false) = (encrypt, self.mode == Encryption::Plain) {
            url.push_str("&encrypt_type=aes&msg_signature=");
            url.push_str(&msg_signature(&self.token, &ts, nonce, encrypt));
        }
        url
    }
}

fn build_item(
    i: u64,
    kind: LoadKind,
    cfg: &LoadConfig,
    crypt: &Crypt,
    signer: &Signer,
    now_secs: i64,
    msg_base: u64,
) -> Result<Item, LoadError> {
    let (openid, message) = match kind {
        LoadKind::Text => (
            "o_load_user".to_owned(),
            MessageSpec::text(format!("load test {i}")),
        ),
        LoadKind::Image => (
            "o_load_user".to_owned(),
            MessageSpec::Image {
                pic_url: format!("http://mmbiz.qpic.cn/load/{i}"),
                media_id: format!("media_{i}"),
            },
        ),
        LoadKind::Voice => (
            "o_load_user".to_owned(),
            MessageSpec::Voice {
                media_id: format!("media_{i}"),
                format: "amr".into(),
                recognition: None,
            },
        ),
        LoadKind::Location => (
            "o_load_user".to_owned(),
            MessageSpec::Location {
                location_x: 23.134521,
                location_y: 113.358803,
                scale: 20,
                label: format!("place {i}"),
            },
        ),
        LoadKind::Link => (
            "o_load_user".to_owned(),
            MessageSpec::Link {
                title: format!("link {i}"),
                description: "load".into(),
                url: format!("https://example.invalid/{i}"),
            },
        ),
        // Events dedupe on FromUserName + CreateTime: a unique user per event keeps them apart.
        LoadKind::Event => (format!("o_load_{i}"), MessageSpec::click("load")),
    };
    let xml = message.to_xml(&cfg.to_user_name, &openid, now_secs, msg_base + i);
    let nonce = (1_000_000_000 + i).to_string();
    let encrypt = match cfg.mode {
        Encryption::Plain => None,
        _ => Some(crypt.encrypt(xml.as_bytes(), KeySlot::Current)),
    };
    // The generator's own XML always is an <xml> document, so this cannot fail; should it, the
    // run refuses to start instead of sending something WeChat would not.
    let body = message_body(&cfg.to_user_name, cfg.mode, &xml, encrypt.as_deref())
        .map_err(|e| LoadError::Config(format!("cannot frame a body: {e}")))?;
    let url = signer.url(now_secs, &nonce, &openid, encrypt.as_deref());
    let body = Bytes::from(body);
    Ok(Item {
        request: signer.request(&url, &body),
        url,
        body,
        encrypt,
        openid,
        nonce,
        timestamp: now_secs,
    })
}

pub(crate) fn pregenerate(cfg: &LoadConfig) -> Result<(Vec<Item>, bool), LoadError> {
    let crypt = Crypt::from_parts(
        cfg.token.expose(),
        cfg.aes_key.expose(),
        &cfg.component_appid,
    )
    .map_err(|e| LoadError::Config(format!("aes_key: {e}")))?;
    let signer = Signer::new(cfg)?;
    let now = VirtualClock::wall_ms() / 1000;
    let msg_base = u64::try_from(VirtualClock::wall_ms()).unwrap_or(0) * 1000;
    let sample = build_item(0, LoadKind::Text, cfg, &crypt, &signer, now, msg_base)?;
    let per_item = sample.url.len() + sample.request.len() + sample.body.len() * 2 + 128;
    let max_items = (cfg.pool_bytes / per_item).max(1);
    let secs = cfg.duration.as_secs_f64().max(0.001);
    let needed = match cfg.rate {
        Some(rate) => (rate * secs).ceil() as usize + 1,
        // Closed loop: nobody knows the rate in advance; assume at most 100k/s.
        None => (100_000.0 * secs).ceil() as usize,
    };
    let count = needed.min(max_items).max(1);
    let total: u32 = cfg.mix.iter().map(|(_, w)| *w).sum();
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut items = Vec::with_capacity(count);
    for i in 0..count as u64 {
        let mut pick = rng.random_range(0..total.max(1));
        let mut kind = cfg.mix[0].0;
        for (k, w) in &cfg.mix {
            if pick < *w {
                kind = *k;
                break;
            }
            pick -= w;
        }
        items.push(build_item(i, kind, cfg, &crypt, &signer, now, msg_base)?);
    }
    Ok((items, needed > count))
}

/// Where requests come from: the pre-generated pool, re-signed when its timestamps get old.
#[derive(Clone)]
pub(crate) struct Source {
    pub(crate) items: Arc<Vec<Item>>,
    pub(crate) signer: Arc<Signer>,
    pub(crate) wrapped: Arc<AtomicBool>,
}

impl Source {
    /// The `i`-th request on the wire.
    pub(crate) fn request(&self, i: u64) -> Bytes {
        let len = self.items.len() as u64;
        if i >= len {
            self.wrapped.store(true, Ordering::Relaxed);
        }
        let item = &self.items[(i % len) as usize];
        let now_secs = VirtualClock::wall_ms() / 1000;
        if now_secs - item.timestamp > 30 {
            let url = self
                .signer
                .url(now_secs, &item.nonce, &item.openid, item.encrypt.as_deref());
            self.signer.request(&url, &item.body)
        } else {
            item.request.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_serialized_once_with_path_and_length() {
        let cfg = LoadConfig::new(
            "http://127.0.0.1:9/",
            "acme",
            "wx1",
            "t",
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
            "wxc",
        );
        let signer = Signer::new(&cfg).unwrap();
        let req = signer.request("http://127.0.0.1:9/wx/acme/callback/wx1?x=1", b"<xml/>");
        assert_eq!(
            &req[..],
            b"POST /wx/acme/callback/wx1?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9\r\nContent-Type: text/xml\r\nContent-Length: 6\r\n\r\n<xml/>"
        );
        let mut https = cfg.clone();
        https.gateway = "https://example.invalid".into();
        assert!(Signer::new(&https).is_err());
    }
}
