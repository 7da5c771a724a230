//! Send APIs: validation, the customer-service window, templates, subscriptions, records.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use wxhub_sim::{AccountKind, MessageFilter, Seed, SimHandle};

use crate::common::*;

const C: &str = "wxcomp_sends";
const OA: &str = "wxoa_sends";
const MP: &str = "wxmp_sends";
const LIMITED: &str = "wxoa_limited";

fn seed() -> Seed {
    let mut oa = account(
        OA,
        "gh_oa_sends",
        AccountKind::OfficialAccount,
        &["o_active", "o_other"],
    );
    oa.templates = vec!["tmpl_ok".into()];
    oa.subscribe_templates = vec!["sub_ok".into()];
    oa.users.push(wxhub_sim::UserSeed {
        openid: "o_stale".into(),
        subscribed: true,
        last_interaction_ago_secs: Some(49 * 3600),
        subscribe_allowance: [("sub_ok".to_owned(), 1)].into_iter().collect(),
    });
    oa.users.push(wxhub_sim::UserSeed {
        openid: "o_gone".into(),
        subscribed: false,
        last_interaction_ago_secs: None,
        subscribe_allowance: Default::default(),
    });
    let mut mp = account(MP, "gh_mp_sends", AccountKind::MiniProgram, &["o_mp"]);
    mp.subscribe_templates = vec!["mp_sub".into()];
    mp.users[0].subscribe_allowance = [("mp_sub".to_owned(), 1)].into_iter().collect();
    let mut limited = account(
        LIMITED,
        "gh_limited",
        AccountKind::OfficialAccount,
        &["o_active"],
    );
    limited.func_info = Some(vec![2, 3]);
    limited.templates = vec!["tmpl_ok".into()];
    Seed {
        components: vec![component(C, None, None)],
        accounts: vec![oa, mp, limited],
        authorizations: vec![
            authorization(C, OA, "refreshtoken@@@oa"),
            authorization(C, MP, "refreshtoken@@@mp"),
            authorization(C, LIMITED, "refreshtoken@@@limited"),
        ],
        ..Default::default()
    }
}

async fn tokens(sim: &SimHandle, api: &Api) -> Result<(String, String, String)> {
    let c = api.component_token(sim, C).await?;
    Ok((
        api.authorizer_token(&c, C, OA, "refreshtoken@@@oa").await?,
        api.authorizer_token(&c, C, MP, "refreshtoken@@@mp").await?,
        api.authorizer_token(&c, C, LIMITED, "refreshtoken@@@limited")
            .await?,
    ))
}

async fn send(api: &Api, path: &str, token: &str, body: Value) -> Result<Value> {
    api.post(&format!("{path}?access_token={token}"), body)
        .await
}

const CUSTOM: &str = "/cgi-bin/message/custom/send";

