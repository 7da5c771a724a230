//! Token semantics on the virtual clock, OA/WeCom token endpoints, JS-SDK tickets, quotas.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use wxhub_sim::{AccountKind, AgentSeed, CallFilter, CorpSeed, Seed};

use crate::common::*;

const OA: &str = "wxdirectoa0001";

fn seed() -> Seed {
    let mut oa = account(OA, "gh_direct", AccountKind::OfficialAccount, &["o_user"]);
    oa.secret = Some("oa-secret".into());
    Seed {
        components: vec![component("wxcomp_tokens", None, None)],
        accounts: vec![oa],
        wecom: vec![CorpSeed {
            corpid: "ww_corp_tokens".into(),
            agents: vec![AgentSeed {
                agentid: 1_000_002,
                secret: "agent-secret".into(),
                token: None,
                aes_key: None,
                callback_url: None,
            }],
        }],
        ..Default::default()
    }
}

fn token_path(appid: &str, secret: &str) -> String {
    format!("/cgi-bin/token?grant_type=client_credential&appid={appid}&secret={secret}")
}

#[tokio::test]
async fn new_token_invalidates_the_old_one_after_the_overlap() -> Result<()> {
    let sim = start(seed()).await;
    let api = Api::new(&sim);
    let t1 = str_field(
        &api.get(&token_path(OA, "oa-secret")).await?,
        "access_token",
    )?;
    let ticket = |t: &str| format!("/cgi-bin/ticket/getticket?access_token={t}&type=jsapi");
    assert_eq!(errcode(&api.get(&ticket(&t1)).await?), 0);

    sim.advance(Duration::from_secs(1000));
    let t2 = str_field(
        &api.get(&token_path(OA, "oa-secret")).await?,
        "access_token",
    )?;
    assert_ne!(t1, t2);
    // Both valid during the 300 s overlap...
    assert_eq!(errcode(&api.get(&ticket(&t1)).await?), 0);
    sim.advance(Duration::from_secs(299));
    assert_eq!(errcode(&api.get(&ticket(&t1)).await?), 0);
    // ...then the old one is "not latest".
    sim.advance(Duration::from_secs(2));
    assert_eq!(errcode(&api.get(&ticket(&t1)).await?), 40001);
    assert_eq!(errcode(&api.get(&ticket(&t2)).await?), 0);
    // The newest expires after expires_in.
    sim.advance(Duration::from_secs(7200));
    assert_eq!(errcode(&api.get(&ticket(&t2)).await?), 42001);
    assert_eq!(
        errcode(&api.get("/cgi-bin/ticket/getticket?type=jsapi").await?),
        41001
    );
    Ok(())
}

#[tokio::test]
async fn a_third_token_kills_the_first_at_once() -> Result<()> {
    let sim = start(seed()).await;
    let api = Api::new(&sim);
    let t1 = str_field(
        &api.get(&token_path(OA, "oa-secret")).await?,
        "access_token",
    )?;
    let _t2 = api.get(&token_path(OA, "oa-secret")).await?;
    let _t3 = api.get(&token_path(OA, "oa-secret")).await?;
    let r = api
        .get(&format!(
            "/cgi-bin/ticket/getticket?access_token={t1}&type=jsapi"
        ))
        .await?;
    assert_eq!(errcode(&r), 40001);
    Ok(())
}

#[tokio::test]
async fn configured_ttl_and_overlap() -> Result<()> {
    let mut cfg = config(seed());
    cfg.token_ttl = Duration::from_secs(60);
    cfg.token_overlap = Duration::from_secs(0);
    let sim = wxhub_sim::start(cfg).await?;
    let api = Api::new(&sim);
    let r = api.get(&token_path(OA, "oa-secret")).await?;
    assert_eq!(r["expires_in"], 60);
    let t1 = str_field(&r, "access_token")?;
    let _t2 = api.get(&token_path(OA, "oa-secret")).await?;
    let r = api
        .get(&format!(
            "/cgi-bin/ticket/getticket?access_token={t1}&type=jsapi"
        ))
        .await?;
    assert_eq!(errcode(&r), 40001);
    Ok(())
}

#[tokio::test]
async fn oa_token_errors() -> Result<()> {
    let sim = start(seed()).await;
    let api = Api::new(&sim);
    assert_eq!(errcode(&api.get(&token_path(OA, "wrong")).await?), 40125);
    assert_eq!(
        errcode(&api.get(&token_path("wxnobody", "x")).await?),
        40013
    );
    assert_eq!(
        errcode(&api.get(&token_path("wxcomp_tokens", "x")).await?),
        61024
    );
    assert_eq!(
        errcode(
            &api.get(&format!(
                "/cgi-bin/token?grant_type=client_credential&appid={OA}"
            ))
            .await?
        ),
        41004
    );
    assert_eq!(
        errcode(
            &api.get("/cgi-bin/token?grant_type=client_credential")
                .await?
        ),
        41002
    );
    assert_eq!(
        errcode(
            &api.get(&format!(
                "/cgi-bin/token?grant_type=password&appid={OA}&secret=oa-secret"
            ))
            .await?
        ),
        40002
    );
    Ok(())
}

