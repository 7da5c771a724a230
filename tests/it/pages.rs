//! The authorization pages are not a free drain of the platform's WeChat quota: page views
//! share a pre-auth code (retired once used), refused or used authorization codes are answered
//! from memory, both pages are rate-limited per client address and per tenant, and the
//! redirect is built from the configured base URL, whatever forwarded headers say.
//!
//! Upstream calls are counted in the simulator's call record.

use std::collections::HashSet;

use futures::future::join_all;
use serde_json::json;

use wxhub_tests::*;

const PRE_AUTH: &str = "/cgi-bin/component/api_create_preauthcode";
const QUERY_AUTH: &str = "/cgi-bin/component/api_query_auth";
/// Every WeChat API a page view can cause.
const PAGE_APIS: [&str; 4] = [
    PRE_AUTH,
    QUERY_AUTH,
    "/cgi-bin/component/api_component_token",
    "/cgi-bin/component/api_get_authorizer_info",
];

/// Limits no test below reaches.
const GENEROUS: [(&str, &str); 4] = [
    (
        "WXHUB_GATEWAY__AUTHORIZE_LIMIT_PER_ADDRESS__COUNT",
        "100000",
    ),
    (
        "WXHUB_GATEWAY__AUTHORIZE_LIMIT_PER_ADDRESS__BURST",
        "100000",
    ),
    ("WXHUB_GATEWAY__AUTHORIZE_LIMIT_PER_TENANT__COUNT", "100000"),
    ("WXHUB_GATEWAY__AUTHORIZE_LIMIT_PER_TENANT__BURST", "100000"),
];

/// A stack whose components have tickets and whose authorizers are imported; acme's callback
/// URLs point at no gateway (a test that needs one sets them).
async fn start(label: &str) -> Stack {
    let setup = Setup {
        tickets: true,
        wire_callbacks: false,
        ..Setup::new(label)
    };
    Stack::start_with(setup).await.unwrap()
}

fn page_calls(stack: &Stack) -> usize {
    PAGE_APIS.iter().map(|p| stack.calls(p, None)).sum()
}

fn browser(follow_redirects: bool) -> reqwest::Client {
    let policy = if follow_redirects {
        reqwest::redirect::Policy::limited(5)
    } else {
        reqwest::redirect::Policy::none()
    };
    reqwest::Client::builder().redirect(policy).build().unwrap()
}

