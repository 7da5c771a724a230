//! Every message, event and component InfoType of wechat-protocol.md §2.4 and §3, the replies,
//! and the hardening rules.

use wxhub_crypto::{Crypt, KeySlot};
use wxhub_message::{
    Article, ComponentNotice, EventKind, Header, Inbound, Message, MessageError, Music, Reply,
    ReplyBody, encrypted_envelope, parse, parse_envelope, parse_message, parse_notice,
};

fn msg(fields: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_3c884a361561]]></ToUserName><FromUserName><![CDATA[oUser]]></FromUserName><CreateTime>1700000000</CreateTime>{fields}</xml>"
    )
}

fn event(name: &str, extra: &str) -> EventKind {
    let xml = msg(&format!(
        "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{name}]]></Event>{extra}"
    ));
    match parse_message(&xml).unwrap() {
        Message::Event(e) => {
            assert_eq!(e.event, name);
            e.kind
        }
        other => panic!("not an event: {other:?}"),
    }
}

#[test]
fn text_message_v1() {
    let xml = "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>\n<FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName>\n<CreateTime>1409735668</CreateTime>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[abcdteT]]></Content>\n<MsgId>6054768590064713728</MsgId>\n</xml>";
    let Message::Text(t) = parse_message(xml).unwrap() else {
        panic!()
    };
    assert_eq!(t.header.to_user_name, "gh_10f6c3c3ac5a");
    assert_eq!(t.header.from_user_name, "oyORnuP8q7ou2gfYjqLzSIWZf0rs");
    assert_eq!(t.header.create_time, 1409735668);
    assert_eq!(t.content, "abcdteT");
    assert_eq!(t.msg_id, Some(6054768590064713728));
    let m = parse_message(xml).unwrap();
    assert_eq!(m.routing_kind(), "text");
    assert_eq!(m.dedupe_key(), "msg:6054768590064713728");
}

#[test]
fn media_location_link_and_miniprogram_messages() {
    let Message::Image(i) = parse_message(&msg(
        "<MsgType>image</MsgType><PicUrl>http://p</PicUrl><MediaId>m1</MediaId><MsgId>1</MsgId>",
    ))
    .unwrap() else {
        panic!()
    };
    assert_eq!(
        (i.pic_url.as_deref(), i.media_id.as_str()),
        (Some("http://p"), "m1")
    );

    let Message::Voice(v) = parse_message(&msg("<MsgType>voice</MsgType><MediaId>m2</MediaId><Format>amr</Format><Recognition>你好</Recognition><MsgId>2</MsgId>")).unwrap() else { panic!() };
    assert_eq!(
        (v.format.as_deref(), v.recognition.as_deref()),
        (Some("amr"), Some("你好"))
    );

    let Message::Video(v) = parse_message(&msg("<MsgType>video</MsgType><MediaId>m3</MediaId><ThumbMediaId>t3</ThumbMediaId><MsgId>3</MsgId>")).unwrap() else { panic!() };
    assert_eq!(v.thumb_media_id.as_deref(), Some("t3"));

    let m = parse_message(&msg("<MsgType>shortvideo</MsgType><MediaId>m4</MediaId><ThumbMediaId>t4</ThumbMediaId><MsgId>4</MsgId>")).unwrap();
    assert!(matches!(m, Message::ShortVideo(_)));
    assert_eq!(m.routing_kind(), "shortvideo");

    let Message::Location(l) = parse_message(&msg("<MsgType>location</MsgType><Location_X>23.134521</Location_X><Location_Y>113.358803</Location_Y><Scale>20</Scale><Label><![CDATA[位置信息]]></Label><MsgId>5</MsgId>")).unwrap() else { panic!() };
    assert_eq!(
        (l.location_x, l.location_y, l.scale),
        (Some(23.134521), Some(113.358803), Some(20.0))
    );
    assert_eq!(l.label, "位置信息");

    let Message::Link(l) = parse_message(&msg("<MsgType>link</MsgType><Title>t</Title><Description>d</Description><Url>u</Url><MsgId>6</MsgId>")).unwrap() else { panic!() };
    assert_eq!(
        (l.title.as_str(), l.description.as_str(), l.url.as_str()),
        ("t", "d", "u")
    );

    let Message::MiniProgramPage(p) = parse_message(&msg("<MsgType>miniprogrampage</MsgType><MsgId>7</MsgId><AppId>wxa</AppId><Title>T</Title><PagePath>p/index</PagePath><ThumbUrl>http://t</ThumbUrl><ThumbMediaId>tm</ThumbMediaId>")).unwrap() else { panic!() };
    assert_eq!(
        (p.app_id.as_str(), p.page_path.as_str()),
        ("wxa", "p/index")
    );
}

