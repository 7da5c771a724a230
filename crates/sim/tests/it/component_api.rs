//! Component APIs: success and error paths.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use wxhub_sim::{AccountKind, Seed};

use crate::common::*;

const C: &str = "wxcomponent0001";
const A: &str = "wxauthorizer001";

fn seed() -> Seed {
    Seed {
        components: vec![component(C, None, None)],
        accounts: vec![account(
            A,
            "gh_authorizer01",
            AccountKind::OfficialAccount,
            &["o_user_1"],
        )],
        authorizations: vec![authorization(C, A, "refreshtoken@@@seeded")],
        ..Default::default()
    }
}

#[tokio::test]
async fn component_token_needs_a_valid_ticket_and_secret() -> Result<()> {
    let sim = start(seed()).await;
    let api = Api::new(&sim);
    let path = "/cgi-bin/component/api_component_token";
    let ticket = api.ticket(&sim, C).await?;

    let ok = api
        .post(path, json!({"component_appid": C, "component_appsecret": SECRET, "component_verify_ticket": ticket}))
        .await?;
    assert_eq!(ok["expires_in"], 7200);
    assert!(str_field(&ok, "component_access_token")?.len() > 20);
    assert!(ok.get("errcode").is_none(), "success has no errcode: {ok}");

    let cases = [
        (
            json!({"component_appid": C, "component_appsecret": "wrong", "component_verify_ticket": ticket}),
            40125,
        ),
        (
            json!({"component_appid": "wxunknown", "component_appsecret": SECRET, "component_verify_ticket": ticket}),
            40013,
        ),
        (
            json!({"component_appsecret": SECRET, "component_verify_ticket": ticket}),
            41002,
        ),
        (
            json!({"component_appid": C, "component_verify_ticket": ticket}),
            41004,
        ),
        (
            json!({"component_appid": C, "component_appsecret": SECRET, "component_verify_ticket": "ticket@@@forged"}),
            61006,
        ),
        (
            json!({"component_appid": C, "component_appsecret": SECRET}),
            61006,
        ),
        (
            json!({"component_appid": 5, "component_appsecret": SECRET}),
            47001,
        ),
    ];
    for (body, code) in cases {
        let r = api.post(path, body.clone()).await?;
        assert_eq!(errcode(&r), code, "{body} -> {r}");
        assert!(
            r["errmsg"].as_str().unwrap_or_default().contains("rid: "),
            "{r}"
        );
    }
    assert_eq!(errcode(&api.post_raw(path, "{not json").await?), 47001);
    assert_eq!(errcode(&api.post_raw(path, "").await?), 47001);

    // A ticket is valid for 12 hours; after that it is expired (61005), not unknown.
    sim.advance(Duration::from_secs(12 * 3600 + 1));
    let r = api
        .post(path, json!({"component_appid": C, "component_appsecret": SECRET, "component_verify_ticket": ticket}))
        .await?;
    assert_eq!(errcode(&r), 61005);
    Ok(())
}

#[tokio::test]
async fn older_tickets_stay_valid_within_twelve_hours() -> Result<()> {
    let sim = start(seed()).await;
    let api = Api::new(&sim);
    let first = api.ticket(&sim, C).await?;
    sim.advance(Duration::from_secs(600));
    let second = loop {
        api.post(
            "/cgi-bin/component/api_start_push_ticket",
            json!({"component_appid": C, "component_secret": SECRET}),
        )
        .await?;
        let latest = sim
            .component(C)
            .and_then(|c| c.latest_ticket)
            .unwrap_or_default();
        if latest != first {
            break latest;
        }
    };
    assert_ne!(first, second);
    for ticket in [&first, &second] {
        let r = api
            .post(
                "/cgi-bin/component/api_component_token",
                json!({"component_appid": C, "component_appsecret": SECRET, "component_verify_ticket": ticket}),
            )
            .await?;
        assert!(r.get("component_access_token").is_some(), "{r}");
    }
    Ok(())
}

