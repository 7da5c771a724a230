//! Safe, compatible and plaintext modes; Official Account and WeCom tenants; URL verification
//! for all three kinds; key rotation.

use reqwest::StatusCode;
use wxhub_crypto::{KeySlot, msg_signature, signature};

use crate::bad_input::urlencode;
use crate::common::*;

#[tokio::test]
async fn official_account_in_safe_compatible_and_plaintext_modes() {
    let h = Harness::start("gw-oa").await;
    h.wait_connected().await;
    for (i, framing) in [Framing::Safe, Framing::Compatible, Framing::Plain]
        .into_iter()
        .enumerate()
    {
        let xml = text_xml("gh_oa", "oReader", "hi", 7_300_000_000 + i as u64);
        let (status, body) = h
            .post(&callback("/wx/oa/callback", &oa(), framing, &xml))
            .await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "success"),
            "{framing:?}"
        );
        let got = h.take(&h.unrouted()).await;
        assert_eq!(got.len(), 1, "{framing:?}");
        assert_eq!(
            got[0].delivery.routing_key.as_str(),
            format!("oa.{OA_APPID}.text")
        );
        let e = event_of(&got[0]);
        assert_eq!(e.tenant_kind, "official_account");
        assert_eq!(e.appid, OA_APPID);
        assert_eq!(e.xml, xml);
        let mode = match framing {
            Framing::Safe => "safe",
            Framing::Compatible => "compatible",
            _ => "plain",
        };
        assert_eq!(e.encrypt_mode, mode);
    }
    h.stop().await;
}

#[tokio::test]
async fn compatible_mode_trusts_only_the_ciphertext() {
    let h = Harness::start("gw-compat").await;
    h.wait_connected().await;
    let real = text_xml("gh_oa", "oReader", "the real content", 7_300_000_010);
    let mut cb = callback("/wx/oa/callback", &oa(), Framing::Compatible, &real);
    // A man in the middle edits the plaintext copy; the signature covers only Encrypt.
    cb.body = cb.body.replace("the real content", "forged content");
    assert!(cb.body.contains("forged content"));
    assert_eq!(h.post(&cb).await.0, StatusCode::OK);
    let got = h.take(&h.unrouted()).await;
    assert_eq!(got.len(), 1);
    assert!(event_of(&got[0]).xml.contains("the real content"));
    h.stop().await;
}

#[tokio::test]
async fn wecom_tenant_verifies_its_url_and_receives_encrypted_pushes() {
    let h = Harness::start("gw-wecom").await;
    h.wait_connected().await;
    // URL verification: msg_signature over the encrypted echostr; the answer is its plaintext.
    let ts = now().to_string();
    let echostr = corp().encrypt(b"5927782489442352469", KeySlot::Current);
    let ms = msg_signature("corptoken", &ts, "437374425", &echostr);
    let (status, body) = h
        .get(&format!(
            "/wx/corp/callback?msg_signature={ms}&timestamp={ts}&nonce=437374425&echostr={}",
            urlencode(&echostr)
        ))
        .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "5927782489442352469")
    );
    // Unescaped `+` in the echostr (some senders do not escape it) works too.
    if echostr.contains('+') {
        let (status, _) = h
            .get(&format!(
                "/wx/corp/callback?msg_signature={ms}&timestamp={ts}&nonce=437374425&echostr={}",
                echostr.replace('/', "%2F").replace('=', "%3D")
            ))
            .await;
        assert_eq!(status, StatusCode::OK);
    }

    let xml = format!(
        "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[zhangsan]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi]]></Content><MsgId>4363689963896700987</MsgId><AgentID>1000002</AgentID></xml>",
        now()
    );
    let (status, body) = h
        .post(&callback(
            "/wx/corp/callback",
            &corp(),
            Framing::Wecom,
            &xml,
        ))
        .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, ""),
        "WeCom acknowledges with an empty body"
    );
    let got = h.take(&h.unrouted()).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].delivery.routing_key.as_str(),
        format!("corp.{CORP_ID}.text")
    );
    let e = event_of(&got[0]);
    assert_eq!(
        (
            e.tenant_kind.as_str(),
            e.appid.as_str(),
            e.agent_id.as_str(),
            e.encrypt_mode.as_str()
        ),
        ("wecom", CORP_ID, "1000002", "safe")
    );
    // A WeCom ciphertext for another corp is refused.
    let other = crypt("corptoken", K_CORP, "wwothercorp00000");
    let (status, body) = h
        .post(&callback("/wx/corp/callback", &other, Framing::Wecom, &xml))
        .await;
    assert_eq!(
        (status, body.trim()),
        (StatusCode::FORBIDDEN, "rejected: appid")
    );
    h.stop().await;
}

