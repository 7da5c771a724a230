//! Invariants 4 and 5: every malformed or foreign input gets a clear 4xx, is counted, and leaves
//! no trace (no message in any queue, no Redis key). A callback encrypted with another tenant's
//! key is never accepted.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::StatusCode;
use wxhub_crypto::{AesKey, Crypt, KeySlot, msg_signature, seal, signature};

use crate::common::*;

const AUTHORIZER: &str = "/wx/comp/callback/wxauth0000000001";

fn text() -> String {
    text_xml("gh_acme", "oBad", "hello", 7_200_000_001)
}

/// Re-signs `cb` after `edit` changed its query (so only the edited part is wrong).
fn with_query(
    cb: &Callback,
    edit: impl Fn(Vec<(String, String)>) -> Vec<(String, String)>,
) -> Callback {
    let (path, query) = cb.path_and_query.split_once('?').unwrap();
    let pairs: Vec<(String, String)> = query
        .split('&')
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let query = edit(pairs)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    Callback {
        path_and_query: format!("{path}?{query}"),
        body: cb.body.clone(),
    }
}

fn without(name: &'static str) -> impl Fn(Vec<(String, String)>) -> Vec<(String, String)> {
    move |pairs| pairs.into_iter().filter(|(k, _)| k != name).collect()
}

fn replace(
    name: &'static str,
    value: String,
) -> impl Fn(Vec<(String, String)>) -> Vec<(String, String)> {
    move |pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| {
                if k == name {
                    (k, value.clone())
                } else {
                    (k, v)
                }
            })
            .collect()
    }
}

/// A ciphertext of `message` for `appid` under `key` whose padding byte decrypts to 0: flipping
/// the last byte of the second-to-last block flips the same bit of the last plaintext byte.
fn bad_padding(key: &str, message: &[u8], appid: &str) -> String {
    let key = AesKey::parse(key).unwrap();
    let good = seal(&key, b"0123456789abcdef", message, appid.as_bytes());
    let mut ct = B64.decode(good).unwrap();
    let pad = 32 - (20 + message.len() + appid.len()) % 32;
    let n = ct.len();
    ct[n - 17] ^= pad as u8;
    B64.encode(ct)
}

