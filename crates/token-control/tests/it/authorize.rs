//! The authorization flow end to end, driven like a browser would: the gateway's authorize
//! page → the sim's login page authorizes an account (and pushes `authorized` to the gateway)
//! → redirect to the gateway's /authorized → code exchanged through token-control →
//! authorizer stored → token served.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wxhub_proto::token::v1::GetAccessTokenRequest;
use wxhub_runtime::config::Source;

use crate::harness::*;

/// The `href` of the element with `id`, unescaped.
fn href(html: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\" href=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} link in {html}"))
        + marker.len();
    let end = start + html[start..].find('"').unwrap();
    html[start..end].replace("&amp;", "&")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn authorize_page_to_token_served() {
    // The gateway's address must be known before the sim is seeded with it.
    let gw_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = format!("http://{}", gw_listener.local_addr().unwrap());
    let mut setup = Setup::new("tc-authflow", 1);
    setup.acme_event_url = Some(format!("{gw}/wx/{ACME}/component"));
    // The ticket is pushed once the gateway is up (through it, like WeChat would).
    setup.tickets = false;
    setup.wait_reconcile = false;
    let env = Env::start(setup).await;

    let config = wxhub_gateway::GatewayConfig::load(&Source {
        file: None,
        env: [
            ("WXHUB_NAMESPACE", env.ns.name().to_owned()),
            ("WXHUB_REDIS__URL", wxhub_testkit::redis_url()),
            ("WXHUB_AMQP__URL", wxhub_testkit::amqp_url()),
            ("WXHUB_AMQP__DELIVERY_LIMIT", "5".to_owned()),
            (
                "WXHUB_TOKEN_CONTROL__ENDPOINT",
                format!("http://{}", env.replicas[0].addr),
            ),
            ("WXHUB_CLIENT__API_KEY", KEY_ACME.to_owned()),
            ("WXHUB_SHUTDOWN__GRACE_MS", "2000".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    })
    .unwrap();
    // The sim's clock: its pushes carry virtual time in CreateTime.
    let sim_clock = env.sim.clock();
    let gateway = wxhub_gateway::Gateway::start_with(
        config,
        wxhub_gateway::Options {
            tenants: Some(env.tenants.clone()),
            clock: wxhub_runtime::FnClock::new(move || sim_clock.now_ms()),
        },
    )
    .unwrap();
    let stop = CancellationToken::new();
    let gw_task = tokio::spawn(gateway.serve(gw_listener, stop.clone().cancelled_owned()));

    let http = reqwest::Client::new();
    // Ready means RabbitMQ is connected: WeChat's pushes will be stored.
    env.wait_for(|| async {
        http.get(format!("{gw}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let ticket = env.give_ticket(ACME_APPID, ACME).await;
    assert!(ticket.starts_with("ticket@@@"));
    // 1. The authorization start page, with both links.
    let res = http
        .get(format!("{gw}/wx/{ACME}/authorize"))
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
            env.sim.base_url()
        )),
        "{pc}"
    );
    assert!(pc.contains(&format!("component_appid={ACME_APPID}")));
    let redirect =
        url::form_urlencoded::byte_serialize(format!("{gw}/wx/{ACME}/authorized").as_bytes())
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
        .get(format!("{}{pick}", env.sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    assert!(
        done.url()
            .path()
            .ends_with(&format!("/wx/{ACME}/authorized"))
    );
    let page = done.text().await.unwrap();
    assert!(page.contains("Fresh Bakery"), "{page}");
    assert!(page.contains(FRESH));

    // 4. Stored, with the refresh token WeChat issued, and a token is served.
    let view = env.sim.authorizer(ACME_APPID, FRESH).unwrap();
    let rec = env.auths.get(ACME, FRESH).await.unwrap().unwrap();
    assert_eq!(rec.refresh_token.unwrap().expose(), view.refresh_token);
    let mut c = env.client(0).await;
    let token = c
        .get_access_token(req(
            GetAccessTokenRequest {
                tenant: ACME.into(),
                appid: FRESH.into(),
                min_remaining_secs: 0,
            },
            KEY_ACME,
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
    env.wait_for(|| async {
        env.sim
            .pushes()
            .iter()
            .any(|p| format!("{p:?}").contains("authorized"))
    })
    .await;
    let marker = format!("{}consumed:", env.store.keys(ACME).prefix());
    env.wait_for(|| async {
        !env.store
            .scan_keys(&format!("{marker}*"))
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    assert_eq!(env.calls("/cgi-bin/component/api_query_auth", None), 1);

    // Error pages: a used code, no code, an unknown tenant.
    let used = http
        .get(format!(
            "{gw}/wx/{ACME}/authorized?auth_code=queryauthcode@@@nope"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(used.status(), 409);
    assert!(used.text().await.unwrap().contains("authorization code"));
    let none = http
        .get(format!("{gw}/wx/{ACME}/authorized"))
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

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), gw_task).await;
    env.shutdown().await;
}
