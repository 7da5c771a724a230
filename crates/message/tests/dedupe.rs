//! Dedupe keys, one test per message, event and notice type (wechat-protocol.md §2.4, §3, and
//! WeCom's `change_contact` / `batch_job_result`): two distinct real callbacks — same account,
//! same user, same second, differing only in what tells them apart — get different keys, and a
//! retry of either (the identical message) gets the same key again.

use wxhub_message::{Inbound, parse};

/// A callback from `oUser` to `gh_acct` at one fixed second, with `body` after the header.
fn account(body: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_acct]]></ToUserName><FromUserName><![CDATA[oUser]]></FromUserName><CreateTime>1700000000</CreateTime>{body}</xml>"
    )
}

fn event(name: &str, rest: &str) -> String {
    account(&format!(
        "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{name}]]></Event>{rest}"
    ))
}

/// A WeCom push (always from `sys` for contact changes) at one fixed second.
fn wecom(name: &str, rest: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[ww1234567890abcd]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{name}]]></Event>{rest}<AgentID>1000002</AgentID></xml>"
    )
}

fn notice(info_type: &str, rest: &str) -> String {
    format!(
        "<xml><AppId>wxcomp</AppId><CreateTime>1700000000</CreateTime><InfoType>{info_type}</InfoType>{rest}</xml>"
    )
}

fn key(xml: &str) -> String {
    match parse(xml).unwrap_or_else(|e| panic!("{e}: {xml}")) {
        Inbound::Account(m) => m.dedupe_key(),
        Inbound::Component(n) => n.dedupe_key(),
    }
}

/// `a` and `b` are distinct callbacks; each parsed again (a retry) keeps its key.
fn distinct(a: &str, b: &str) -> (String, String) {
    let (ka, kb) = (key(a), key(b));
    assert_ne!(ka, kb, "distinct callbacks share a key:\n{a}\n{b}");
    assert_eq!(key(a), ka, "a retry must keep the key");
    assert_eq!(key(b), kb, "a retry must keep the key");
    (ka, kb)
}

macro_rules! distinct_test {
    ($name:ident, $a:expr, $b:expr) => {
        #[test]
        fn $name() {
            distinct(&$a, &$b);
        }
    };
}

// --- normal messages: MsgId (§3.3) ---

fn message(msg_type: &str, fields: &str, msg_id: u64) -> String {
    account(&format!(
        "<MsgType><![CDATA[{msg_type}]]></MsgType>{fields}<MsgId>{msg_id}</MsgId>"
    ))
}

#[test]
fn text() {
    let (a, _) = distinct(
        &message("text", "<Content>hi</Content>", 1),
        &message("text", "<Content>hi</Content>", 2),
    );
    assert_eq!(a, "msg:1");
}
distinct_test!(
    image,
    message("image", "<PicUrl>u</PicUrl><MediaId>m</MediaId>", 1),
    message("image", "<PicUrl>u</PicUrl><MediaId>m</MediaId>", 2)
);
distinct_test!(
    voice,
    message("voice", "<MediaId>m</MediaId><Format>amr</Format>", 1),
    message("voice", "<MediaId>m</MediaId><Format>amr</Format>", 2)
);
distinct_test!(
    video,
    message(
        "video",
        "<MediaId>m</MediaId><ThumbMediaId>t</ThumbMediaId>",
        1
    ),
    message(
        "video",
        "<MediaId>m</MediaId><ThumbMediaId>t</ThumbMediaId>",
        2
    )
);
distinct_test!(
    shortvideo,
    message("shortvideo", "<MediaId>m</MediaId>", 1),
    message("shortvideo", "<MediaId>m</MediaId>", 2)
);
distinct_test!(
    location_message,
    message(
        "location",
        "<Location_X>23.1</Location_X><Location_Y>113.3</Location_Y><Scale>20</Scale><Label>x</Label>",
        1
    ),
    message(
        "location",
        "<Location_X>23.1</Location_X><Location_Y>113.3</Location_Y><Scale>20</Scale><Label>x</Label>",
        2
    )
);
distinct_test!(
    link,
    message(
        "link",
        "<Title>t</Title><Description>d</Description><Url>u</Url>",
        1
    ),
    message(
        "link",
        "<Title>t</Title><Description>d</Description><Url>u</Url>",
        2
    )
);
distinct_test!(
    miniprogrampage,
    message(
        "miniprogrampage",
        "<AppId>wxmp</AppId><Title>t</Title><PagePath>p</PagePath>",
        1
    ),
    message(
        "miniprogrampage",
        "<AppId>wxmp</AppId><Title>t</Title><PagePath>p</PagePath>",
        2
    )
);
distinct_test!(
    unknown_message_type_with_msg_id,
    message("hologram", "<Beam>1</Beam>", 1),
    message("hologram", "<Beam>1</Beam>", 2)
);