#[test]
fn wecom_message_carries_agent_id() {
    let m = parse_message(&msg(
        "<MsgType>text</MsgType><Content>hi</Content><MsgId>9</MsgId><AgentID>1000002</AgentID>",
    ))
    .unwrap();
    assert_eq!(m.header().agent_id.as_deref(), Some("1000002"));
}

#[test]
fn subscription_and_menu_events() {
    assert_eq!(
        event("subscribe", ""),
        EventKind::Subscribe {
            event_key: None,
            ticket: None
        }
    );
    assert_eq!(
        event(
            "subscribe",
            "<EventKey>qrscene_123</EventKey><Ticket>TK</Ticket>"
        ),
        EventKind::Subscribe {
            event_key: Some("qrscene_123".into()),
            ticket: Some("TK".into())
        }
    );
    assert_eq!(event("unsubscribe", ""), EventKind::Unsubscribe);
    assert_eq!(
        event("SCAN", "<EventKey>123</EventKey><Ticket>TK</Ticket>"),
        EventKind::Scan {
            event_key: "123".into(),
            ticket: Some("TK".into())
        }
    );
    assert_eq!(
        event(
            "LOCATION",
            "<Latitude>23.1</Latitude><Longitude>113.3</Longitude><Precision>119.385</Precision>"
        ),
        EventKind::Location {
            latitude: Some(23.1),
            longitude: Some(113.3),
            precision: Some(119.385)
        }
    );
    assert_eq!(
        event("CLICK", "<EventKey>K1</EventKey>"),
        EventKind::Click {
            event_key: "K1".into()
        }
    );
    assert_eq!(
        event("VIEW", "<EventKey>http://x</EventKey><MenuId>42</MenuId>"),
        EventKind::View {
            event_key: "http://x".into(),
            menu_id: Some("42".into())
        }
    );
    let EventKind::ScanCode { info, .. } = event(
        "scancode_waitmsg",
        "<EventKey>k</EventKey><ScanCodeInfo><ScanType>qrcode</ScanType><ScanResult>1</ScanResult></ScanCodeInfo>",
    ) else {
        panic!()
    };
    assert_eq!(
        (info.scan_type.as_str(), info.scan_result.as_str()),
        ("qrcode", "1")
    );
    assert!(matches!(
        event("scancode_push", "<EventKey>k</EventKey>"),
        EventKind::ScanCode { .. }
    ));
    let EventKind::Pics { info, .. } = event(
        "pic_weixin",
        "<EventKey>k</EventKey><SendPicsInfo><Count>2</Count><PicList><item><PicMd5Sum>a</PicMd5Sum></item><item><PicMd5Sum>b</PicMd5Sum></item></PicList></SendPicsInfo>",
    ) else {
        panic!()
    };
    assert_eq!(
        (info.count, info.pic_md5_sums.clone()),
        (2, vec!["a".to_string(), "b".to_string()])
    );
    assert!(matches!(event("pic_sysphoto", ""), EventKind::Pics { .. }));
    assert!(matches!(
        event("pic_photo_or_album", ""),
        EventKind::Pics { .. }
    ));
    let EventKind::LocationSelect { location, .. } = event(
        "location_select",
        "<EventKey>k</EventKey><SendLocationInfo><Location_X>23</Location_X><Location_Y>113</Location_Y><Scale>15</Scale><Label>L</Label><Poiname>P</Poiname></SendLocationInfo>",
    ) else {
        panic!()
    };
    assert_eq!(
        (location.location_x, location.poiname.as_str()),
        (Some(23.0), "P")
    );
    assert_eq!(
        event(
            "view_miniprogram",
            "<EventKey>pages/index</EventKey><MenuId>7</MenuId>"
        ),
        EventKind::ViewMiniprogram {
            event_key: "pages/index".into(),
            menu_id: Some("7".into())
        }
    );
}