#[tokio::test]
async fn start_push_ticket_checks_credentials() -> Result<()> {
    let sim = start(seed()).await;
    let api = Api::new(&sim);
    let path = "/cgi-bin/component/api_start_push_ticket";
    let ok = api
        .post(
            path,
            json!({"component_appid": C, "component_secret": SECRET}),
        )
        .await?;
    assert_eq!((errcode(&ok), ok["errmsg"].as_str()), (0, Some("ok")));
    let bad = api
        .post(
            path,
            json!({"component_appid": C, "component_secret": "nope"}),
        )
        .await?;
    assert_eq!(errcode(&bad), 40125);
    let unknown = api
        .post(
            path,
            json!({"component_appid": "wxnope", "component_secret": SECRET}),
        )
        .await?;
    assert_eq!(errcode(&unknown), 40013);
    let missing = api.post(path, json!({"component_appid": C})).await?;
    assert_eq!(errcode(&missing), 41004);
    Ok(())
}

#[tokio::test]
async fn component_apis_check_the_token() -> Result<()> {
    let sim = start(seed()).await;
    let api = Api::new(&sim);
    let token = api.component_token(&sim, C).await?;
    let path = "/cgi-bin/component/api_create_preauthcode";
    let ok = api
        .post(
            &format!("{path}?component_access_token={token}"),
            json!({"component_appid": C}),
        )
        .await?;
    assert_eq!(ok["expires_in"], 600);
    assert!(str_field(&ok, "pre_auth_code")?.starts_with("preauthcode@@@"));
    // The newer `access_token` name is accepted too.
    let ok = api
        .post(
            &format!("{path}?access_token={token}"),
            json!({"component_appid": C}),
        )
        .await?;
    assert!(ok.get("pre_auth_code").is_some());

    assert_eq!(
        errcode(&api.post(path, json!({"component_appid": C})).await?),
        41001
    );
    assert_eq!(
        errcode(
            &api.post(
                &format!("{path}?component_access_token=bogus"),
                json!({"component_appid": C})
            )
            .await?
        ),
        40001
    );
    assert_eq!(
        errcode(
            &api.post(
                &format!("{path}?component_access_token={token}"),
                json!({"component_appid": "wxother"})
            )
            .await?
        ),
        40013
    );
    assert_eq!(
        errcode(
            &api.post(&format!("{path}?component_access_token={token}"), json!({}))
                .await?
        ),
        41002
    );
    sim.advance(Duration::from_secs(7200));
    assert_eq!(
        errcode(
            &api.post(
                &format!("{path}?component_access_token={token}"),
                json!({"component_appid": C})
            )
            .await?
        ),
        42001
    );
    Ok(())
}

#[tokio::test]
async fn query_auth_codes_are_single_use_and_expire() -> Result<()> {
    let sim = start(seed()).await;
    let api = Api::new(&sim);
    let token = api.component_token(&sim, C).await?;
    let path = format!("/cgi-bin/component/api_query_auth?component_access_token={token}");
    let code = sim.authorize(C, A, false).await?.authorized.auth_code;

    let ok = api
        .post(
            &path,
            json!({"component_appid": C, "authorization_code": code}),
        )
        .await?;
    let info = &ok["authorization_info"];
    assert_eq!(info["authorizer_appid"], A);
    assert_eq!(info["expires_in"], 7200);
    assert!(
        info["authorizer_refresh_token"]
            .as_str()
            .unwrap_or_default()
            .starts_with("refreshtoken@@@")
    );
    assert!(
        info["func_info"][0]["funcscope_category"]["id"].is_u64(),
        "{ok}"
    );
    let access = str_field(info, "authorizer_access_token")?;
    assert_eq!(
        sim.authorizer(C, A).and_then(|a| a.access_token),
        Some(access)
    );

    let again = api
        .post(
            &path,
            json!({"component_appid": C, "authorization_code": code}),
        )
        .await?;
    assert_eq!(errcode(&again), 61009);
    let unknown = api
        .post(
            &path,
            json!({"component_appid": C, "authorization_code": "queryauthcode@@@nope"}),
        )
        .await?;
    assert_eq!(errcode(&unknown), 61009);

    let code = sim.authorize(C, A, false).await?.authorized.auth_code;
    sim.advance(Duration::from_secs(601));
    let token = api.component_token(&sim, C).await?;
    let expired = api
        .post(
            &format!("/cgi-bin/component/api_query_auth?component_access_token={token}"),
            json!({"component_appid": C, "authorization_code": code}),
        )
        .await?;
    assert_eq!(errcode(&expired), 61010);
    Ok(())
}