#[test]
fn message_without_msg_id_falls_back_to_the_digest() {
    let (a, _) = distinct(
        &account("<MsgType>hologram</MsgType><Beam>1</Beam>"),
        &account("<MsgType>hologram</MsgType><Beam>2</Beam>"),
    );
    assert!(a.starts_with("evt:oUser:1700000000:hologram:"), "{a}");
}

// --- events (§3.4) ---

#[test]
fn subscribe() {
    // Via two parametric QR codes, and a plain subscribe, in one second.
    distinct(
        &event(
            "subscribe",
            "<EventKey>qrscene_1</EventKey><Ticket>T1</Ticket>",
        ),
        &event(
            "subscribe",
            "<EventKey>qrscene_2</EventKey><Ticket>T2</Ticket>",
        ),
    );
    distinct(
        &event(
            "subscribe",
            "<EventKey>qrscene_1</EventKey><Ticket>T1</Ticket>",
        ),
        &event("subscribe", ""),
    );
}
distinct_test!(
    unsubscribe,
    event("unsubscribe", ""),
    event("subscribe", "")
);
distinct_test!(
    scan,
    event("SCAN", "<EventKey>1</EventKey><Ticket>T1</Ticket>"),
    event("SCAN", "<EventKey>2</EventKey><Ticket>T2</Ticket>")
);
distinct_test!(
    location_event,
    event(
        "LOCATION",
        "<Latitude>23.1</Latitude><Longitude>113.3</Longitude><Precision>100</Precision>"
    ),
    event(
        "LOCATION",
        "<Latitude>23.2</Latitude><Longitude>113.3</Longitude><Precision>100</Precision>"
    )
);
distinct_test!(
    click,
    event("CLICK", "<EventKey>MENU_1</EventKey>"),
    event("CLICK", "<EventKey>MENU_2</EventKey>")
);
distinct_test!(
    view,
    event("VIEW", "<EventKey>https://a/</EventKey><MenuId>1</MenuId>"),
    event("VIEW", "<EventKey>https://a/</EventKey><MenuId>2</MenuId>")
);
distinct_test!(
    scancode_push,
    event(
        "scancode_push",
        "<EventKey>s</EventKey><ScanCodeInfo><ScanType>qrcode</ScanType><ScanResult>A</ScanResult></ScanCodeInfo>"
    ),
    event(
        "scancode_push",
        "<EventKey>s</EventKey><ScanCodeInfo><ScanType>qrcode</ScanType><ScanResult>B</ScanResult></ScanCodeInfo>"
    )
);
distinct_test!(
    scancode_waitmsg,
    event(
        "scancode_waitmsg",
        "<EventKey>s</EventKey><ScanCodeInfo><ScanType>qrcode</ScanType><ScanResult>A</ScanResult></ScanCodeInfo>"
    ),
    event(
        "scancode_waitmsg",
        "<EventKey>s</EventKey><ScanCodeInfo><ScanType>qrcode</ScanType><ScanResult>B</ScanResult></ScanCodeInfo>"
    )
);

fn pics(name: &str, md5: &str) -> String {
    event(
        name,
        &format!(
            "<EventKey>p</EventKey><SendPicsInfo><Count>1</Count><PicList><item><PicMd5Sum>{md5}</PicMd5Sum></item></PicList></SendPicsInfo>"
        ),
    )
}
distinct_test!(
    pic_sysphoto,
    pics("pic_sysphoto", "a1"),
    pics("pic_sysphoto", "b2")
);
distinct_test!(
    pic_photo_or_album,
    pics("pic_photo_or_album", "a1"),
    pics("pic_photo_or_album", "b2")
);
distinct_test!(
    pic_weixin,
    pics("pic_weixin", "a1"),
    pics("pic_weixin", "b2")
);
distinct_test!(
    location_select,
    event(
        "location_select",
        "<EventKey>l</EventKey><SendLocationInfo><Location_X>23</Location_X><Location_Y>113</Location_Y><Scale>15</Scale><Label>A</Label><Poiname></Poiname></SendLocationInfo>"
    ),
    event(
        "location_select",
        "<EventKey>l</EventKey><SendLocationInfo><Location_X>23</Location_X><Location_Y>113</Location_Y><Scale>15</Scale><Label>B</Label><Poiname></Poiname></SendLocationInfo>"
    )
);
distinct_test!(
    view_miniprogram,
    event(
        "view_miniprogram",
        "<EventKey>pages/index</EventKey><MenuId>1</MenuId>"
    ),
    event(
        "view_miniprogram",
        "<EventKey>pages/index</EventKey><MenuId>2</MenuId>"
    )
);