#[test]
fn job_subscription_kf_revoke_and_audit_events() {
    assert_eq!(
        event(
            "TEMPLATESENDJOBFINISH",
            "<MsgID>200163836</MsgID><Status><![CDATA[failed:user block]]></Status>"
        ),
        EventKind::TemplateSendJobFinish {
            msg_id: Some(200163836),
            status: "failed:user block".into()
        }
    );
    let EventKind::MassSendJobFinish {
        total_count,
        sent_count,
        ..
    } = event(
        "MASSSENDJOBFINISH",
        "<MsgID>1</MsgID><Status>send success</Status><TotalCount>100</TotalCount><FilterCount>80</FilterCount><SentCount>75</SentCount><ErrorCount>5</ErrorCount>",
    )
    else {
        panic!()
    };
    assert_eq!((total_count, sent_count), (Some(100), Some(75)));
    let EventKind::SubscribeMsgPopup { items } = event(
        "subscribe_msg_popup_event",
        "<SubscribeMsgPopupEvent><List><TemplateId>T1</TemplateId><SubscribeStatusString>accept</SubscribeStatusString><PopupScene>2</PopupScene></List><List><TemplateId>T2</TemplateId><SubscribeStatusString>reject</SubscribeStatusString><PopupScene>2</PopupScene></List></SubscribeMsgPopupEvent>",
    ) else {
        panic!()
    };
    assert_eq!(items.len(), 2);
    assert_eq!(items[1].subscribe_status.as_deref(), Some("reject"));
    let EventKind::SubscribeMsgChange { items } = event(
        "subscribe_msg_change_event",
        "<SubscribeMsgChangeEvent><List><TemplateId>T1</TemplateId><SubscribeStatusString>reject</SubscribeStatusString></List></SubscribeMsgChangeEvent>",
    ) else {
        panic!()
    };
    assert_eq!(items[0].template_id, "T1");
    let EventKind::SubscribeMsgSent { items } = event(
        "subscribe_msg_sent_event",
        "<SubscribeMsgSentEvent><List><TemplateId>T1</TemplateId><MsgID>99</MsgID><ErrorCode>0</ErrorCode><ErrorStatus>success</ErrorStatus></List></SubscribeMsgSentEvent>",
    ) else {
        panic!()
    };
    assert_eq!(items[0].msg_id.as_deref(), Some("99"));
    assert_eq!(
        event("kf_create_session", "<KfAccount>a@b</KfAccount>"),
        EventKind::KfCreateSession {
            kf_account: "a@b".into()
        }
    );
    assert_eq!(
        event("kf_close_session", "<KfAccount>a@b</KfAccount>"),
        EventKind::KfCloseSession {
            kf_account: "a@b".into()
        }
    );
    assert_eq!(
        event(
            "kf_switch_session",
            "<FromKfAccount>a</FromKfAccount><ToKfAccount>b</ToKfAccount>"
        ),
        EventKind::KfSwitchSession {
            from_kf_account: "a".into(),
            to_kf_account: "b".into()
        }
    );
    assert_eq!(
        event(
            "user_authorization_revoke",
            "<OpenID>o</OpenID><AppID>wx</AppID><RevokeInfo>1</RevokeInfo>"
        ),
        EventKind::UserAuthorizationRevoke {
            open_id: "o".into(),
            app_id: "wx".into(),
            revoke_info: "1".into()
        }
    );
    assert_eq!(
        event("weapp_audit_success", "<SuccTime>1</SuccTime>"),
        EventKind::WeappAuditSuccess { succ_time: Some(1) }
    );
    assert!(matches!(
        event(
            "weapp_audit_fail",
            "<Reason>r</Reason><FailTime>2</FailTime><ScreenShot>s</ScreenShot>"
        ),
        EventKind::WeappAuditFail {
            fail_time: Some(2),
            ..
        }
    ));
    assert!(matches!(
        event(
            "weapp_audit_delay",
            "<Reason>r</Reason><DelayTime>3</DelayTime>"
        ),
        EventKind::WeappAuditDelay {
            delay_time: Some(3),
            ..
        }
    ));
}