#[tokio::test]
async fn each_bad_input_gets_its_4xx_and_changes_nothing() {
    let h = Harness::start("gw-bad").await;
    h.wait_connected().await;
    let good = callback(AUTHORIZER, &comp(), Framing::Safe, &text());
    let c = comp();
    let key = AesKey::parse(K_COMP).unwrap();
    let seal_for =
        |message: &[u8], appid: &str| seal(&key, b"0123456789abcdef", message, appid.as_bytes());
    let old = now() - 1000;

    let cases: Vec<(&str, Callback, StatusCode, &str)> = vec![
        (
            "unknown tenant",
            callback("/wx/nobody/callback/wxauth0000000001", &c, Framing::Safe, &text()),
            StatusCode::NOT_FOUND,
            "unknown_tenant",
        ),
        (
            "tenant id that cannot exist",
            callback("/wx/No%20Body!/callback/wxauth0000000001", &c, Framing::Safe, &text()),
            StatusCode::NOT_FOUND,
            "unknown_tenant",
        ),
        (
            "component tenant on the direct route",
            callback("/wx/comp/callback", &c, Framing::Safe, &text()),
            StatusCode::NOT_FOUND,
            "wrong_kind",
        ),
        (
            "official account on the component route",
            callback("/wx/oa/component", &oa(), Framing::Safe, &ticket_xml(OA_APPID, "t")),
            StatusCode::NOT_FOUND,
            "wrong_kind",
        ),
        (
            "official account on the authorizer route",
            callback("/wx/oa/callback/wxauth0000000001", &oa(), Framing::Safe, &text()),
            StatusCode::NOT_FOUND,
            "wrong_kind",
        ),
        (
            "wecom on the component route",
            callback("/wx/corp/component", &corp(), Framing::Wecom, &text()),
            StatusCode::NOT_FOUND,
            "wrong_kind",
        ),
        (
            "authorizer appid of the wrong form",
            callback("/wx/comp/callback/not-an-appid", &c, Framing::Safe, &text()),
            StatusCode::BAD_REQUEST,
            "bad_appid",
        ),
        (
            "missing signature",
            with_query(&good, without("signature")),
            StatusCode::UNAUTHORIZED,
            "missing_signature",
        ),
        (
            "wrong signature",
            with_query(&good, replace("signature", "0".repeat(40))),
            StatusCode::UNAUTHORIZED,
            "signature",
        ),
        (
            "signature that is not hex",
            with_query(&good, replace("signature", "zz".into())),
            StatusCode::UNAUTHORIZED,
            "signature",
        ),
        (
            "missing msg_signature",
            with_query(&good, without("msg_signature")),
            StatusCode::UNAUTHORIZED,
            "missing_signature",
        ),
        (
            "wrong msg_signature",
            with_query(&good, replace("msg_signature", "1".repeat(40))),
            StatusCode::UNAUTHORIZED,
            "signature",
        ),
        (
            "missing timestamp",
            with_query(&good, without("timestamp")),
            StatusCode::BAD_REQUEST,
            "missing_param",
        ),
        (
            "missing nonce",
            with_query(&good, without("nonce")),
            StatusCode::BAD_REQUEST,
            "missing_param",
        ),
        (
            "timestamp outside the window (correctly signed)",
            callback_at(AUTHORIZER, &c, Framing::Safe, &text(), old, KeySlot::Current),
            StatusCode::UNAUTHORIZED,
            "timestamp",
        ),
        (
            "timestamp in the future (correctly signed)",
            callback_at(AUTHORIZER, &c, Framing::Safe, &text(), now() + 1000, KeySlot::Current),
            StatusCode::UNAUTHORIZED,
            "timestamp",
        ),
        (
            "unknown encrypt_type",
            with_query(&good, replace("encrypt_type", "des".into())),
            StatusCode::BAD_REQUEST,
            "encrypt_type",
        ),
        (
            "bad base64",
            signed_envelope(AUTHORIZER, &c, "gh_acme", "!!!not*base64!!!"),
            StatusCode::BAD_REQUEST,
            "base64",
        ),
        (
            "ciphertext of the wrong length",
            signed_envelope(AUTHORIZER, &c, "gh_acme", &B64.encode([7u8; 33])),
            StatusCode::BAD_REQUEST,
            "length",
        ),
        (
            "bad padding",
            signed_envelope(AUTHORIZER, &c, "gh_acme", &bad_padding(K_COMP, text().as_bytes(), COMP_APPID)),
            StatusCode::BAD_REQUEST,
            "padding",
        ),
        (
            "appid in the plaintext that is not the tenant's",
            signed_envelope(AUTHORIZER, &c, "gh_acme", &seal_for(text().as_bytes(), COMP_B_APPID)),
            StatusCode::FORBIDDEN,
            "appid",
        ),
        (
            "non-UTF-8 plaintext",
            signed_envelope(AUTHORIZER, &c, "gh_acme", &seal_for(b"<xml>\xff\xfe</xml>", COMP_APPID)),
            StatusCode::BAD_REQUEST,
            "utf8",
        ),
        (
            "truncated XML inside the ciphertext",
            signed_envelope(AUTHORIZER, &c, "gh_acme", &seal_for(b"<xml><ToUserName><![CDATA[gh", COMP_APPID)),
            StatusCode::BAD_REQUEST,
            "xml_malformed",
        ),
        (
            "DOCTYPE inside the ciphertext",
            signed_envelope(
                AUTHORIZER,
                &c,
                "gh_acme",
                &seal_for(br#"<!DOCTYPE xml [<!ENTITY x "boom">]><xml><ToUserName>&x;</ToUserName></xml>"#, COMP_APPID),
            ),
            StatusCode::BAD_REQUEST,
            "xml_dtd",
        ),
        (
            "undeclared entity inside the ciphertext",
            signed_envelope(
                AUTHORIZER,
                &c,
                "gh_acme",
                &seal_for(b"<xml><ToUserName>&xxe;</ToUserName></xml>", COMP_APPID),
            ),
            StatusCode::BAD_REQUEST,
            "xml_dtd",
        ),
        (
            "a message without its required fields",
            signed_envelope(
                AUTHORIZER,
                &c,
                "gh_acme",
                &seal_for(b"<xml><ToUserName>gh</ToUserName><MsgType>text</MsgType></xml>", COMP_APPID),
            ),
            StatusCode::BAD_REQUEST,
            "xml_field",
        ),
        (
            "an account message on the component URL",
            callback("/wx/comp/component", &c, Framing::Safe, &text()),
            StatusCode::BAD_REQUEST,
            "unexpected_payload",
        ),
        (
            "a component notice on the message URL",
            callback(AUTHORIZER, &c, Framing::Safe, &ticket_xml(COMP_APPID, "t")),
            StatusCode::BAD_REQUEST,
            "unexpected_payload",
        ),
        (
            "encrypted without Encrypt",
            Callback {
                path_and_query: good.path_and_query.clone(),
                body: "<xml><ToUserName>gh_acme</ToUserName></xml>".into(),
            },
            StatusCode::BAD_REQUEST,
            "missing_encrypt",
        ),
        (
            "malformed envelope",
            Callback {
                path_and_query: good.path_and_query.clone(),
                body: "<xml><ToUserName>gh_acme</ToUser".into(),
            },
            StatusCode::BAD_REQUEST,
            "xml_malformed",
        ),
        (
            "DOCTYPE in the envelope",
            Callback {
                path_and_query: good.path_and_query.clone(),
                body: format!("<!DOCTYPE xml SYSTEM \"file:///etc/passwd\">{}", good.body),
            },
            StatusCode::BAD_REQUEST,
            "xml_dtd",
        ),
        (
            "plaintext DOCTYPE to an official account",
            callback(
                "/wx/oa/callback",
                &oa(),
                Framing::Plain,
                r#"<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><xml><ToUserName>&lol2;</ToUserName></xml>"#,
            ),
            StatusCode::BAD_REQUEST,
            "xml_dtd",
        ),
        (
            "wecom without msg_signature",
            with_query(
                &callback("/wx/corp/callback", &corp(), Framing::Wecom, &text()),
                without("msg_signature"),
            ),
            StatusCode::UNAUTHORIZED,
            "missing_signature",
        ),
    ];

    for (name, cb, status, reason) in &cases {
        let (got, body) = h.post(cb).await;
        assert_eq!(got, *status, "{name}: {body}");
        assert_eq!(body.trim(), format!("rejected: {reason}"), "{name}");
    }
    // Bodies that are not text at all.
    let oversize = vec![b'a'; 70 * 1024];
    let (status, body) = post_raw(&h, &good.path_and_query, oversize).await;
    assert_eq!(
        (status, body.trim()),
        (StatusCode::PAYLOAD_TOO_LARGE, "rejected: too_large")
    );
    let mut not_utf8 = good.body.clone().into_bytes();
    not_utf8.insert(5, 0xff);
    let (status, body) = post_raw(&h, &good.path_and_query, not_utf8).await;
    assert_eq!(
        (status, body.trim()),
        (StatusCode::BAD_REQUEST, "rejected: utf8")
    );
    let (status, _) = post_raw(&h, &good.path_and_query, Vec::new()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    h.assert_no_state().await;
    let metrics = h.metrics().await;
    for (_, _, _, reason) in &cases {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "no reject metric for {reason}"
        );
    }
    assert!(!metrics.contains("comp-secret-value") && !metrics.contains(K_COMP));

    // The untouched request still works afterwards.
    assert_eq!(h.post(&good).await.0, StatusCode::OK);
    assert_eq!(h.take(&h.unrouted()).await.len(), 1);
    h.stop().await;
}

async fn post_raw(h: &Harness, path_and_query: &str, body: Vec<u8>) -> (StatusCode, String) {
    let res = h
        .http
        .post(format!("{}{}", h.base, path_and_query))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.text().await.unwrap())
}

