//! Invariant 1 for callbacks that look alike (issue: colliding dedupe keys): distinct callbacks
//! of one account in one second are each published, while WeChat's retries of them are still
//! deduplicated. Before, all but the first of each pair were answered `success` and dropped.

use crate::common::*;

const AUTHORIZER: &str = "/wx/comp/callback/wxauth0000000001";

fn event_at(from: &str, create_time: i64, event: &str, rest: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_acme]]></ToUserName><FromUserName><![CDATA[{from}]]></FromUserName><CreateTime>{create_time}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{event}]]></Event>{rest}</xml>"
    )
}

/// Posts each of `xmls` (all distinct) and then each again as WeChat's retry (a new request, a
/// new nonce, the same message); every answer is 2xx, and `queues` together end up with each
/// exactly once under distinct message ids.
async fn each_published_once(
    h: &Harness,
    path: &str,
    crypt: &wxhub_crypto::Crypt,
    framing: Framing,
    queues: &[String],
    xmls: &[String],
) {
    for round in ["first", "retry"] {
        for xml in xmls {
            let (status, body) = h.post(&callback(path, crypt, framing, xml)).await;
            assert!(status.is_success(), "{round} {status} {body}: {xml}");
        }
    }
    let mut got = Vec::new();
    for queue in queues {
        got.extend(h.take(queue).await);
    }
    let mut xml_got: Vec<_> = got.iter().map(|m| event_of(m).xml).collect();
    let mut want = xmls.to_vec();
    xml_got.sort();
    want.sort();
    assert_eq!(xml_got, want, "each distinct callback once");
    let mut ids: Vec<_> = got.iter().map(message_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), xmls.len(), "{ids:?}");
}

#[tokio::test]
async fn job_results_and_subscription_events_of_one_user_in_one_second_are_all_published() {
    let h = Harness::start("gw-collide-oa").await;
    h.wait_connected().await;
    let t = now();
    let xmls = vec![
        // Two template messages to one user finishing in the same second.
        event_at(
            "oUser",
            t,
            "TEMPLATESENDJOBFINISH",
            "<MsgID>200163836</MsgID><Status><![CDATA[success]]></Status>",
        ),
        event_at(
            "oUser",
            t,
            "TEMPLATESENDJOBFINISH",
            "<MsgID>200163840</MsgID><Status><![CDATA[success]]></Status>",
        ),
        // Two mass sends reported in one second (FromUserName is the account's own id).
        event_at(
            "oAdmin",
            t,
            "MASSSENDJOBFINISH",
            "<MsgID>1000001625</MsgID><Status><![CDATA[send success]]></Status><TotalCount>100</TotalCount><FilterCount>80</FilterCount><SentCount>75</SentCount><ErrorCount>5</ErrorCount>",
        ),
        event_at(
            "oAdmin",
            t,
            "MASSSENDJOBFINISH",
            "<MsgID>1000001626</MsgID><Status><![CDATA[send success]]></Status><TotalCount>100</TotalCount><FilterCount>80</FilterCount><SentCount>75</SentCount><ErrorCount>5</ErrorCount>",
        ),
        // Two subscription notices sent to one user in one second, and two popup choices.
        event_at(
            "oUser",
            t,
            "subscribe_msg_sent_event",
            "<SubscribeMsgSentEvent><List><TemplateId>T1</TemplateId><MsgID>1700827132819554304</MsgID><ErrorCode>0</ErrorCode><ErrorStatus>success</ErrorStatus></List></SubscribeMsgSentEvent>",
        ),
        event_at(
            "oUser",
            t,
            "subscribe_msg_sent_event",
            "<SubscribeMsgSentEvent><List><TemplateId>T1</TemplateId><MsgID>1700827132819554305</MsgID><ErrorCode>0</ErrorCode><ErrorStatus>success</ErrorStatus></List></SubscribeMsgSentEvent>",
        ),
        event_at(
            "oUser",
            t,
            "subscribe_msg_popup_event",
            "<SubscribeMsgPopupEvent><List><TemplateId>T1</TemplateId><SubscribeStatusString>accept</SubscribeStatusString><PopupScene>2</PopupScene></List></SubscribeMsgPopupEvent>",
        ),
        event_at(
            "oUser",
            t,
            "subscribe_msg_popup_event",
            "<SubscribeMsgPopupEvent><List><TemplateId>T2</TemplateId><SubscribeStatusString>accept</SubscribeStatusString><PopupScene>2</PopupScene></List></SubscribeMsgPopupEvent>",
        ),
    ];
    // Delivery reports (TEMPLATESENDJOBFINISH, subscribe_msg_sent_event) are bound to the
    // worker's send-status queue, the rest land in the catch-all.
    each_published_once(
        &h,
        AUTHORIZER,
        &comp(),
        Framing::Safe,
        &[h.unrouted(), h.send_status()],
        &xmls,
    )
    .await;
    h.stop().await;
}