#[test]
fn unknown_types_are_kept_not_rejected() {
    let xml = msg("<MsgType>hologram</MsgType><Beam>42</Beam><MsgId>77</MsgId>");
    let Message::Unknown {
        header,
        msg_id,
        generic,
    } = parse_message(&xml).unwrap()
    else {
        panic!()
    };
    assert_eq!(header.msg_type, "hologram");
    assert_eq!(msg_id, Some(77));
    assert_eq!(generic.get("Beam"), Some("42"));
    assert_eq!(generic.raw, xml);

    let EventKind::Other(g) = event("brand_new_event", "<EventKey>k</EventKey><X>1</X>") else {
        panic!()
    };
    assert_eq!(g.get("X"), Some("1"));
    let m = parse_message(&msg(
        "<MsgType>event</MsgType><Event>Weird.Name*</Event><EventKey>k</EventKey>",
    ))
    .unwrap();
    assert_eq!(m.routing_kind(), "event.weird_name_");
    assert!(
        m.dedupe_key()
            .starts_with("evt:oUser:1700000000:Weird.Name*:k:"),
        "{}",
        m.dedupe_key()
    );
}

#[test]
fn event_dedupe_and_routing_keys() {
    let m = parse_message(&msg("<MsgType>event</MsgType><Event>subscribe</Event>")).unwrap();
    // The header, then the digest of the message (16 hex digits).
    let key = m.dedupe_key();
    let digest = key.strip_prefix("evt:oUser:1700000000:subscribe:").unwrap();
    assert_eq!(digest.len(), 16, "{key}");
    assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
    assert_eq!(m.routing_kind(), "event.subscribe");
    let m = parse_message(&msg(
        "<MsgType>event</MsgType><Event>CLICK</Event><EventKey>K</EventKey>",
    ))
    .unwrap();
    assert!(m.dedupe_key().starts_with("evt:oUser:1700000000:CLICK:K:"));
    assert_eq!(m.routing_kind(), "event.click");
}

#[test]
fn required_header_fields_and_bad_numbers_are_clear_errors() {
    let no_from =
        "<xml><ToUserName>a</ToUserName><CreateTime>1</CreateTime><MsgType>text</MsgType></xml>";
    assert_eq!(
        parse_message(no_from).unwrap_err(),
        MessageError::MissingField("FromUserName")
    );
    let bad_time = msg("").replace("1700000000", "soon");
    let bad_time = bad_time.replace("</xml>", "<MsgType>text</MsgType></xml>");
    assert!(matches!(
        parse_message(&bad_time).unwrap_err(),
        MessageError::BadField {
            field: "CreateTime",
            ..
        }
    ));
    let bad_id = msg("<MsgType>text</MsgType><MsgId>-5</MsgId>");
    assert!(matches!(
        parse_message(&bad_id).unwrap_err(),
        MessageError::BadField { field: "MsgId", .. }
    ));
    let nan = msg("<MsgType>location</MsgType><Location_X>NaN</Location_X>");
    assert!(parse_message(&nan).is_err());
}