#[tokio::test]
async fn a_callback_encrypted_with_another_tenants_key_is_never_accepted() {
    let h = Harness::start("gw-foreign").await;
    h.wait_connected().await;
    let xml = text_xml("gh_b", "oForeign", "for b", 7_200_000_002);
    // Both component tenants share the token, so the signatures verify: only the key differs.
    let for_b = callback(
        "/wx/comp-b/callback/wxauth0000000001",
        &comp_b(),
        Framing::Safe,
        &xml,
    );
    let to_a = Callback {
        path_and_query: for_b.path_and_query.replace("/wx/comp-b/", "/wx/comp/"),
        body: for_b.body.clone(),
    };
    let (status, body) = h.post(&to_a).await;
    assert!(status.is_client_error(), "{status} {body}");
    // Signed and framed for A, but encrypted with B's key (and B's appid).
    let b_key = AesKey::parse(K_COMP_B).unwrap();
    let encrypt = seal(
        &b_key,
        b"0123456789abcdef",
        xml.as_bytes(),
        COMP_B_APPID.as_bytes(),
    );
    let (status, body) = h
        .post(&signed_envelope(AUTHORIZER, &comp(), "gh_b", &encrypt))
        .await;
    assert!(status.is_client_error(), "{status} {body}");
    // Encrypted with A's key but claiming B's appid, posted to B: B's key cannot open it.
    let a_key = AesKey::parse(K_COMP).unwrap();
    let encrypt = seal(
        &a_key,
        b"0123456789abcdef",
        xml.as_bytes(),
        COMP_B_APPID.as_bytes(),
    );
    let (status, body) = h
        .post(&signed_envelope(
            "/wx/comp-b/callback/wxauth0000000001",
            &comp_b(),
            "gh_b",
            &encrypt,
        ))
        .await;
    assert!(status.is_client_error(), "{status} {body}");
    // Another tenant's token: the signature fails first.
    let other = Crypt::from_parts("not-the-token", K_COMP, COMP_APPID).unwrap();
    let (status, _) = h
        .post(&callback(AUTHORIZER, &other, Framing::Safe, &xml))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    h.assert_no_state().await;

    // B's own URL accepts it, and it is published under B only.
    assert_eq!(h.post(&for_b).await.0, StatusCode::OK);
    let got = h.take(&h.unrouted()).await;
    assert_eq!(got.len(), 1);
    assert_eq!(event_of(&got[0]).tenant, "comp-b");
    h.stop().await;
}

