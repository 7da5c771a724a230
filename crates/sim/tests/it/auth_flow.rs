//! The authorization flow through the login-page stand-ins, and revocation.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use wxhub_crypto::Crypt;
use wxhub_message::{ComponentNotice, Inbound, Limits, parse, parse_envelope};
use wxhub_sim::{AccountKind, Seed};

use crate::common::*;

const C: &str = "wxcomp_flow";
const OA: &str = "wxoa_flow";
const MP: &str = "wxmp_flow";

fn notice(cap: &Captured) -> Result<ComponentNotice> {
    let q = query_map(&cap.query);
    let env = parse_envelope(cap.body.as_bytes(), &Limits::default())?;
    let c = Crypt::from_parts(TOKEN, KEY, C)?;
    let plain = c.verify_and_decrypt(
        &q["msg_signature"],
        &q["timestamp"],
        &q["nonce"],
        env.encrypt().context("Encrypt")?,
    )?;
    match parse(plain.message_str()?)? {
        Inbound::Component(n) => Ok(n),
        other => anyhow::bail!("not a notice: {other:?}"),
    }
}

fn find(got: &[Captured], pred: impl Fn(&ComponentNotice) -> bool) -> Result<ComponentNotice> {
    got.iter()
        .filter_map(|c| notice(c).ok())
        .find(|n| pred(n))
        .context("no such notice was pushed")
}