#[tokio::test]
async fn stable_token_is_idempotent_until_forced() -> Result<()> {
    let sim = start(seed()).await;
    let api = Api::new(&sim);
    let body = |force: bool| json!({"grant_type": "client_credential", "appid": OA, "secret": "oa-secret", "force_refresh": force});
    let a = api.post("/cgi-bin/stable_token", body(false)).await?;
    sim.advance(Duration::from_secs(100));
    let b = api.post("/cgi-bin/stable_token", body(false)).await?;
    assert_eq!(a["access_token"], b["access_token"]);
    let left = b["expires_in"].as_i64().unwrap_or_default();
    assert!((7090..=7100).contains(&left), "{b}");
    let c = api.post("/cgi-bin/stable_token", body(true)).await?;
    assert_ne!(a["access_token"], c["access_token"]);
    assert_eq!(c["expires_in"], 7200);
    let bad = api
        .post(
            "/cgi-bin/stable_token",
            json!({"grant_type": "client_credential", "appid": OA, "secret": "nope"}),
        )
        .await?;
    assert_eq!(errcode(&bad), 40125);
    let typed = api
        .post("/cgi-bin/stable_token", json!({"grant_type": "client_credential", "appid": OA, "secret": "oa-secret", "force_refresh": "yes"}))
        .await?;
    assert_eq!(errcode(&typed), 47001);
    Ok(())
}

#[tokio::test]
async fn token_lifetimes_can_be_set_per_path_and_owner() -> Result<()> {
    let sim = start(seed()).await;
    let api = Api::new(&sim);
    let secs = |n| Some(Duration::from_secs(n));
    // For one owner, for the whole path, and the configured default elsewhere.
    sim.set_token_ttl("/cgi-bin/token", Some(OA), secs(60))?;
    sim.set_token_ttl("/cgi-bin/gettoken", None, secs(90))?;
    let oa = api.get(&token_path(OA, "oa-secret")).await?;
    assert_eq!(oa["expires_in"], 60, "{oa}");
    let wecom = api
        .get("/cgi-bin/gettoken?corpid=ww_corp_tokens&corpsecret=agent-secret")
        .await?;
    assert_eq!(wecom["expires_in"], 90, "{wecom}");
    let stable = api
        .post(
            "/cgi-bin/stable_token",
            json!({"grant_type": "client_credential", "appid": OA, "secret": "oa-secret"}),
        )
        .await?;
    assert_eq!(stable["expires_in"], 7200, "another path keeps the default");
    // The token really lives that long, as WeChat's checks see it.
    let token = str_field(&oa, "access_token")?;
    let expiry = sim.check_token(&token).expect("valid");
    let left = expiry - sim.clock().now_ms();
    assert!((59_000..=60_000).contains(&left), "{left}");
    sim.advance(Duration::from_secs(59));
    assert!(sim.check_token(&token).is_ok());
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.check_token(&token), Err(42001));
    assert_eq!(sim.check_token("nope"), Err(40001));
    // Removing the setting restores the default; bad settings change nothing.
    sim.set_token_ttl("/cgi-bin/token", Some(OA), None)?;
    assert_eq!(
        api.get(&token_path(OA, "oa-secret")).await?["expires_in"],
        7200
    );
    for (path, ttl) in [
        ("/cgi-bin/message/custom/send", secs(60)),
        ("/cgi-bin/token", secs(0)),
        ("/cgi-bin/token", secs(7201)),
        ("/cgi-bin/token", Some(Duration::from_millis(1500))),
    ] {
        assert!(
            sim.set_token_ttl(path, None, ttl).is_err(),
            "{path} {ttl:?}"
        );
    }
    assert_eq!(
        api.get(&token_path(OA, "oa-secret")).await?["expires_in"],
        7200
    );
    // The admin API takes the same setting.
    let admin = client()
        .post(format!("{}/sim/token-ttl", sim.base_url()))
        .json(&json!({"path": "/cgi-bin/token", "appid": OA, "secs": 30}))
        .send()
        .await?;
    assert!(admin.status().is_success());
    assert_eq!(
        api.get(&token_path(OA, "oa-secret")).await?["expires_in"],
        30
    );
    let bad = client()
        .post(format!("{}/sim/token-ttl", sim.base_url()))
        .json(&json!({"path": "/cgi-bin/token", "secs": 0}))
        .send()
        .await?;
    assert_eq!(bad.status(), 400);
    Ok(())
}