#[tokio::test]
async fn authorizer_token_refresh_and_revocation() -> Result<()> {
    let sim = start(seed()).await;
    let api = Api::new(&sim);
    let ctoken = api.component_token(&sim, C).await?;
    let path = format!("/cgi-bin/component/api_authorizer_token?component_access_token={ctoken}");
    let ok = api
        .post(&path, json!({"component_appid": C, "authorizer_appid": A, "authorizer_refresh_token": "refreshtoken@@@seeded"}))
        .await?;
    assert_eq!(ok["authorizer_refresh_token"], "refreshtoken@@@seeded");
    assert_eq!(ok["expires_in"], 7200);
    let wrong = api
        .post(&path, json!({"component_appid": C, "authorizer_appid": A, "authorizer_refresh_token": "refreshtoken@@@old"}))
        .await?;
    assert_eq!(errcode(&wrong), 61023);
    let not_authorized = api
        .post(&path, json!({"component_appid": C, "authorizer_appid": "wxstranger", "authorizer_refresh_token": "x"}))
        .await?;
    assert_eq!(errcode(&not_authorized), 61003);

    // Re-authorization issues a new refresh token and kills the old one.
    let re = sim.authorize(C, A, false).await?;
    assert_eq!(re.authorized.info_type, "updateauthorized");
    let old = api
        .post(&path, json!({"component_appid": C, "authorizer_appid": A, "authorizer_refresh_token": "refreshtoken@@@seeded"}))
        .await?;
    assert_eq!(errcode(&old), 61023);
    let new = api
        .post(&path, json!({"component_appid": C, "authorizer_appid": A, "authorizer_refresh_token": re.authorized.refresh_token}))
        .await?;
    let access = str_field(&new, "authorizer_access_token")?;

    // Revocation: the refresh token answers 61003 and the access token no longer works.
    sim.revoke(C, A).await?;
    let revoked = api
        .post(&path, json!({"component_appid": C, "authorizer_appid": A, "authorizer_refresh_token": re.authorized.refresh_token}))
        .await?;
    assert_eq!(errcode(&revoked), 61003);
    let ticket = api
        .get(&format!(
            "/cgi-bin/ticket/getticket?access_token={access}&type=jsapi"
        ))
        .await?;
    assert_eq!(errcode(&ticket), 40001);
    Ok(())
}

#[tokio::test]
async fn rotated_refresh_tokens_keep_a_grace_period() -> Result<()> {
    let mut cfg = config(seed());
    cfg.rotate_refresh_tokens = true;
    let sim = wxhub_sim::start(cfg).await?;
    let api = Api::new(&sim);
    let ctoken = api.component_token(&sim, C).await?;
    let path = format!("/cgi-bin/component/api_authorizer_token?component_access_token={ctoken}");
    let body = |r: &str| json!({"component_appid": C, "authorizer_appid": A, "authorizer_refresh_token": r});
    let first = api.post(&path, body("refreshtoken@@@seeded")).await?;
    let rotated = str_field(&first, "authorizer_refresh_token")?;
    assert_ne!(rotated, "refreshtoken@@@seeded");
    // The old one still works during the overlap, then stops.
    assert!(
        api.post(&path, body("refreshtoken@@@seeded"))
            .await?
            .get("authorizer_access_token")
            .is_some()
    );
    let newest = sim
        .authorizer(C, A)
        .map(|a| a.refresh_token)
        .unwrap_or_default();
    sim.advance(Duration::from_secs(301));
    assert_eq!(errcode(&api.post(&path, body(&rotated)).await?), 61023);
    assert!(
        api.post(&path, body(&newest))
            .await?
            .get("authorizer_access_token")
            .is_some()
    );
    Ok(())
}