/// The authorize page of `tenant`: its PC link (asserting a 200).
async fn pc_link(http: &reqwest::Client, gw: &Gateway, tenant: &str) -> String {
    let res = http
        .get(format!("{}/wx/{tenant}/authorize", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    href(&res.text().await.unwrap(), "pc")
}

async fn authorized_page(http: &reqwest::Client, gw: &Gateway, code: &str) -> (u16, String) {
    let res = http
        .get(format!("{}/wx/{TENANT}/authorized", gw.url))
        .query(&[("auth_code", code)])
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn page_views_share_one_pre_auth_code_until_the_redirect_reports_it_used() {
    // No authorization-event URL: only the redirect can tell that the code was used.
    let stack = start("tc-pages-share").await;
    let gw = stack.gateway(GATEWAY_KEY, &GENEROUS).await.unwrap();
    let http = browser(true);
    let (calls, mints) = (page_calls(&stack), stack.calls(PRE_AUTH, None));

    // 200 views, 20 at a time: one pre-auth code, one WeChat call.
    let mut codes = HashSet::new();
    let mut link = String::new();
    for _ in 0..10 {
        for pc in join_all((0..20).map(|_| pc_link(&http, &gw, TENANT))).await {
            codes.insert(param(&pc, "pre_auth_code"));
            link = pc;
        }
    }
    assert_eq!(codes.len(), 1, "every view shares the code");
    assert_eq!(stack.calls(PRE_AUTH, None) - mints, 1);
    let spent = page_calls(&stack) - calls;
    assert!(spent <= 2, "200 page views cost {spent} WeChat calls");
    let redirect = param(&link, "redirect_uri");
    assert!(
        redirect.starts_with(&format!("{}/wx/{TENANT}/authorized?wxhub_pac=", gw.url)),
        "{redirect}"
    );

    // An admin authorizes with it; the redirect's /authorized exchanges and retires it.
    let done = http
        .get(format!("{link}&authorizer_appid={FRESH}"))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    assert!(done.url().query().unwrap().contains("wxhub_pac="));
    assert!(done.text().await.unwrap().contains(FRESH));

    // The used code is not served again: the next view mints a new one, once.
    let used = codes.into_iter().next().unwrap();
    let mut fresh = HashSet::new();
    for pc in join_all((0..50).map(|_| pc_link(&http, &gw, TENANT))).await {
        fresh.insert(param(&pc, "pre_auth_code"));
    }
    assert_eq!(fresh.len(), 1);
    assert!(!fresh.contains(&used));
    assert_eq!(stack.calls(PRE_AUTH, None) - mints, 2);
    // WeChat (the sim) refuses the used code, as it would.
    let again = http
        .get(format!("{link}&authorizer_appid={AUTH1}"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 400);
    assert!(again.text().await.unwrap().contains("already used"));

    gw.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_authorized_notice_retires_the_pre_auth_code_it_used() {
    let stack = start("tc-pages-notice").await;
    let gw = stack.gateway(GATEWAY_KEY, &GENEROUS).await.unwrap();
    stack
        .sim
        .set_component_urls(
            COMPONENT,
            Some(format!("{}/wx/{TENANT}/component", gw.url)),
            None,
        )
        .unwrap();
    let http = browser(false);
    let mints = stack.calls(PRE_AUTH, None);
    let link = pc_link(&http, &gw, TENANT).await;
    let used = param(&link, "pre_auth_code");
    assert_eq!(
        param(&pc_link(&http, &gw, TENANT).await, "pre_auth_code"),
        used
    );
    assert_eq!(stack.calls(PRE_AUTH, None) - mints, 1);

    // The browser never comes back (the redirect is not followed): WeChat's `authorized`
    // notice, through the gateway and RabbitMQ, is what retires the code.
    let res = http
        .get(format!("{link}&authorizer_appid={FRESH}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    stack
        .wait_for(|| async { param(&pc_link(&http, &gw, TENANT).await, "pre_auth_code") != used })
        .await;
    assert_eq!(stack.calls(PRE_AUTH, None) - mints, 2);
    stack
        .wait_for(|| async { stack.auths.get(TENANT, FRESH).await.unwrap().is_some() })
        .await;

    gw.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_and_used_auth_codes_cost_one_wechat_call_each() {
    let stack = start("tc-pages-codes").await;
    let gw = stack.gateway(GATEWAY_KEY, &GENEROUS).await.unwrap();
    let http = browser(true);

    // A code WeChat does not know: asked once, then answered from memory.
    let start = stack.calls(QUERY_AUTH, None);
    for _ in 0..3 {
        let (status, page) = authorized_page(&http, &gw, "queryauthcode@@@forged").await;
        assert_eq!(status, 409);
        assert!(page.contains("61009"), "{page}");
    }
    assert_eq!(stack.calls(QUERY_AUTH, None) - start, 1);

    // A code exchanged elsewhere (straight at WeChat): the same.
    let elsewhere = stack
        .sim
        .authorize(COMPONENT, FRESH, false)
        .await
        .unwrap()
        .authorized
        .auth_code;
    let token = stack
        .sim
        .component(COMPONENT)
        .unwrap()
        .access_token
        .unwrap();
    let direct: serde_json::Value = http
        .post(format!(
            "{}{QUERY_AUTH}?component_access_token={token}",
            stack.sim.base_url()
        ))
        .json(&json!({"component_appid": COMPONENT, "authorization_code": elsewhere}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(direct["authorization_info"]["authorizer_appid"], FRESH);
    let start = stack.calls(QUERY_AUTH, None);
    for _ in 0..3 {
        assert_eq!(authorized_page(&http, &gw, &elsewhere).await.0, 409);
    }
    assert_eq!(stack.calls(QUERY_AUTH, None) - start, 1);

    // A code exchanged by the page: viewing it again asks WeChat nothing.
    let code = stack
        .sim
        .authorize(COMPONENT, AUTH2, false)
        .await
        .unwrap()
        .authorized
        .auth_code;
    let (status, page) = authorized_page(&http, &gw, &code).await;
    assert_eq!(status, 200, "{page}");
    let start = stack.calls(QUERY_AUTH, None);
    for _ in 0..3 {
        let (status, page) = authorized_page(&http, &gw, &code).await;
        assert_eq!(status, 409);
        assert!(page.contains("already used"), "{page}");
    }
    assert_eq!(stack.calls(QUERY_AUTH, None), start);

    gw.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pages_are_rate_limited_per_address_and_per_tenant() {
    let stack = start("tc-pages-limits").await;
    let gw = stack
        .gateway(
            OPS_KEY,
            &[
                ("WXHUB_GATEWAY__TRUSTED_PROXIES", "[127.0.0.1]"),
                ("WXHUB_GATEWAY__AUTHORIZE_LIMIT_PER_ADDRESS__COUNT", "1"),
                (
                    "WXHUB_GATEWAY__AUTHORIZE_LIMIT_PER_ADDRESS__PERIOD_MS",
                    "3600000",
                ),
                ("WXHUB_GATEWAY__AUTHORIZE_LIMIT_PER_ADDRESS__BURST", "3"),
                ("WXHUB_GATEWAY__AUTHORIZE_LIMIT_PER_TENANT__COUNT", "1"),
                (
                    "WXHUB_GATEWAY__AUTHORIZE_LIMIT_PER_TENANT__PERIOD_MS",
                    "3600000",
                ),
                ("WXHUB_GATEWAY__AUTHORIZE_LIMIT_PER_TENANT__BURST", "8"),
            ],
        )
        .await
        .unwrap();
    let http = browser(true);
    // A browser behind the trusted proxy (the test itself, on 127.0.0.1).
    let view = |tenant: &'static str, client: &'static str, page: &'static str| {
        let (http, url) = (http.clone(), gw.url.clone());
        async move {
            let res = http
                .get(format!(
                    "{url}/wx/{tenant}/{page}?auth_code=queryauthcode@@@x"
                ))
                .header("x-forwarded-for", format!("6.6.6.6, {client}"))
                .send()
                .await
                .unwrap();
            let retry_after = res
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            (
                res.status().as_u16(),
                retry_after,
                res.text().await.unwrap(),
            )
        }
    };

    for _ in 0..3 {
        assert_eq!(view(TENANT, "198.51.100.1", "authorize").await.0, 200);
    }
    let calls = page_calls(&stack);
    // The fourth view from that address, on either page, gets the 429 page.
    for page in ["authorize", "authorized"] {
        let (status, retry_after, body) = view(TENANT, "198.51.100.1", page).await;
        assert_eq!(status, 429, "{page}: {body}");
        let retry_after = retry_after.expect("Retry-After");
        assert!((3000..=3600).contains(&retry_after), "{retry_after}");
        assert!(
            body.contains("Too many requests from your address"),
            "{body}"
        );
        assert!(body.starts_with("<!doctype html>"), "{body}");
    }
    // Other addresses have their own budgets, until the tenant's is spent (3 + 3 + 2 = 8).
    for _ in 0..3 {
        assert_eq!(view(TENANT, "198.51.100.2", "authorize").await.0, 200);
    }
    for _ in 0..2 {
        assert_eq!(view(TENANT, "198.51.100.3", "authorize").await.0, 200);
    }
    for client in ["198.51.100.3", "198.51.100.4", "2001:db8::1"] {
        let (status, retry_after, body) = view(TENANT, client, "authorize").await;
        assert_eq!(status, 429, "{client}");
        assert!(retry_after.is_some());
        assert!(body.contains("authorization pages are busy"), "{body}");
    }
    // The refusals asked token-control (and WeChat) nothing.
    assert_eq!(page_calls(&stack), calls);
    // Another tenant is not affected.
    assert_eq!(view(BETA, "198.51.100.4", "authorize").await.0, 200);

    gw.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_headers_do_not_change_the_redirect() {
    let stack = start("tc-pages-forward").await;
    let forged = |req: reqwest::RequestBuilder, client: &str| {
        req.header("x-forwarded-host", "evil.example")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-for", client)
    };
    let http = browser(true);

    // No public base URL and no trusted proxy: the forwarded headers of a direct client are
    // ignored, for the redirect and for the address it is counted under.
    let direct = stack
        .gateway(
            GATEWAY_KEY,
            &[
                ("WXHUB_GATEWAY__PUBLIC_BASE_URL", ""),
                ("WXHUB_GATEWAY__AUTHORIZE_LIMIT_PER_ADDRESS__COUNT", "1"),
                (
                    "WXHUB_GATEWAY__AUTHORIZE_LIMIT_PER_ADDRESS__PERIOD_MS",
                    "3600000",
                ),
                ("WXHUB_GATEWAY__AUTHORIZE_LIMIT_PER_ADDRESS__BURST", "2"),
            ],
        )
        .await
        .unwrap();
    let url = format!("{}/wx/{TENANT}/authorize", direct.url);
    for client in ["198.51.100.1", "198.51.100.2"] {
        let res = forged(http.get(&url), client).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let redirect = param(&href(&res.text().await.unwrap(), "pc"), "redirect_uri");
        assert!(
            redirect.starts_with(&format!("{}/wx/{TENANT}/authorized?wxhub_pac=", direct.url)),
            "{redirect}"
        );
    }
    let third = forged(http.get(&url), "198.51.100.3").send().await.unwrap();
    assert_eq!(third.status(), 429, "every view counts under the peer");

    // A trusted proxy, and a public base URL: the base URL wins over what the proxy forwards.
    let proxied = stack
        .gateway(
            GATEWAY_KEY,
            &[
                (
                    "WXHUB_GATEWAY__PUBLIC_BASE_URL",
                    "https://wx.example.com/hub/",
                ),
                ("WXHUB_GATEWAY__TRUSTED_PROXIES", "[127.0.0.1]"),
            ],
        )
        .await
        .unwrap();
    let res = forged(
        http.get(format!("{}/wx/{TENANT}/authorize", proxied.url)),
        "198.51.100.1",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let redirect = param(&href(&res.text().await.unwrap(), "pc"), "redirect_uri");
    assert!(
        redirect.starts_with(&format!(
            "https://wx.example.com/hub/wx/{TENANT}/authorized?wxhub_pac="
        )),
        "{redirect}"
    );

    direct.stop().await;
    proxied.stop().await;
    stack.stop().await;
}