#[tokio::test]
async fn official_account_and_component_urls_verify_with_plain_signatures() {
    let h = Harness::start("gw-verify").await;
    let ts = now().to_string();
    for (path, token) in [
        ("/wx/oa/callback", "oatoken"),
        ("/wx/comp/component", SHARED_TOKEN),
        ("/wx/comp/callback/wxauth0000000001", SHARED_TOKEN),
    ] {
        let sig = signature(token, &ts, "1514711492");
        let (status, body) = h
            .get(&format!(
                "{path}?signature={sig}&echostr=4375120948345356249&timestamp={ts}&nonce=1514711492"
            ))
            .await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "4375120948345356249"),
            "{path}"
        );
    }
    // Verification changes no state.
    h.assert_no_state().await;
    h.stop().await;
}

#[tokio::test]
async fn during_key_rotation_the_previous_key_is_accepted_and_replies_use_it() {
    let h = Harness::start("gw-rotate").await;
    h.wait_connected().await;
    let path = "/wx/rot/callback/wxauth0000000001";
    let xml = text_xml("gh_rot", "oRot", "old key", 7_300_000_020);
    let cb = callback_at(
        path,
        &rot_previous(),
        Framing::Safe,
        &xml,
        now(),
        KeySlot::Current,
    );
    assert_eq!(h.post(&cb).await.0, StatusCode::OK);
    let got = h.take(&h.unrouted()).await;
    assert_eq!(got.len(), 1);
    assert_eq!(event_of(&got[0]).xml, xml);
    let cb = callback(
        path,
        &rot(),
        Framing::Safe,
        &text_xml("gh_rot", "oRot", "new key", 7_300_000_021),
    );
    assert_eq!(h.post(&cb).await.0, StatusCode::OK);
    assert_eq!(h.take(&h.unrouted()).await.len(), 1);

    // A passive reply to a request under the previous key is encrypted with the previous key.
    let test_account = "/wx/rot/callback/wx570bc396a51b8ff8";
    let xml = text_xml(
        "gh_3c884a361561",
        "oTester",
        "TESTCOMPONENT_MSG_TYPE_TEXT",
        7_300_000_022,
    );
    let (status, body) = h
        .post(&callback(
            test_account,
            &rot_previous(),
            Framing::Safe,
            &xml,
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let previous_only = only_key("rottoken", K_COMP, ROT_APPID);
    let current_only = only_key("rottoken", K_ROT, ROT_APPID);
    let reply = open_reply(&previous_only, &body).expect("the reply opens with the previous key");
    assert_eq!(reply.header().to_user_name, "oTester");
    assert!(
        open_reply(&current_only, &body).is_err(),
        "not with the current key"
    );
    // ... and under the current key for a request under the current key.
    let (_, body) = h
        .post(&callback(test_account, &rot(), Framing::Safe, &xml))
        .await;
    assert!(open_reply(&current_only, &body).is_ok());
    assert!(open_reply(&previous_only, &body).is_err());
    h.stop().await;
}

#[tokio::test]
async fn plaintext_is_refused_for_an_official_account_without_the_opt_in() {
    let h = Harness::start_with(
        "gw-noplain",
        Options {
            // The usual tenants, but "oa" not configured for plaintext mode.
            tenants: Some(tenants_toml().replace("plaintext = true\n", "")),
            ..Options::default()
        },
    )
    .await;
    h.wait_connected().await;
    let xml = text_xml("gh_oa", "oReader", "hi", 7_300_000_030);
    let (status, body) = h
        .post(&callback("/wx/oa/callback", &oa(), Framing::Plain, &xml))
        .await;
    assert_eq!(
        (status, body.trim()),
        (StatusCode::BAD_REQUEST, "rejected: plaintext_not_allowed")
    );
    h.assert_no_state().await;
    for framing in [Framing::Safe, Framing::Compatible] {
        assert_eq!(
            h.post(&callback("/wx/oa/callback", &oa(), framing, &xml))
                .await
                .0,
            StatusCode::OK
        );
    }
    assert_eq!(
        h.take(&h.unrouted()).await.len(),
        1,
        "one message, deduplicated"
    );
    h.stop().await;
}