#[tokio::test]
async fn authorizer_info_and_paged_list() -> Result<()> {
    let mut s = seed();
    for i in 0..7 {
        let appid = format!("wxlisted{i:04}");
        s.accounts.push(account(
            &appid,
            &format!("gh_listed{i}"),
            AccountKind::MiniProgram,
            &[],
        ));
        s.authorizations
            .push(authorization(C, &appid, &format!("refreshtoken@@@{i}")));
    }
    let sim = start(s).await;
    let api = Api::new(&sim);
    let token = api.component_token(&sim, C).await?;
    let list = format!("/cgi-bin/component/api_get_authorizer_list?component_access_token={token}");
    let page1 = api
        .post(
            &list,
            json!({"component_appid": C, "offset": 0, "count": 5}),
        )
        .await?;
    assert_eq!(page1["total_count"], 8);
    assert_eq!(page1["list"].as_array().map(Vec::len), Some(5));
    assert_eq!(page1["list"][0]["refresh_token"], "refreshtoken@@@seeded");
    assert!(page1["list"][0]["auth_time"].is_i64());
    let page2 = api
        .post(
            &list,
            json!({"component_appid": C, "offset": 5, "count": 5}),
        )
        .await?;
    assert_eq!(page2["list"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        errcode(
            &api.post(
                &list,
                json!({"component_appid": C, "offset": 0, "count": 501})
            )
            .await?
        ),
        40097
    );
    assert_eq!(
        errcode(
            &api.post(&list, json!({"component_appid": C, "offset": 0}))
                .await?
        ),
        47001
    );

    // An authorization whose code was never exchanged lists an empty refresh token.
    sim.seed(&Seed {
        accounts: vec![account(
            "wxfresh0001",
            "gh_fresh",
            AccountKind::OfficialAccount,
            &[],
        )],
        ..Default::default()
    })?;
    sim.authorize(C, "wxfresh0001", false).await?;
    let page3 = api
        .post(
            &list,
            json!({"component_appid": C, "offset": 8, "count": 500}),
        )
        .await?;
    assert_eq!(page3["list"][0]["authorizer_appid"], "wxfresh0001");
    assert_eq!(page3["list"][0]["refresh_token"], "");

    let info_path =
        format!("/cgi-bin/component/api_get_authorizer_info?component_access_token={token}");
    let info = api
        .post(
            &info_path,
            json!({"component_appid": C, "authorizer_appid": "wxlisted0000"}),
        )
        .await?;
    assert_eq!(info["authorizer_info"]["user_name"], "gh_listed0");
    assert!(
        info["authorizer_info"].get("MiniProgramInfo").is_some(),
        "{info}"
    );
    assert_eq!(
        info["authorization_info"]["authorizer_refresh_token"],
        "refreshtoken@@@0"
    );
    let oa = api
        .post(
            &info_path,
            json!({"component_appid": C, "authorizer_appid": A}),
        )
        .await?;
    assert!(oa["authorizer_info"].get("MiniProgramInfo").is_none());
    assert_eq!(oa["authorizer_info"]["service_type_info"]["id"], 2);
    let none = api
        .post(
            &info_path,
            json!({"component_appid": C, "authorizer_appid": "wxnobody"}),
        )
        .await?;
    assert_eq!(errcode(&none), 61003);
    Ok(())
}