#[tokio::test]
async fn stable_token_gives_its_remaining_life_and_limits_force_refresh() -> Result<()> {
    let sim = start(seed()).await;
    sim.set_token_ttl(
        "/cgi-bin/stable_token",
        Some(OA),
        Some(Duration::from_secs(60)),
    )?;
    let api = Api::new(&sim);
    let body = |force: bool| json!({"grant_type": "client_credential", "appid": OA, "secret": "oa-secret", "force_refresh": force});
    let a = api.post("/cgi-bin/stable_token", body(false)).await?;
    assert_eq!(a["expires_in"], 60);
    // Normal mode: the same token with what is left of it, until it expires...
    sim.advance(Duration::from_secs(45));
    let b = api.post("/cgi-bin/stable_token", body(false)).await?;
    assert_eq!(a["access_token"], b["access_token"]);
    // Whole seconds, rounded down (the virtual clock also runs in real time).
    let left = b["expires_in"].as_i64().unwrap_or_default();
    assert!((14..=15).contains(&left), "{b}");
    sim.advance(Duration::from_secs(15));
    // ...then a new one.
    let c = api.post("/cgi-bin/stable_token", body(false)).await?;
    assert_ne!(c["access_token"], a["access_token"]);
    assert_eq!(c["expires_in"], 60);

    // force_refresh: at least 30 s apart (45011), at most 20 a CST day (45009). Start right
    // after a virtual midnight (UTC+8) so the 20 uses fall on one day.
    let to_midnight = || {
        let cst_ms = sim.clock().now_ms() + 8 * 3_600_000;
        u64::try_from(86_400_000 - cst_ms.rem_euclid(86_400_000) + 1000).unwrap_or(0)
    };
    sim.advance(Duration::from_millis(to_midnight()));
    let mut forced = Vec::new();
    for n in 0..20 {
        let f = api.post("/cgi-bin/stable_token", body(true)).await?;
        forced.push(str_field(&f, "access_token")?);
        let again = api.post("/cgi-bin/stable_token", body(true)).await?;
        let expected = if n < 19 { 45011 } else { 45009 };
        assert_eq!(errcode(&again), expected, "use {n}: {again}");
        sim.advance(Duration::from_secs(30));
    }
    let over = api.post("/cgi-bin/stable_token", body(true)).await?;
    assert_eq!(errcode(&over), 45009, "{over}");
    // Normal mode still answers, with the last forced token and its remaining life.
    let normal = api.post("/cgi-bin/stable_token", body(false)).await?;
    assert_eq!(normal["access_token"], json!(forced[19]));
    let left = normal["expires_in"].as_i64().unwrap_or_default();
    assert!((29..=30).contains(&left), "{normal}");
    sim.advance(Duration::from_millis(to_midnight()));
    let next_day = api.post("/cgi-bin/stable_token", body(true)).await?;
    assert_eq!(errcode(&next_day), 0, "a new day, new uses: {next_day}");
    let refused = sim.calls(&CallFilter {
        path: Some("/cgi-bin/stable_token".into()),
        errcode: Some(45011),
        ..Default::default()
    });
    assert_eq!(refused.len(), 19);
    Ok(())
}

#[tokio::test]
async fn wecom_gettoken() -> Result<()> {
    let sim = start(seed()).await;
    let api = Api::new(&sim);
    let ok = api
        .get("/cgi-bin/gettoken?corpid=ww_corp_tokens&corpsecret=agent-secret")
        .await?;
    assert_eq!((errcode(&ok), ok["expires_in"].as_i64()), (0, Some(7200)));
    let token = str_field(&ok, "access_token")?;
    let agents = sim.corp("ww_corp_tokens").unwrap_or_default();
    assert_eq!(agents[0].access_token.as_deref(), Some(token.as_str()));
    assert_eq!(
        errcode(
            &api.get("/cgi-bin/gettoken?corpid=ww_corp_tokens&corpsecret=bad")
                .await?
        ),
        40001
    );
    assert_eq!(
        errcode(
            &api.get("/cgi-bin/gettoken?corpid=ww_nope&corpsecret=x")
                .await?
        ),
        40013
    );
    assert_eq!(
        errcode(&api.get("/cgi-bin/gettoken?corpid=ww_corp_tokens").await?),
        41004
    );
    assert_eq!(errcode(&api.get("/cgi-bin/gettoken").await?), 41002);
    Ok(())
}