#[test]
fn component_notices() {
    // V6, exactly as WeChat sent it.
    let v6 = "<xml><AppId><![CDATA[wx805ef435fca595d2]]></AppId>\n<CreateTime>1524734617</CreateTime>\n<InfoType><![CDATA[component_verify_ticket]]></InfoType>\n<ComponentVerifyTicket><![CDATA[ticket@@@t_KixLUyGjV-ZnUYrUP58mbI5maqS_AcRWkJY9kNQ4tPj360c1kD5HWqQt7AiFowdBZQWBYeQwr-hvk2ja-oTQ]]></ComponentVerifyTicket>\n</xml>";
    let n = parse_notice(v6).unwrap();
    assert!(
        matches!(&n, ComponentNotice::VerifyTicket { ticket, .. } if ticket.starts_with("ticket@@@t_Kix"))
    );
    assert_eq!(n.routing_kind(), "component_verify_ticket");
    assert_eq!(n.app_id(), "wx805ef435fca595d2");
    assert!(matches!(parse(v6).unwrap(), Inbound::Component(_)));

    let auth = "<xml><AppId>wxc</AppId><CreateTime>1413192760</CreateTime><InfoType>authorized</InfoType><AuthorizerAppid>wxa</AuthorizerAppid><AuthorizationCode>code1</AuthorizationCode><AuthorizationCodeExpiredTime>1413196360</AuthorizationCodeExpiredTime><PreAuthCode>pre1</PreAuthCode></xml>";
    let ComponentNotice::Authorized(a) = parse_notice(auth).unwrap() else {
        panic!()
    };
    assert_eq!(
        (a.authorizer_appid.as_str(), a.authorization_code.as_str()),
        ("wxa", "code1")
    );
    assert_eq!(a.authorization_code_expired_time, Some(1413196360));
    assert_eq!(a.pre_auth_code, "pre1");
    let update = auth.replace(">authorized<", ">updateauthorized<");
    assert!(matches!(
        parse_notice(&update).unwrap(),
        ComponentNotice::UpdateAuthorized(_)
    ));
    let unauth = "<xml><AppId>wxc</AppId><CreateTime>1</CreateTime><InfoType>unauthorized</InfoType><AuthorizerAppid>wxa</AuthorizerAppid></xml>";
    let n = parse_notice(unauth).unwrap();
    assert_eq!(n.authorizer_appid(), Some("wxa"));
    assert_eq!(n.dedupe_key(), "info:unauthorized:1:wxa");

    let fast = "<xml><AppId>wxc</AppId><CreateTime>1</CreateTime><InfoType>notify_third_fasteregister</InfoType><appid>wxnew</appid><status>0</status><auth_code>ac</auth_code><msg>OK</msg><info><name>n</name><code>c</code><code_type>1</code_type><legal_persona_wechat>w</legal_persona_wechat><legal_persona_name>p</legal_persona_name><component_phone>1</component_phone></info></xml>";
    let ComponentNotice::Notify(f) = parse_notice(fast).unwrap() else {
        panic!()
    };
    assert_eq!(
        (f.status, f.auth_code.as_deref(), f.appid.as_deref()),
        (Some(0), Some("ac"), Some("wxnew"))
    );
    assert_eq!(f.info.len(), 6);
    for info_type in [
        "notify_third_fastregisterbetaapp",
        "notify_third_fastverifybetaapp",
        "notify_3rd_wxa_auth",
        "notify_3rd_wxa_wxverify",
        "notify_icpfiling_verify_result",
        "notify_apply_icpfiling_result",
    ] {
        let xml = format!(
            "<xml><AppId>wxc</AppId><CreateTime>1</CreateTime><InfoType>{info_type}</InfoType></xml>"
        );
        assert!(
            matches!(parse_notice(&xml).unwrap(), ComponentNotice::Notify(n) if n.info_type == info_type)
        );
    }
    let other = "<xml><AppId>wxc</AppId><CreateTime>1</CreateTime><InfoType>something_new</InfoType><Z>1</Z></xml>";
    let ComponentNotice::Other { generic, .. } = parse_notice(other).unwrap() else {
        panic!()
    };
    assert_eq!(generic.get("Z"), Some("1"));

    let missing =
        "<xml><AppId>wxc</AppId><CreateTime>1</CreateTime><InfoType>authorized</InfoType></xml>";
    assert_eq!(
        parse_notice(missing).unwrap_err(),
        MessageError::MissingField("AuthorizerAppid")
    );
}

fn header() -> Header {
    Header {
        to_user_name: "gh_account".into(),
        from_user_name: "oUser".into(),
        create_time: 1,
        msg_type: "text".into(),
        agent_id: None,
        digest: 0,
    }
}

#[test]
fn replies_swap_to_and_from_and_survive_cdata_terminators() {
    let tricky = "a ]]> b <c> & ]]]]> 😀";
    let reply = Reply::text(&header(), 1700000001, tricky);
    let xml = reply.to_xml();
    let Message::Text(t) = parse_message(&xml).unwrap() else {
        panic!("{xml}")
    };
    assert_eq!(t.content, tricky);
    assert_eq!(t.header.to_user_name, "oUser");
    assert_eq!(t.header.from_user_name, "gh_account");
    assert_eq!(t.header.create_time, 1700000001);
}