#[test]
fn templatesendjobfinish() {
    // Two template messages to one user finishing in the same second.
    let (a, b) = distinct(
        &event(
            "TEMPLATESENDJOBFINISH",
            "<MsgID>200163836</MsgID><Status>success</Status>",
        ),
        &event(
            "TEMPLATESENDJOBFINISH",
            "<MsgID>200163840</MsgID><Status>success</Status>",
        ),
    );
    assert_eq!(a, "evt:oUser:1700000000:TEMPLATESENDJOBFINISH:200163836");
    assert_eq!(b, "evt:oUser:1700000000:TEMPLATESENDJOBFINISH:200163840");
}

#[test]
fn masssendjobfinish() {
    let fields = |id: u64| {
        format!(
            "<MsgID>{id}</MsgID><Status>send success</Status><TotalCount>100</TotalCount><FilterCount>80</FilterCount><SentCount>75</SentCount><ErrorCount>5</ErrorCount>"
        )
    };
    let (a, _) = distinct(
        &event("MASSSENDJOBFINISH", &fields(1000001625)),
        &event("MASSSENDJOBFINISH", &fields(1000001626)),
    );
    assert_eq!(a, "evt:oUser:1700000000:MASSSENDJOBFINISH:1000001625");
}

#[test]
fn job_finish_without_an_id_falls_back_to_the_digest() {
    distinct(
        &event("TEMPLATESENDJOBFINISH", "<Status>success</Status>"),
        &event(
            "TEMPLATESENDJOBFINISH",
            "<Status>failed:user block</Status>",
        ),
    );
}

fn subscribe_msg(name: &str, container: &str, item: &str) -> String {
    event(
        name,
        &format!("<{container}><List>{item}</List></{container}>"),
    )
}
distinct_test!(
    subscribe_msg_popup_event,
    subscribe_msg(
        "subscribe_msg_popup_event",
        "SubscribeMsgPopupEvent",
        "<TemplateId>T1</TemplateId><SubscribeStatusString>accept</SubscribeStatusString><PopupScene>2</PopupScene>"
    ),
    subscribe_msg(
        "subscribe_msg_popup_event",
        "SubscribeMsgPopupEvent",
        "<TemplateId>T2</TemplateId><SubscribeStatusString>accept</SubscribeStatusString><PopupScene>2</PopupScene>"
    )
);
distinct_test!(
    subscribe_msg_change_event,
    subscribe_msg(
        "subscribe_msg_change_event",
        "SubscribeMsgChangeEvent",
        "<TemplateId>T1</TemplateId><SubscribeStatusString>reject</SubscribeStatusString>"
    ),
    subscribe_msg(
        "subscribe_msg_change_event",
        "SubscribeMsgChangeEvent",
        "<TemplateId>T2</TemplateId><SubscribeStatusString>reject</SubscribeStatusString>"
    )
);
distinct_test!(
    subscribe_msg_sent_event,
    subscribe_msg(
        "subscribe_msg_sent_event",
        "SubscribeMsgSentEvent",
        "<TemplateId>T1</TemplateId><MsgID>1700827132819554304</MsgID><ErrorCode>0</ErrorCode><ErrorStatus>success</ErrorStatus>"
    ),
    subscribe_msg(
        "subscribe_msg_sent_event",
        "SubscribeMsgSentEvent",
        "<TemplateId>T1</TemplateId><MsgID>1700827132819554305</MsgID><ErrorCode>0</ErrorCode><ErrorStatus>success</ErrorStatus>"
    )
);
distinct_test!(
    kf_create_session,
    event("kf_create_session", "<KfAccount>a@x</KfAccount>"),
    event("kf_create_session", "<KfAccount>b@x</KfAccount>")
);
distinct_test!(
    kf_close_session,
    event("kf_close_session", "<KfAccount>a@x</KfAccount>"),
    event("kf_close_session", "<KfAccount>b@x</KfAccount>")
);
distinct_test!(
    kf_switch_session,
    event(
        "kf_switch_session",
        "<FromKfAccount>a@x</FromKfAccount><ToKfAccount>b@x</ToKfAccount>"
    ),
    event(
        "kf_switch_session",
        "<FromKfAccount>a@x</FromKfAccount><ToKfAccount>c@x</ToKfAccount>"
    )
);
distinct_test!(
    user_authorization_revoke,
    event(
        "user_authorization_revoke",
        "<OpenID>o1</OpenID><AppID>wxa</AppID><RevokeInfo>1</RevokeInfo>"
    ),
    event(
        "user_authorization_revoke",
        "<OpenID>o1</OpenID><AppID>wxa</AppID><RevokeInfo>5</RevokeInfo>"
    )
);
distinct_test!(
    weapp_audit_success,
    event("weapp_audit_success", "<SuccTime>1700000000</SuccTime>"),
    event("weapp_audit_success", "<SuccTime>1699999999</SuccTime>")
);
distinct_test!(
    weapp_audit_fail,
    event(
        "weapp_audit_fail",
        "<Reason>a</Reason><FailTime>1700000000</FailTime>"
    ),
    event(
        "weapp_audit_fail",
        "<Reason>b</Reason><FailTime>1700000000</FailTime>"
    )
);
distinct_test!(
    weapp_audit_delay,
    event(
        "weapp_audit_delay",
        "<Reason>a</Reason><DelayTime>1700000000</DelayTime>"
    ),
    event(
        "weapp_audit_delay",
        "<Reason>b</Reason><DelayTime>1700000000</DelayTime>"
    )
);
distinct_test!(
    unknown_event,
    event("brand_new_event", "<EventKey>k</EventKey><X>1</X>"),
    event("brand_new_event", "<EventKey>k</EventKey><X>2</X>")
);