#[tokio::test]
async fn jsapi_ticket_is_cached_until_expiry() -> Result<()> {
    let sim = start(seed()).await;
    let api = Api::new(&sim);
    let t = str_field(
        &api.get(&token_path(OA, "oa-secret")).await?,
        "access_token",
    )?;
    let a = api
        .get(&format!(
            "/cgi-bin/ticket/getticket?access_token={t}&type=jsapi"
        ))
        .await?;
    let b = api
        .get(&format!(
            "/cgi-bin/ticket/getticket?access_token={t}&type=jsapi"
        ))
        .await?;
    let card = api
        .get(&format!(
            "/cgi-bin/ticket/getticket?access_token={t}&type=wx_card"
        ))
        .await?;
    assert_eq!(a["ticket"], b["ticket"]);
    assert_ne!(a["ticket"], card["ticket"]);
    assert_eq!(a["expires_in"], 7200);
    let bad = api
        .get(&format!(
            "/cgi-bin/ticket/getticket?access_token={t}&type=nope"
        ))
        .await?;
    assert_eq!(errcode(&bad), 40097);
    Ok(())
}

#[tokio::test]
async fn daily_quota_runs_out_resets_at_cst_midnight_and_clears() -> Result<()> {
    let sim = start(seed()).await;
    sim.set_quota("/cgi-bin/token", Some(3))?;
    let api = Api::new(&sim);
    let mut last = String::new();
    for _ in 0..3 {
        last = str_field(
            &api.get(&token_path(OA, "oa-secret")).await?,
            "access_token",
        )?;
    }
    assert_eq!(
        errcode(&api.get(&token_path(OA, "oa-secret")).await?),
        45009
    );
    let spent = sim.calls(&CallFilter {
        path: Some("/cgi-bin/token".into()),
        errcode: Some(45009),
        ..Default::default()
    });
    assert_eq!(spent.len(), 1);
    assert_eq!(spent[0].appid.as_deref(), Some(OA));

    // clear_quota with the account's own token resets it.
    let cleared = api
        .post(
            &format!("/cgi-bin/clear_quota?access_token={last}"),
            json!({"appid": OA}),
        )
        .await?;
    assert_eq!(errcode(&cleared), 0, "{cleared}");
    assert!(
        api.get(&token_path(OA, "oa-secret"))
            .await?
            .get("access_token")
            .is_some()
    );
    let mismatch = api
        .post(
            &format!("/cgi-bin/clear_quota?access_token={last}"),
            json!({"appid": "wxother"}),
        )
        .await?;
    assert_eq!(errcode(&mismatch), 40013);

    // Spend it again, then let virtual midnight (UTC+8) pass.
    while errcode(&api.get(&token_path(OA, "oa-secret")).await?) != 45009 {}
    let now = sim.clock().now_ms();
    let cst_ms = now + 8 * 3_600_000;
    let to_midnight = 86_400_000 - cst_ms.rem_euclid(86_400_000) + 1000;
    sim.advance(Duration::from_millis(u64::try_from(to_midnight)?));
    assert!(
        api.get(&token_path(OA, "oa-secret"))
            .await?
            .get("access_token")
            .is_some()
    );
    Ok(())
}

#[tokio::test]
async fn clear_quota_v2_and_the_monthly_limit() -> Result<()> {
    let mut cfg = config(seed());
    cfg.clear_quota_per_month = 2;
    let sim = wxhub_sim::start(cfg).await?;
    sim.set_quota("/cgi-bin/component/api_component_token", Some(1))?;
    let api = Api::new(&sim);
    let c = "wxcomp_tokens";
    api.component_token(&sim, c).await?;
    let ticket = sim
        .component(c)
        .and_then(|v| v.latest_ticket)
        .unwrap_or_default();
    let body = json!({"component_appid": c, "component_appsecret": SECRET, "component_verify_ticket": ticket});
    let path = "/cgi-bin/component/api_component_token";
    assert_eq!(errcode(&api.post(path, body.clone()).await?), 45009);
    let v2 = "/cgi-bin/component/clear_quota/v2";
    assert_eq!(
        errcode(
            &api.post(v2, json!({"component_appid": c, "appsecret": "bad"}))
                .await?
        ),
        40125
    );
    assert_eq!(
        errcode(
            &api.post(v2, json!({"component_appid": c, "appsecret": SECRET}))
                .await?
        ),
        0
    );
    assert!(
        api.post(path, body.clone())
            .await?
            .get("component_access_token")
            .is_some()
    );
    assert_eq!(
        errcode(
            &api.post(v2, json!({"component_appid": c, "appsecret": SECRET}))
                .await?
        ),
        0
    );
    assert_eq!(
        errcode(
            &api.post(v2, json!({"component_appid": c, "appsecret": SECRET}))
                .await?
        ),
        48006
    );
    assert_eq!(
        errcode(
            &api.post(
                v2,
                json!({"component_appid": c, "appsecret": SECRET, "appid": "wxnotmine"})
            )
            .await?
        ),
        61003
    );
    Ok(())
}