#[test]
fn every_reply_type_is_well_formed() {
    let bodies = vec![
        ReplyBody::Image {
            media_id: "m".into(),
        },
        ReplyBody::Voice {
            media_id: "m".into(),
        },
        ReplyBody::Video {
            media_id: "m".into(),
            title: "t".into(),
            description: "d".into(),
        },
        ReplyBody::Music(Music {
            title: "t".into(),
            thumb_media_id: "th".into(),
            ..Music::default()
        }),
        ReplyBody::News(vec![Article {
            title: "t".into(),
            url: "u".into(),
            ..Article::default()
        }]),
        ReplyBody::TransferCustomerService { kf_account: None },
        ReplyBody::TransferCustomerService {
            kf_account: Some("kf@x".into()),
        },
    ];
    let expected = [
        "image",
        "voice",
        "video",
        "music",
        "news",
        "transfer_customer_service",
        "transfer_customer_service",
    ];
    for (body, kind) in bodies.into_iter().zip(expected) {
        let xml = Reply::answer(&header(), 5, body).to_xml();
        let parsed = parse_message(&xml).unwrap();
        assert_eq!(parsed.header().msg_type, kind, "{xml}");
        let doc = wxhub_message::xml::parse_document(&xml, &Default::default()).unwrap();
        match kind {
            "news" => {
                assert_eq!(doc.child_text("ArticleCount"), Some("1"));
                let item = doc.child("Articles").unwrap().child("item").unwrap();
                assert_eq!(item.child_text("Url"), Some("u"));
            }
            "music" => assert_eq!(
                doc.child("Music").unwrap().child_text("ThumbMediaId"),
                Some("th")
            ),
            "video" => assert_eq!(doc.child("Video").unwrap().child_text("Title"), Some("t")),
            "image" => assert_eq!(doc.child("Image").unwrap().child_text("MediaId"), Some("m")),
            "voice" => assert_eq!(doc.child("Voice").unwrap().child_text("MediaId"), Some("m")),
            _ => {}
        }
    }
    let with_kf = Reply::answer(
        &header(),
        5,
        ReplyBody::TransferCustomerService {
            kf_account: Some("kf@x".into()),
        },
    )
    .to_xml();
    assert!(with_kf.contains("<TransInfo><KfAccount><![CDATA[kf@x]]></KfAccount></TransInfo>"));
}

#[test]
fn encrypted_reply_envelope_decrypts_to_the_reply() {
    let crypt = Crypt::from_parts(
        "tok",
        "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        "wxcomponent",
    )
    .unwrap();
    let reply = Reply::text(&header(), 7, "TESTCOMPONENT_MSG_TYPE_TEXT_callback").to_xml();
    let env = encrypted_envelope(&crypt, KeySlot::Current, &reply, "1700000000", "nonce1").unwrap();
    let parsed = parse_envelope(env.as_bytes(), &Default::default()).unwrap();
    let root = parsed.root();
    let encrypt = parsed.encrypt().unwrap();
    let signature = root.child_text("MsgSignature").unwrap();
    assert_eq!(root.child_text("TimeStamp"), Some("1700000000"));
    assert_eq!(root.child_text("Nonce"), Some("nonce1"));
    let plain = crypt
        .verify_and_decrypt(signature, "1700000000", "nonce1", encrypt)
        .unwrap();
    assert_eq!(plain.message_str().unwrap(), reply);
}

#[test]
fn hardening() {
    let doctype = "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;\">]><xml><Content>&lol2;</Content></xml>";
    assert_eq!(parse(doctype).unwrap_err(), MessageError::DocType);
    let external = "<!DOCTYPE foo [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]><xml>&xxe;</xml>";
    assert_eq!(parse(external).unwrap_err(), MessageError::DocType);
    assert_eq!(
        parse("<xml>&xxe;</xml>").unwrap_err(),
        MessageError::Entity("xxe".into())
    );
    let deep = format!("{}{}", "<a>".repeat(100), "</a>".repeat(100));
    assert!(matches!(
        parse(&deep).unwrap_err(),
        MessageError::TooDeep { .. }
    ));
    let huge = format!("<xml><Content>{}</Content></xml>", "x".repeat(70 * 1024));
    assert!(matches!(
        parse(&huge).unwrap_err(),
        MessageError::TooLarge { .. }
    ));
    let truncated = &msg("<MsgType>text</MsgType><Content>hi</Content>")[..60];
    assert!(matches!(
        parse(truncated).unwrap_err(),
        MessageError::Malformed(_)
    ));
    assert_eq!(
        parse_envelope(b"<xml>\xc3\x28</xml>", &Default::default()).unwrap_err(),
        MessageError::NotUtf8
    );
}
