//! Menus, temporary media and component web OAuth: WeChat's validation codes, token checks and
//! limits.

use anyhow::Result;
use serde_json::{Value, json};
use wxhub_sim::{AccountKind, AgentSeed, CorpSeed, Seed};

use crate::common::*;

const OA: &str = "wxmenuoa0001";
const COMPONENT: &str = "wxcomp_menus";
const AUTHORIZER: &str = "wxmenuauth001";

fn seed() -> Seed {
    let mut oa = account(OA, "gh_menu", AccountKind::OfficialAccount, &["o_user"]);
    oa.secret = Some("oa-secret".into());
    Seed {
        components: vec![component(COMPONENT, None, None)],
        accounts: vec![
            oa,
            account(
                AUTHORIZER,
                "gh_auth",
                AccountKind::OfficialAccount,
                &["o_fan"],
            ),
        ],
        authorizations: vec![authorization(COMPONENT, AUTHORIZER, "refresh-1")],
        wecom: vec![CorpSeed {
            corpid: "ww_corp_menus".into(),
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

async fn oa_token(api: &Api) -> Result<String> {
    str_field(
        &api.get(&format!(
            "/cgi-bin/token?grant_type=client_credential&appid={OA}&secret=oa-secret"
        ))
        .await?,
        "access_token",
    )
}

fn click(name: &str) -> Value {
    json!({"type": "click", "name": name, "key": "k"})
}

#[tokio::test]
async fn menu_validation_codes() -> Result<()> {
    let sim = start(seed()).await;
    let api = Api::new(&sim);
    let t = oa_token(&api).await?;
    let create = format!("/cgi-bin/menu/create?access_token={t}");
    for (menu, code) in [
        (json!({"button": []}), 40016),
        (
            json!({"button": [click("a"), click("b"), click("c"), click("d")]}),
            40016,
        ),
        (
            json!({"button": [{"type": "teleport", "name": "a", "key": "k"}]}),
            40017,
        ),
        (json!({"button": [click("一二三四五六")]}), 40018),
        (json!({"button": [{"type": "click", "name": "a"}]}), 40019),
        (
            json!({"button": [{"type": "view", "name": "a", "url": "ftp://x"}]}),
            40020,
        ),
        (
            json!({"button": [{"name": "m", "sub_button": (0..6).map(|i| click(&i.to_string())).collect::<Vec<_>>()}]}),
            40023,
        ),
        (
            json!({"button": [{"name": "m", "sub_button": [{"type": "x", "name": "s", "key": "k"}]}]}),
            40024,
        ),
        (
            json!({"button": [{"name": "m", "sub_button": [{"type": "view", "name": "s"}]}]}),
            40027,
        ),
        (json!({"button": [{"name": "no type"}]}), 65308),
        (json!([1]), 47001),
    ] {
        assert_eq!(
            errcode(&api.post(&create, menu.clone()).await?),
            code,
            "{menu}"
        );
    }
    assert_eq!(
        errcode(&api.get("/cgi-bin/menu/get?access_token=").await?),
        41001
    );
    assert_eq!(
        errcode(&api.get("/cgi-bin/menu/get?access_token=forged").await?),
        40001
    );
    assert_eq!(
        errcode(
            &api.get(&format!("/cgi-bin/menu/get?access_token={t}"))
                .await?
        ),
        46003
    );
    // A conditional menu needs a default menu and a rule.
    let conditional = format!("/cgi-bin/menu/addconditional?access_token={t}");
    let rule = |r: Value| json!({"button": [click("c")], "matchrule": r});
    assert_eq!(
        errcode(&api.post(&conditional, rule(json!({"tag_id": "2"}))).await?),
        65303
    );
    assert_eq!(
        errcode(&api.post(&create, json!({"button": [click("a")]})).await?),
        0
    );
    assert_eq!(
        errcode(&api.post(&conditional, rule(json!({}))).await?),
        65304
    );
    assert_eq!(
        errcode(
            &api.post(&conditional, rule(json!({"province": "广东"})))
                .await?
        ),
        65310
    );
    assert_eq!(
        errcode(
            &api.post(
                &conditional,
                rule(json!({"country": "中国", "city": "广州"}))
            )
            .await?
        ),
        65311
    );
    let added = api.post(&conditional, rule(json!({"tag_id": "2"}))).await?;
    let id = str_field(&added, "menuid")?;
    let got = api
        .get(&format!("/cgi-bin/menu/get?access_token={t}"))
        .await?;
    assert_eq!(got["conditionalmenu"][0]["menuid"].to_string(), id);
    let trymatch = format!("/cgi-bin/menu/trymatch?access_token={t}");
    assert_eq!(
        api.post(&trymatch, json!({"user_id": "o_user"})).await?["button"][0]["name"],
        "a"
    );
    assert_eq!(
        errcode(&api.post(&trymatch, json!({"user_id": "o_nobody"})).await?),
        65302
    );
    let del = format!("/cgi-bin/menu/delconditional?access_token={t}");
    assert_eq!(errcode(&api.post(&del, json!({"menuid": id})).await?), 0);
    assert_eq!(
        errcode(&api.post(&del, json!({"menuid": id})).await?),
        65301
    );
    Ok(())
}

#[tokio::test]
async fn wecom_menus_are_per_agent() -> Result<()> {
    let sim = start(seed()).await;
    let api = Api::new(&sim);
    let t = str_field(
        &api.get("/cgi-bin/gettoken?corpid=ww_corp_menus&corpsecret=agent-secret")
            .await?,
        "access_token",
    )?;
    let menu = json!({"button": [click("a")]});
    assert_eq!(
        errcode(
            &api.post(
                &format!("/cgi-bin/menu/create?access_token={t}"),
                menu.clone()
            )
            .await?
        ),
        41011
    );
    assert_eq!(
        errcode(
            &api.post(
                &format!("/cgi-bin/menu/create?access_token={t}&agentid=7"),
                menu.clone()
            )
            .await?
        ),
        301002
    );
    assert_eq!(
        errcode(
            &api.post(
                &format!("/cgi-bin/menu/create?access_token={t}&agentid=1000002"),
                menu.clone()
            )
            .await?
        ),
        0
    );
    // WeCom sub-button names: 40 bytes, and no OA-only types.
    let long = json!({"button": [{"name": "m", "sub_button": [click(&"x".repeat(41))]}]});
    assert_eq!(
        errcode(
            &api.post(
                &format!("/cgi-bin/menu/create?access_token={t}&agentid=1000002"),
                long
            )
            .await?
        ),
        40025
    );
    let got = api
        .get(&format!(
            "/cgi-bin/menu/get?access_token={t}&agentid=1000002"
        ))
        .await?;
    assert_eq!(got["button"], menu["button"]);
    assert_eq!(
        sim.menu("ww_corp_menus:1000002"),
        Some(menu["button"].clone())
    );
    Ok(())
}

fn multipart(filename: &str, len: usize) -> (String, Vec<u8>) {
    let b = "simBoundary";
    let mut body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"{filename}\"\r\n\r\n"
    )
    .into_bytes();
    body.extend(std::iter::repeat_n(9u8, len));
    body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={b}"), body)
}

#[tokio::test]
async fn temporary_media_limits_and_ownership() -> Result<()> {
    let sim = start(seed()).await;
    let api = Api::new(&sim);
    let t = oa_token(&api).await?;
    let http = client();
    let upload = |kind: &str, name: &str, len: usize| {
        let (ct, body) = multipart(name, len);
        http.post(format!(
            "{}/cgi-bin/media/upload?access_token={t}&type={kind}",
            sim.base_url()
        ))
        .header("content-type", ct)
        .body(body)
        .send()
    };
    let code = |v: Value| errcode(&v);
    assert_eq!(
        code(upload("sticker", "a.jpg", 10).await?.json().await?),
        40004
    );
    assert_eq!(
        code(upload("image", "a.exe", 10).await?.json().await?),
        40005
    );
    assert_eq!(
        code(upload("thumb", "a.jpg", 65 * 1024).await?.json().await?),
        40006
    );
    assert_eq!(
        code(
            upload("voice", "a.mp3", 3 * 1024 * 1024)
                .await?
                .json()
                .await?
        ),
        40006
    );
    let ok: Value = upload("image", "cat.png", 1000).await?.json().await?;
    let id = str_field(&ok, "media_id")?;
    assert_eq!(ok["type"], "image");
    let got = http
        .get(format!(
            "{}/cgi-bin/media/get?access_token={t}&media_id={id}",
            sim.base_url()
        ))
        .send()
        .await?;
    assert_eq!(got.headers()["content-type"], "image/png");
    assert!(
        got.headers()["content-disposition"]
            .to_str()?
            .contains("cat.png")
    );
    assert_eq!(got.bytes().await?.len(), 1000);
    assert_eq!(
        errcode(
            &api.get(&format!(
                "/cgi-bin/media/get?access_token={t}&media_id=nope"
            ))
            .await?
        ),
        40007
    );
    // Three days later it is gone.
    sim.advance(std::time::Duration::from_secs(3 * 86_400 + 1));
    let t = oa_token(&api).await?;
    assert_eq!(
        errcode(
            &api.get(&format!(
                "/cgi-bin/media/get?access_token={t}&media_id={id}"
            ))
            .await?
        ),
        40007
    );
    Ok(())
}

#[tokio::test]
async fn component_web_oauth_codes_are_single_use() -> Result<()> {
    let sim = start(seed()).await;
    let api = Api::new(&sim);
    let ct = api.component_token(&sim, COMPONENT).await?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let page = |scope: &str| {
        format!(
            "{}/connect/oauth2/authorize?appid={AUTHORIZER}&redirect_uri=https%3A%2F%2Fbiz.example%2Fcb&response_type=code&scope={scope}&state=s1&component_appid={COMPONENT}",
            sim.base_url()
        )
    };
    let r = http.get(page("snsapi_userinfo")).send().await?;
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str()?.to_owned();
    assert!(
        location.starts_with("https://biz.example/cb?code=") && location.ends_with("&state=s1"),
        "{location}"
    );
    let code = query_map(location.split_once('?').unwrap().1)["code"].clone();
    let exchange = |code: &str, token: &str| {
        format!(
            "/sns/oauth2/component/access_token?appid={AUTHORIZER}&code={code}&grant_type=authorization_code&component_appid={COMPONENT}&component_access_token={token}"
        )
    };
    assert_eq!(errcode(&api.get(&exchange(&code, "forged")).await?), 40001);
    let user = api.get(&exchange(&code, &ct)).await?;
    assert_eq!(user["openid"], "o_fan");
    assert_eq!(user["scope"], "snsapi_userinfo");
    assert!(user["unionid"].is_string());
    assert_eq!(errcode(&api.get(&exchange(&code, &ct)).await?), 40163);
    assert_eq!(errcode(&api.get(&exchange("unknown", &ct)).await?), 40029);
    let token = str_field(&user, "access_token")?;
    let info = api
        .get(&format!(
            "/sns/userinfo?access_token={token}&openid=o_fan&lang=zh_CN"
        ))
        .await?;
    assert_eq!(info["openid"], "o_fan");
    assert_eq!(
        errcode(
            &api.get(&format!(
                "/sns/userinfo?access_token={token}&openid=o_other"
            ))
            .await?
        ),
        40003
    );
    // snsapi_base gives no profile.
    let r = http.get(page("snsapi_base")).send().await?;
    let location = r.headers()["location"].to_str()?.to_owned();
    let code = query_map(location.split_once('?').unwrap().1)["code"].clone();
    let base = api.get(&exchange(&code, &ct)).await?;
    assert!(base.get("unionid").is_none());
    let token = str_field(&base, "access_token")?;
    assert_eq!(
        errcode(
            &api.get(&format!("/sns/userinfo?access_token={token}&openid=o_fan"))
                .await?
        ),
        48001
    );
    // The page refuses an account that has not authorized the component.
    let r = http
        .get(page("snsapi_base").replace(AUTHORIZER, OA))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    Ok(())
}