async fn pre_auth_code(api: &Api, token: &str) -> Result<String> {
    let r = api
        .post(
            &format!("/cgi-bin/component/api_create_preauthcode?component_access_token={token}"),
            json!({"component_appid": C}),
        )
        .await?;
    str_field(&r, "pre_auth_code")
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn login_page_authorizes_redirects_and_pushes() -> Result<()> {
    let rx = Receiver::start(Receiver::success()).await;
    let sim = start(Seed {
        components: vec![component(
            C,
            Some(format!("{}/wx/t/component", rx.url)),
            None,
        )],
        accounts: vec![
            account(OA, "gh_flow_oa", AccountKind::OfficialAccount, &[]),
            account(MP, "gh_flow_mp", AccountKind::MiniProgram, &[]),
        ],
        ..Default::default()
    })
    .await;
    let api = Api::new(&sim);
    let token = api.component_token(&sim, C).await?;
    let code = pre_auth_code(&api, &token).await?;
    let redirect = "https://operator.example/wx/t/authorized?state=1";
    let page = format!(
        "{}/cgi-bin/componentloginpage?component_appid={C}&pre_auth_code={}&redirect_uri={}",
        api.base,
        enc(&code),
        enc(redirect)
    );

    // Without a choice: a page listing the accounts, filtered by auth_type.
    let html = api.http.get(&page).send().await?.text().await?;
    assert!(html.contains(OA) && html.contains(MP), "{html}");
    let only_mp = api
        .http
        .get(format!("{page}&auth_type=2"))
        .send()
        .await?
        .text()
        .await?;
    assert!(only_mp.contains(MP) && !only_mp.contains(OA));

    // Choosing an account authorizes it and redirects with the code.
    let resp = api
        .http
        .get(format!("{page}&authorizer_appid={OA}"))
        .send()
        .await?;
    assert_eq!(resp.status(), 302);
    let location = resp
        .headers()
        .get("location")
        .context("location")?
        .to_str()?
        .to_owned();
    let url = url::Url::parse(&location)?;
    assert!(location.starts_with("https://operator.example/wx/t/authorized?state=1&auth_code="));
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(q["expires_in"], "600");
    let auth_code = q["auth_code"].clone();

    let got = rx.wait_for(2).await;
    let ComponentNotice::Authorized(a) =
        find(&got, |n| matches!(n, ComponentNotice::Authorized(_)))?
    else {
        anyhow::bail!("expected authorized")
    };
    assert_eq!(
        (a.authorizer_appid.as_str(), a.authorization_code.as_str()),
        (OA, auth_code.as_str())
    );
    assert_eq!(a.pre_auth_code, code);
    assert!(
        a.authorization_code_expired_time
            .is_some_and(|t| t > sim.clock().now_secs())
    );

    let r = api
        .post(
            &format!("/cgi-bin/component/api_query_auth?component_access_token={token}"),
            json!({"component_appid": C, "authorization_code": auth_code}),
        )
        .await?;
    assert_eq!(r["authorization_info"]["authorizer_appid"], OA);

    // A pre-auth code is single-use.
    let again = api
        .http
        .get(format!("{page}&authorizer_appid={MP}"))
        .send()
        .await?;
    assert_eq!(again.status(), 400);
    assert!(again.text().await?.contains("already used"));

    // Mobile page with biz_appid: re-authorization gives updateauthorized.
    let code = pre_auth_code(&api, &token).await?;
    let mobile = format!(
        "{}/safe/bindcomponent?action=bindcomponent&no_scan=1&component_appid={C}&pre_auth_code={}&redirect_uri={}&biz_appid={OA}",
        api.base,
        enc(&code),
        enc(redirect)
    );
    let resp = api.http.get(&mobile).send().await?;
    assert_eq!(resp.status(), 302);
    let got = rx.wait_for(3).await;
    find(&got, |n| matches!(n, ComponentNotice::UpdateAuthorized(_)))?;

    // Revocation pushes unauthorized.
    let report = sim.revoke(C, OA).await?.context("push")?;
    assert!(report.delivered);
    let got = rx.wait_for(4).await;
    let ComponentNotice::Unauthorized {
        authorizer_appid, ..
    } = find(&got, |n| matches!(n, ComponentNotice::Unauthorized { .. }))?
    else {
        anyhow::bail!("expected unauthorized")
    };
    assert_eq!(authorizer_appid, OA);
    Ok(())
}

#[tokio::test]
async fn login_page_refuses_bad_requests() -> Result<()> {
    let sim = start(Seed {
        components: vec![
            component(C, None, None),
            component("wxcomp_other", None, None),
        ],
        accounts: vec![
            account(OA, "gh_flow_oa", AccountKind::OfficialAccount, &[]),
            account(MP, "gh_flow_mp", AccountKind::MiniProgram, &[]),
        ],
        ..Default::default()
    })
    .await;
    let api = Api::new(&sim);
    let token = api.component_token(&sim, C).await?;
    let code = enc(&pre_auth_code(&api, &token).await?);
    let r = enc("https://operator.example/done");
    let base = format!("{}/cgi-bin/componentloginpage", api.base);
    let cases = [
        (
            format!(
                "{base}?component_appid={C}&pre_auth_code={code}&redirect_uri={r}&auth_type=1&biz_appid={OA}"
            ),
            "mutually exclusive",
        ),
        (
            format!("{base}?component_appid={C}&pre_auth_code=preauthcode@@@nope&redirect_uri={r}"),
            "invalid pre_auth_code",
        ),
        (
            format!("{base}?component_appid=wxcomp_other&pre_auth_code={code}&redirect_uri={r}"),
            "invalid pre_auth_code",
        ),
        (
            format!("{base}?component_appid={C}&pre_auth_code={code}"),
            "redirect_uri",
        ),
        (
            format!(
                "{base}?component_appid={C}&pre_auth_code={code}&redirect_uri={r}&auth_type=1&authorizer_appid={MP}"
            ),
            "auth_type",
        ),
        (
            format!("{base}?component_appid={C}&pre_auth_code={code}&redirect_uri={r}&auth_type=9"),
            "auth_type",
        ),
        (
            format!(
                "{}/safe/bindcomponent?component_appid={C}&pre_auth_code={code}&redirect_uri={r}&auth_type=3",
                api.base
            ),
            "bindcomponent",
        ),
    ];
    for (url, reason) in cases {
        let resp = api.http.get(&url).send().await?;
        assert_eq!(resp.status(), 400, "{url}");
        let text = resp.text().await?;
        assert!(text.contains(reason), "{url}: {text}");
    }
    // None of the refusals consumed the code; it still expires on the virtual clock.
    sim.advance(Duration::from_secs(601));
    let resp = api
        .http
        .get(format!(
            "{base}?component_appid={C}&pre_auth_code={code}&redirect_uri={r}&authorizer_appid={OA}"
        ))
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await?.contains("expired"));
    Ok(())
}