// --- WeCom ---

#[test]
fn wecom_change_contact() {
    // One bulk sync: two changes of one member and one of another, all from `sys` in one second.
    let rename = wecom(
        "change_contact",
        "<ChangeType>update_user</ChangeType><UserID>zhangsan</UserID><Name>张三</Name>",
    );
    let move_ = wecom(
        "change_contact",
        "<ChangeType>update_user</ChangeType><UserID>zhangsan</UserID><Department>1,2</Department>",
    );
    let other = wecom(
        "change_contact",
        "<ChangeType>update_user</ChangeType><UserID>lisi</UserID><Name>李四</Name>",
    );
    let (a, _) = distinct(&rename, &move_);
    distinct(&rename, &other);
    assert!(
        a.starts_with("evt:sys:1700000000:change_contact:update_user:zhangsan:"),
        "{a}"
    );
    distinct(
        &wecom(
            "change_contact",
            "<ChangeType>create_party</ChangeType><Id>2</Id><Name>A</Name>",
        ),
        &wecom(
            "change_contact",
            "<ChangeType>create_party</ChangeType><Id>3</Id><Name>A</Name>",
        ),
    );
    distinct(
        &wecom(
            "change_contact",
            "<ChangeType>update_tag</ChangeType><TagId>1</TagId><AddUserItems>a</AddUserItems>",
        ),
        &wecom(
            "change_contact",
            "<ChangeType>update_tag</ChangeType><TagId>1</TagId><DelUserItems>a</DelUserItems>",
        ),
    );
}

#[test]
fn wecom_batch_job_result() {
    let job = |id: &str| {
        wecom(
            "batch_job_result",
            &format!(
                "<BatchJob><JobId>{id}</JobId><JobType>sync_user</JobType><ErrCode>0</ErrCode><ErrMsg>ok</ErrMsg></BatchJob>"
            ),
        )
    };
    let (a, _) = distinct(
        &job("S0MrnndvRG5fadSlLwiBqiDDbM143UqTmKP3152FZk4"),
        &job("S1"),
    );
    assert_eq!(
        a,
        "evt:sys:1700000000:batch_job_result:S0MrnndvRG5fadSlLwiBqiDDbM143UqTmKP3152FZk4"
    );
}

// --- component notices (§2.2, §2.4) ---

#[test]
fn component_verify_ticket() {
    let ticket = |t: &str| {
        notice(
            "component_verify_ticket",
            &format!("<ComponentVerifyTicket>ticket@@@{t}</ComponentVerifyTicket>"),
        )
    };
    let (a, b) = distinct(&ticket("first"), &ticket("second"));
    for k in [&a, &b] {
        assert!(
            k.starts_with("info:component_verify_ticket:1700000000:") && !k.contains("ticket@@@"),
            "the ticket (a credential) stays out of the key: {k}"
        );
    }
}