#[tokio::test]
async fn url_verification_rejects_bad_requests() {
    let h = Harness::start("gw-badget").await;
    let ts = now().to_string();
    let sig = signature("oatoken", &ts, "n1");
    let (status, body) = h
        .get(&format!(
            "/wx/oa/callback?signature={}&timestamp={ts}&nonce=n1&echostr=42",
            "0".repeat(40)
        ))
        .await;
    assert_eq!(
        (status, body.trim()),
        (StatusCode::UNAUTHORIZED, "rejected: signature")
    );
    let (status, _) = h
        .get(&format!(
            "/wx/oa/callback?signature={sig}&timestamp={ts}&nonce=n1"
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = h
        .get(&format!(
            "/wx/nobody/callback?signature={sig}&timestamp={ts}&nonce=n1&echostr=1"
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Correct signature over a stale timestamp.
    let old = (now() - 3600).to_string();
    let (status, _) = h
        .get(&format!(
            "/wx/oa/callback?signature={}&timestamp={old}&nonce=n1&echostr=1",
            signature("oatoken", &old, "n1")
        ))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // WeCom: msg_signature over another echostr.
    let echo = corp().encrypt(b"12345", KeySlot::Current);
    let ms = msg_signature("corptoken", &ts, "n1", "something-else");
    let (status, _) = h
        .get(&format!(
            "/wx/corp/callback?msg_signature={ms}&timestamp={ts}&nonce=n1&echostr={}",
            urlencode(&echo)
        ))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    h.assert_no_state().await;
    h.stop().await;
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