#[tokio::test]
async fn custom_send_validates_and_records() -> Result<()> {
    let sim = start(seed()).await;
    let api = Api::new(&sim);
    let (oa, mp, limited) = tokens(&sim, &api).await?;

    let ok = send(
        &api,
        CUSTOM,
        &oa,
        json!({"touser": "o_active", "msgtype": "text", "text": {"content": "hello"}}),
    )
    .await?;
    assert_eq!((errcode(&ok), ok["errmsg"].as_str()), (0, Some("ok")));
    let recorded = sim.messages(&MessageFilter {
        appid: Some(OA.into()),
        ..Default::default()
    });
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].content.as_deref(), Some("hello"));
    assert_eq!(recorded[0].component_appid.as_deref(), Some(C));
    assert!(recorded[0].msgid > 0);

    let cases: Vec<(&str, Value, i64)> = vec![
        (
            &oa,
            json!({"touser": "o_nobody", "msgtype": "text", "text": {"content": "x"}}),
            40003,
        ),
        (
            &oa,
            json!({"msgtype": "text", "text": {"content": "x"}}),
            40003,
        ),
        (
            &oa,
            json!({"touser": "o_active", "text": {"content": "x"}}),
            40008,
        ),
        (
            &oa,
            json!({"touser": "o_active", "msgtype": "hologram"}),
            40008,
        ),
        (
            &oa,
            json!({"touser": "o_active", "msgtype": "text", "text": {}}),
            44004,
        ),
        (
            &oa,
            json!({"touser": "o_active", "msgtype": "image", "image": {}}),
            47001,
        ),
        (
            &oa,
            json!({"touser": "o_active", "msgtype": "news", "news": {"articles": [{"title": "a"}, {"title": "b"}]}}),
            45008,
        ),
        (
            &oa,
            json!({"touser": "o_stale", "msgtype": "text", "text": {"content": "x"}}),
            45015,
        ),
        (
            &oa,
            json!({"touser": "o_gone", "msgtype": "text", "text": {"content": "x"}}),
            45015,
        ),
        (
            &mp,
            json!({"touser": "o_mp", "msgtype": "news", "news": {"articles": [{"title": "a"}]}}),
            40008,
        ),
        (
            &limited,
            json!({"touser": "o_active", "msgtype": "text", "text": {"content": "x"}}),
            48001,
        ),
        (
            "bogus",
            json!({"touser": "o_active", "msgtype": "text", "text": {"content": "x"}}),
            40001,
        ),
    ];
    for (token, body, code) in cases {
        let r = send(&api, CUSTOM, token, body.clone()).await?;
        assert_eq!(errcode(&r), code, "{body} -> {r}");
    }
    assert_eq!(
        errcode(
            &api.post_raw(&format!("{CUSTOM}?access_token={oa}"), "[1,2")
                .await?
        ),
        47001
    );
    let ok = send(&api, CUSTOM, &mp, json!({"touser": "o_mp", "msgtype": "link", "link": {"title": "t", "description": "d", "url": "https://x", "thumb_url": "https://y"}})).await?;
    assert_eq!(errcode(&ok), 0, "{ok}");
    // Only accepted messages are recorded.
    assert_eq!(sim.messages(&MessageFilter::default()).len(), 2);
    Ok(())
}

#[tokio::test]
async fn window_allows_five_messages_and_closes_after_48_hours() -> Result<()> {
    let sim = start(seed()).await;
    let api = Api::new(&sim);
    let (oa, _, _) = tokens(&sim, &api).await?;
    let body = json!({"touser": "o_other", "msgtype": "text", "text": {"content": "n"}});
    for _ in 0..5 {
        assert_eq!(errcode(&send(&api, CUSTOM, &oa, body.clone()).await?), 0);
    }
    assert_eq!(
        errcode(&send(&api, CUSTOM, &oa, body.clone()).await?),
        45047
    );
    // A new user message opens a fresh window.
    sim.interact(OA, "o_other")?;
    assert_eq!(errcode(&send(&api, CUSTOM, &oa, body.clone()).await?), 0);
    sim.advance(Duration::from_secs(48 * 3600));
    let c = api.component_token(&sim, C).await?;
    let oa = api.authorizer_token(&c, C, OA, "refreshtoken@@@oa").await?;
    assert_eq!(errcode(&send(&api, CUSTOM, &oa, body).await?), 45015);
    Ok(())
}