fn authorization(info_type: &str, appid: &str, code: &str) -> String {
    notice(
        info_type,
        &format!(
            "<AuthorizerAppid>{appid}</AuthorizerAppid><AuthorizationCode>{code}</AuthorizationCode><AuthorizationCodeExpiredTime>1700003600</AuthorizationCodeExpiredTime><PreAuthCode>pre</PreAuthCode>"
        ),
    )
}

#[test]
fn authorized() {
    // The same account authorized twice in one second, and two accounts.
    let (a, _) = distinct(
        &authorization("authorized", "wxa", "queryauthcode@@@1"),
        &authorization("authorized", "wxa", "queryauthcode@@@2"),
    );
    distinct(
        &authorization("authorized", "wxa", "queryauthcode@@@1"),
        &authorization("authorized", "wxb", "queryauthcode@@@1"),
    );
    assert!(a.starts_with("info:authorized:1700000000:wxa:"), "{a}");
    assert!(!a.contains("queryauthcode"), "the code stays out: {a}");
}

#[test]
fn updateauthorized() {
    distinct(
        &authorization("updateauthorized", "wxa", "queryauthcode@@@1"),
        &authorization("updateauthorized", "wxa", "queryauthcode@@@2"),
    );
    distinct(
        &authorization("updateauthorized", "wxa", "queryauthcode@@@1"),
        &authorization("authorized", "wxa", "queryauthcode@@@1"),
    );
}

#[test]
fn unauthorized() {
    let (a, _) = distinct(
        &notice("unauthorized", "<AuthorizerAppid>wxa</AuthorizerAppid>"),
        &notice("unauthorized", "<AuthorizerAppid>wxb</AuthorizerAppid>"),
    );
    assert_eq!(a, "info:unauthorized:1700000000:wxa");
}

fn fast_register(info_type: &str, name: &str) -> String {
    notice(
        info_type,
        &format!(
            "<status>0</status><auth_code>ac</auth_code><msg>OK</msg><info><name>{name}</name><code>c</code><code_type>1</code_type><legal_persona_wechat>w</legal_persona_wechat><legal_persona_name>p</legal_persona_name><component_phone>1</component_phone></info>"
        ),
    )
}
distinct_test!(
    notify_third_fasteregister,
    fast_register("notify_third_fasteregister", "Shop A"),
    fast_register("notify_third_fasteregister", "Shop B")
);
distinct_test!(
    notify_third_fastregisterbetaapp,
    fast_register("notify_third_fastregisterbetaapp", "A"),
    fast_register("notify_third_fastregisterbetaapp", "B")
);
distinct_test!(
    notify_third_fastverifybetaapp,
    notice(
        "notify_third_fastverifybetaapp",
        "<appid>wxbeta1</appid><status>0</status><msg>OK</msg>"
    ),
    notice(
        "notify_third_fastverifybetaapp",
        "<appid>wxbeta2</appid><status>0</status><msg>OK</msg>"
    )
);
distinct_test!(
    notify_3rd_wxa_auth,
    notice(
        "notify_3rd_wxa_auth",
        "<appid>wxa</appid><taskid>1</taskid><task_status>1</task_status>"
    ),
    notice(
        "notify_3rd_wxa_auth",
        "<appid>wxa</appid><taskid>2</taskid><task_status>1</task_status>"
    )
);
distinct_test!(
    notify_3rd_wxa_wxverify,
    notice(
        "notify_3rd_wxa_wxverify",
        "<appid>wxa</appid><taskid>1</taskid>"
    ),
    notice(
        "notify_3rd_wxa_wxverify",
        "<appid>wxa</appid><taskid>2</taskid>"
    )
);
distinct_test!(
    notify_icpfiling_verify_result,
    notice(
        "notify_icpfiling_verify_result",
        "<appid>wxa</appid><task_id>1</task_id><verify_result>1</verify_result>"
    ),
    notice(
        "notify_icpfiling_verify_result",
        "<appid>wxa</appid><task_id>2</task_id><verify_result>1</verify_result>"
    )
);
distinct_test!(
    notify_apply_icpfiling_result,
    notice(
        "notify_apply_icpfiling_result",
        "<appid>wxa</appid><status>1</status>"
    ),
    notice(
        "notify_apply_icpfiling_result",
        "<appid>wxa</appid><status>2</status>"
    )
);
distinct_test!(
    unknown_info_type,
    notice("something_new", "<Z>1</Z>"),
    notice("something_new", "<Z>2</Z>")
);