#[tokio::test]
async fn a_wecom_bulk_contact_sync_is_published_whole() {
    let h = Harness::start("gw-collide-wecom").await;
    h.wait_connected().await;
    let t = now();
    let change = |rest: &str| {
        format!(
            "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName><CreateTime>{t}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[change_contact]]></Event>{rest}<AgentID>1000002</AgentID></xml>"
        )
    };
    let xmls = vec![
        change("<ChangeType>create_user</ChangeType><UserID>zhangsan</UserID><Name>张三</Name>"),
        change(
            "<ChangeType>update_user</ChangeType><UserID>zhangsan</UserID><Department>1,2</Department>",
        ),
        change(
            "<ChangeType>update_user</ChangeType><UserID>zhangsan</UserID><Position>CTO</Position>",
        ),
        change("<ChangeType>create_user</ChangeType><UserID>lisi</UserID><Name>李四</Name>"),
        change("<ChangeType>create_party</ChangeType><Id>2</Id><Name>R&amp;D</Name>"),
        change(
            "<ChangeType>update_tag</ChangeType><TagId>1</TagId><AddUserItems>zhangsan,lisi</AddUserItems>",
        ),
        format!(
            "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName><CreateTime>{t}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[batch_job_result]]></Event><BatchJob><JobId>S0MrnndvRG5fadSlLwiBqiDDbM143UqTmKP3152FZk4</JobId><JobType>sync_user</JobType><ErrCode>0</ErrCode><ErrMsg>ok</ErrMsg></BatchJob></xml>"
        ),
    ];
    each_published_once(
        &h,
        "/wx/corp/callback",
        &corp(),
        Framing::Wecom,
        &[h.unrouted()],
        &xmls,
    )
    .await;
    h.stop().await;
}

#[tokio::test]
async fn component_notices_of_one_second_are_all_published() {
    let h = Harness::start("gw-collide-notice").await;
    h.wait_connected().await;
    let t = now();
    let notice = |info_type: &str, rest: &str| {
        format!(
            "<xml><AppId><![CDATA[{COMP_APPID}]]></AppId><CreateTime>{t}</CreateTime><InfoType><![CDATA[{info_type}]]></InfoType>{rest}</xml>"
        )
    };
    let fast = |name: &str| {
        notice(
            "notify_third_fasteregister",
            &format!(
                "<status>0</status><auth_code>ac</auth_code><msg>OK</msg><info><name>{name}</name><code>c</code><code_type>1</code_type><legal_persona_wechat>w</legal_persona_wechat><legal_persona_name>p</legal_persona_name><component_phone>1</component_phone></info>"
            ),
        )
    };
    // notify_* go to the catch-all queue; tickets and authorizations to token-control's.
    each_published_once(
        &h,
        "/wx/comp/component",
        &comp(),
        Framing::Safe,
        &[h.unrouted()],
        &[fast("Shop A"), fast("Shop B")],
    )
    .await;
    let authorized = |code: &str| {
        notice(
            "authorized",
            &format!(
                "<AuthorizerAppid>wxauth0000000009</AuthorizerAppid><AuthorizationCode>{code}</AuthorizationCode><AuthorizationCodeExpiredTime>1</AuthorizationCodeExpiredTime><PreAuthCode>pre</PreAuthCode>"
            ),
        )
    };
    each_published_once(
        &h,
        "/wx/comp/component",
        &comp(),
        Framing::Safe,
        &[h.token_control()],
        &[
            notice(
                "component_verify_ticket",
                "<ComponentVerifyTicket>ticket@@@one</ComponentVerifyTicket>",
            ),
            notice(
                "component_verify_ticket",
                "<ComponentVerifyTicket>ticket@@@two</ComponentVerifyTicket>",
            ),
            authorized("queryauthcode@@@1"),
            authorized("queryauthcode@@@2"),
        ],
    )
    .await;
    h.stop().await;
}