#[tokio::test]
async fn template_send() -> Result<()> {
    let sim = start(seed()).await;
    let api = Api::new(&sim);
    let (oa, mp, limited) = tokens(&sim, &api).await?;
    let path = "/cgi-bin/message/template/send";
    let good = json!({"touser": "o_stale", "template_id": "tmpl_ok", "url": "http://x", "data": {"keyword1": {"value": "巧克力"}}});
    let ok = send(&api, path, &oa, good.clone()).await?;
    assert_eq!(errcode(&ok), 0);
    assert!(ok["msgid"].as_u64().is_some(), "{ok}");
    let rec = sim.messages(&MessageFilter {
        path: Some(path.into()),
        ..Default::default()
    });
    assert_eq!(rec[0].template_id.as_deref(), Some("tmpl_ok"));

    let mut reentry = good.clone();
    reentry["client_msg_id"] = json!("MSG_1");
    let a = send(&api, path, &oa, reentry.clone()).await?;
    let b = send(&api, path, &oa, reentry).await?;
    assert_eq!(a["msgid"], b["msgid"]);
    assert_eq!(
        sim.messages(&MessageFilter {
            path: Some(path.into()),
            ..Default::default()
        })
        .len(),
        2
    );

    let cases: Vec<(&str, Value, i64)> = vec![
        (
            &oa,
            json!({"touser": "o_stale", "template_id": "tmpl_nope", "data": {}}),
            40037,
        ),
        (&oa, json!({"touser": "o_stale", "data": {}}), 40037),
        (
            &oa,
            json!({"touser": "o_nobody", "template_id": "tmpl_ok", "data": {}}),
            40003,
        ),
        (
            &oa,
            json!({"touser": "o_gone", "template_id": "tmpl_ok", "data": {}}),
            43004,
        ),
        (
            &oa,
            json!({"touser": "o_stale", "template_id": "tmpl_ok", "data": {"k": "flat"}}),
            47003,
        ),
        (
            &oa,
            json!({"touser": "o_stale", "template_id": "tmpl_ok"}),
            47003,
        ),
        (
            &mp,
            json!({"touser": "o_mp", "template_id": "tmpl_ok", "data": {}}),
            48001,
        ),
        (
            &limited,
            json!({"touser": "o_active", "template_id": "tmpl_ok", "data": {}}),
            48001,
        ),
    ];
    for (token, body, code) in cases {
        let r = send(&api, path, token, body.clone()).await?;
        assert_eq!(errcode(&r), code, "{body} -> {r}");
    }
    Ok(())
}

#[tokio::test]
async fn subscription_messages_use_up_their_allowance() -> Result<()> {
    let sim = start(seed()).await;
    let api = Api::new(&sim);
    let (oa, mp, _) = tokens(&sim, &api).await?;
    let biz = "/cgi-bin/message/subscribe/bizsend";
    let body =
        json!({"touser": "o_stale", "template_id": "sub_ok", "data": {"thing1": {"value": "x"}}});
    assert_eq!(errcode(&send(&api, biz, &oa, body.clone()).await?), 0);
    assert_eq!(errcode(&send(&api, biz, &oa, body).await?), 43101);
    assert_eq!(
        errcode(
            &send(
                &api,
                biz,
                &oa,
                json!({"touser": "o_stale", "template_id": "nope", "data": {}})
            )
            .await?
        ),
        40037
    );
    assert_eq!(
        errcode(
            &send(
                &api,
                biz,
                &mp,
                json!({"touser": "o_mp", "template_id": "mp_sub", "data": {}})
            )
            .await?
        ),
        48001
    );

    let mps = "/cgi-bin/message/subscribe/send";
    let bad_state = json!({"touser": "o_mp", "template_id": "mp_sub", "miniprogram_state": "beta", "data": {"thing1": {"value": "x"}}});
    assert_eq!(errcode(&send(&api, mps, &mp, bad_state).await?), 47003);
    let bad_data =
        json!({"touser": "o_mp", "template_id": "mp_sub", "data": {"thing1": {"value": 5}}});
    assert_eq!(errcode(&send(&api, mps, &mp, bad_data).await?), 47003);
    let good = json!({"touser": "o_mp", "template_id": "mp_sub", "page": "index?foo=bar", "miniprogram_state": "formal", "lang": "zh_CN", "data": {"thing1": {"value": "x"}}});
    let ok = send(&api, mps, &mp, good.clone()).await?;
    assert_eq!(errcode(&ok), 0, "{ok}");
    assert_eq!(errcode(&send(&api, mps, &mp, good).await?), 43101);
    assert_eq!(
        errcode(
            &send(
                &api,
                mps,
                &oa,
                json!({"touser": "o_stale", "template_id": "sub_ok", "data": {}})
            )
            .await?
        ),
        48001
    );
    Ok(())
}
