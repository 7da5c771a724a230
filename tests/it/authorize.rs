//! The authorization flow end to end, driven like a browser would: the gateway's authorize
//! page → the sim's login page authorizes an account (and pushes `authorized` to the gateway)
//! → redirect to the gateway's /authorized → code exchanged through token-control →
//! authorizer stored → token served.

use wxhub_proto::token::v1::GetAccessTokenRequest;

use wxhub_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn authorize_page_to_token_served() {
    // The ticket is pushed once the gateway is up (through it, like WeChat would).
    let setup = Setup {
        wire_callbacks: false,
        ..Setup::new("tc-authflow")
    };
    let stack = Stack::start_with(setup).await.unwrap();
    let gateway = stack.gateway(GATEWAY_KEY, &[]).await.unwrap();
    let gw = gateway.url.clone();
    stack
        .sim
        .set_component_urls(COMPONENT, Some(format!("{gw}/wx/{TENANT}/component")), None)
        .unwrap();
    let http = reqwest::Client::new();
    let ticket = stack.give_ticket(COMPONENT, TENANT).await.unwrap();
    assert!(ticket.starts_with("ticket@@@"));
    // 1. The authorization start page, with both links.
    let res = http
        .get(format!("{gw}/wx/{TENANT}/authorize"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let html = res.text().await.unwrap();
    let pc = href(&html, "pc");
    let mobile = href(&html, "mobile");
    assert!(
        pc.starts_with(&format!(
            "{}/cgi-bin/componentloginpage?",
            stack.sim.base_url()
        )),
        "{pc}"
    );
    assert!(pc.contains(&format!("component_appid={COMPONENT}")));
    let redirect =
        url::form_urlencoded::byte_serialize(format!("{gw}/wx/{TENANT}/authorized").as_bytes())
            .collect::<String>();
    assert!(pc.contains(&format!("redirect_uri={redirect}")), "{pc}");
    assert!(
        mobile.contains("/safe/bindcomponent?action=bindcomponent&no_scan=1"),
        "{mobile}"
    );
    assert!(mobile.ends_with("#wechat_redirect"));

    // 2. The (simulated) WeChat login page lists the accounts; the admin picks one.
    let listing = http.get(&pc).send().await.unwrap().text().await.unwrap();
    let pick = listing
        .split("href=\"")
        .skip(1)
        .map(|s| s[..s.find('"').unwrap()].replace("&amp;", "&"))
        .find(|l| l.contains(FRESH))
        .unwrap_or_else(|| panic!("no link for {FRESH} in {listing}"));
    // 3. WeChat authorizes, pushes `authorized` to the gateway, and redirects the browser
    //    to /authorized, which exchanges the code through token-control.
    let done = http
        .get(format!("{}{pick}", stack.sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    assert!(
        done.url()
            .path()
            .ends_with(&format!("/wx/{TENANT}/authorized"))
    );
    let page = done.text().await.unwrap();
    assert!(page.contains("Fresh Bakery"), "{page}");
    assert!(page.contains(FRESH));

    // 4. Stored, with the refresh token WeChat issued, and a token is served.
    let view = stack.sim.authorizer(COMPONENT, FRESH).unwrap();
    let rec = stack.auths.get(TENANT, FRESH).await.unwrap().unwrap();
    assert_eq!(rec.refresh_token.unwrap().expose(), view.refresh_token);
    let mut c = stack.token_client().await;
    let token = c
        .get_access_token(req(
            GetAccessTokenRequest {
                tenant: TENANT.into(),
                appid: FRESH.into(),
                min_remaining_secs: 0,
            },
            GATEWAY_KEY,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        Some(token.access_token.as_str()),
        view.access_token.as_deref()
    );

    // 5. The pushed `authorized` notice reached token-control through the gateway and
    //    RabbitMQ; it did not exchange the (single-use) code a second time.
    stack
        .wait_for(|| async {
            stack
                .sim
                .pushes()
                .iter()
                .any(|p| format!("{p:?}").contains("authorized"))
        })
        .await;
    let marker = format!("{}consumed:", stack.store.keys(TENANT).prefix());
    stack
        .wait_for(|| async {
            !stack
                .store
                .scan_keys(&format!("{marker}*"))
                .await
                .unwrap()
                .is_empty()
        })
        .await;
    assert_eq!(stack.calls("/cgi-bin/component/api_query_auth", None), 1);

    // Error pages: a used code, no code, an unknown tenant.
    let used = http
        .get(format!(
            "{gw}/wx/{TENANT}/authorized?auth_code=queryauthcode@@@nope"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(used.status(), 409);
    assert!(used.text().await.unwrap().contains("authorization code"));
    let none = http
        .get(format!("{gw}/wx/{TENANT}/authorized"))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 400);
    let unknown = http
        .get(format!("{gw}/wx/nobody/authorize"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    gateway.stop().await;
    stack.stop().await;
}
