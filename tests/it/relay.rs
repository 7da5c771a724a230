//! The relay end to end against the sim: menus for an authorizer, an Official Account and a
//! WeCom app; a token rejection healed once under load; the retry rules; media streamed both
//! ways; web OAuth with forged and reused states; tenant isolation; every bad input refused
//! with nothing forwarded.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wxhub_sim::{CallFilter, FaultSpec};
use wxhub_tests::*;

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    json: Value,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn errcode(&self) -> i64 {
        self.json
            .get("errcode")
            .and_then(Value::as_i64)
            .unwrap_or(0)
    }
}

async fn call(
    relay: &RelayHandle,
    key: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Answer {
    let mut r = http()
        .request(method, format!("{}{path}", relay.url))
        .bearer_auth(key);
    if let Some(b) = body {
        r = r.json(b);
    }
    let response = r.send().await.expect("relay answers");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body");
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        json,
    }
}

fn menu() -> Value {
    json!({"button": [
        {"type": "click", "name": "今日歌曲", "key": "V1001_TODAY_MUSIC"},
        {"name": "菜单", "sub_button": [
            {"type": "view", "name": "搜索", "url": "http://www.soso.com/"},
            {"type": "click", "name": "赞一下我们", "key": "V1001_GOOD"}
        ]}
    ]})
}

/// Calls of the sim's menu and media APIs (what must stay 0 when a call is refused).
fn forwarded(stack: &Stack) -> usize {
    [
        "/cgi-bin/menu/create",
        "/cgi-bin/menu/get",
        "/cgi-bin/menu/delete",
        "/cgi-bin/media/upload",
        "/cgi-bin/media/get",
        "/cgi-bin/token",
        "/sns/oauth2/component/access_token",
    ]
    .iter()
    .map(|p| stack.calls(p, None))
    .sum()
}

/// The relay's `/metrics` page.
async fn relay_metrics(relay: &RelayHandle) -> String {
    http()
        .get(format!("{}/metrics", relay.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The relay's `wxhub_relay_calls_in_progress`, as its `/metrics` says.
async fn calls_in_progress_gauge(relay: &RelayHandle) -> f64 {
    let metrics = relay_metrics(relay).await;
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(wxhub_relay::CALLS_IN_PROGRESS)?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {} in\n{metrics}", wxhub_relay::CALLS_IN_PROGRESS))
}

/// `GET …/cgi-bin/media/get?media_id=` of AUTH1 through `relay`, as CRM.
async fn media_get(
    client: &reqwest::Client,
    relay: &RelayHandle,
    media_id: &str,
) -> reqwest::Response {
    client
        .get(format!(
            "{}/v1/{TENANT}/{AUTH1}/cgi-bin/media/get?media_id={media_id}",
            relay.url
        ))
        .bearer_auth(CRM_KEY)
        .send()
        .await
        .unwrap()
}

/// The sim answers the next call of `path` 1.5 s late.
fn answer_slowly_once(stack: &Stack, path: &str) {
    stack
        .sim
        .add_fault(FaultSpec::latency(
            path,
            Duration::from_millis(1500),
            Some(1),
        ))
        .unwrap();
}

fn tickets(label: &str) -> Setup {
    Setup {
        tickets: true,
        ..Setup::new(label)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn menus_round_trip_for_an_authorizer_an_official_account_and_a_wecom_app() {
    let stack = Stack::start_with(tickets("relay-menus")).await.unwrap();
    let relay = stack.relay(&[]).await.unwrap();
    for (prefix, owner, wecom) in [
        (format!("/v1/{TENANT}/{AUTH1}"), AUTH1.to_owned(), false),
        (format!("/v1/{OA_TENANT}/-"), OA_APPID.to_owned(), false),
        (
            format!("/v1/{CORP_TENANT}/-"),
            format!("{CORPID}:{AGENT_ID}"),
            true,
        ),
    ] {
        let q = if wecom {
            format!("?agentid={AGENT_ID}")
        } else {
            String::new()
        };
        let none = call(
            &relay,
            CRM_KEY,
            Method::GET,
            &format!("{prefix}/cgi-bin/menu/get{q}"),
            None,
        )
        .await;
        assert_eq!(
            (none.status, none.errcode()),
            (StatusCode::OK, 46003),
            "{prefix}: {}",
            none.json
        );
        let created = call(
            &relay,
            CRM_KEY,
            Method::POST,
            &format!("{prefix}/cgi-bin/menu/create{q}"),
            Some(&menu()),
        )
        .await;
        assert_eq!(created.errcode(), 0, "{prefix}: {}", created.json);
        assert_eq!(created.header("x-wxhub-attempts"), "1");
        assert!(
            created
                .header("x-wxhub-token-age-secs")
                .parse::<u64>()
                .is_ok(),
            "{:?}",
            created.headers
        );
        let got = call(
            &relay,
            CRM_KEY,
            Method::GET,
            &format!("{prefix}/cgi-bin/menu/get{q}"),
            None,
        )
        .await;
        let buttons = if wecom {
            &got.json["button"]
        } else {
            &got.json["menu"]["button"]
        };
        assert_eq!(buttons, &menu()["button"], "{prefix}: {}", got.json);
        assert_eq!(stack.sim.menu(&owner), Some(menu()["button"].clone()));
        if !wecom {
            // Conditional menus: add, try, delete.
            let mut conditional = menu();
            conditional["matchrule"] = json!({"tag_id": "2"});
            let added = call(
                &relay,
                CRM_KEY,
                Method::POST,
                &format!("{prefix}/cgi-bin/menu/addconditional"),
                Some(&conditional),
            )
            .await;
            let menuid = added.json["menuid"].as_str().unwrap_or_default().to_owned();
            assert!(!menuid.is_empty(), "{}", added.json);
            let got = call(
                &relay,
                CRM_KEY,
                Method::GET,
                &format!("{prefix}/cgi-bin/menu/get"),
                None,
            )
            .await;
            assert_eq!(
                got.json["conditionalmenu"][0]["menuid"].to_string(),
                menuid,
                "{}",
                got.json
            );
            let del = call(
                &relay,
                CRM_KEY,
                Method::POST,
                &format!("{prefix}/cgi-bin/menu/delconditional"),
                Some(&json!({"menuid": menuid})),
            )
            .await;
            assert_eq!(del.errcode(), 0, "{}", del.json);
            let again = call(
                &relay,
                CRM_KEY,
                Method::POST,
                &format!("{prefix}/cgi-bin/menu/delconditional"),
                Some(&json!({"menuid": menuid})),
            )
            .await;
            assert_eq!(again.errcode(), 65301);
        }
        // WeChat's validation codes come back as-is.
        let bad = call(
            &relay,
            CRM_KEY,
            Method::POST,
            &format!("{prefix}/cgi-bin/menu/create{q}"),
            Some(&json!({"button": []})),
        )
        .await;
        assert_eq!((bad.status, bad.errcode()), (StatusCode::OK, 40016));
        let deleted = call(
            &relay,
            CRM_KEY,
            Method::GET,
            &format!("{prefix}/cgi-bin/menu/delete{q}"),
            None,
        )
        .await;
        assert_eq!(deleted.errcode(), 0);
        assert_eq!(stack.sim.menu(&owner), None);
    }
    // A WeCom menu call names its app: another agentid is WeChat's 301002.
    let other = call(
        &relay,
        CRM_KEY,
        Method::GET,
        &format!("/v1/{CORP_TENANT}/-/cgi-bin/menu/get?agentid=1"),
        None,
    )
    .await;
    assert_eq!(other.errcode(), 301002);
    drop(relay);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_is_healed_once_under_fifty_concurrent_calls() {
    let stack = Stack::start_with(tickets("relay-heal")).await.unwrap();
    let relay = stack.relay(&[]).await.unwrap();
    let path = format!("/v1/{TENANT}/{AUTH1}/cgi-bin/menu/create");
    assert_eq!(
        call(&relay, CRM_KEY, Method::POST, &path, Some(&menu()))
            .await
            .errcode(),
        0
    );
    // The token token-control holds expires on WeChat's side (sim time moves on; token-control
    // still believes it valid): every call's first attempt gets 42001.
    stack.sim.advance(Duration::from_secs(7300));
    let refreshes = stack.calls("/cgi-bin/component/api_authorizer_token", Some(AUTH1));
    let get = format!("/v1/{TENANT}/{AUTH1}/cgi-bin/menu/get");
    let calls = (0..50).map(|_| call(&relay, CRM_KEY, Method::GET, &get, None));
    let answers = futures::future::join_all(calls).await;
    for a in &answers {
        assert_eq!(a.errcode(), 0, "{}", a.json);
        assert_eq!(a.json["menu"]["button"], menu()["button"]);
    }
    let healed = answers
        .iter()
        .filter(|a| a.header("x-wxhub-attempts") == "2")
        .count();
    assert!(healed >= 1, "some call met the expired token");
    assert!(answers.iter().all(|a| a.header("x-wxhub-attempts") != "2"
        || a.header("x-wxhub-retry").contains("token rejected")),);
    assert_eq!(
        stack.calls("/cgi-bin/component/api_authorizer_token", Some(AUTH1)) - refreshes,
        1,
        "one refresh for the whole storm"
    );
    drop(relay);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_never_retried_after_it_was_written_a_get_is() {
    let stack = Stack::start_with(tickets("relay-retry")).await.unwrap();
    let relay = stack
        .relay(&[
            ("WXHUB_RELAY__BUSY_BACKOFF_MS", "10"),
            ("WXHUB_RELAY__UPSTREAM_TIMEOUT_MS", "1000"),
        ])
        .await
        .unwrap();
    let base = format!("/v1/{TENANT}/{AUTH1}/cgi-bin/menu");
    // Warm the token so that only the calls under test reach the sim.
    call(&relay, CRM_KEY, Method::GET, &format!("{base}/get"), None).await;

    // -1 on a POST: returned as-is, once.
    stack
        .sim
        .add_fault(FaultSpec::error("/cgi-bin/menu/create", -1, Some(1)))
        .unwrap();
    let before = stack.calls("/cgi-bin/menu/create", None);
    let a = call(
        &relay,
        CRM_KEY,
        Method::POST,
        &format!("{base}/create"),
        Some(&menu()),
    )
    .await;
    assert_eq!(a.errcode(), -1);
    assert_eq!(a.header("x-wxhub-attempts"), "1");
    assert!(
        a.header("x-wxhub-retry")
            .contains("not-retried; POST was written"),
        "{:?}",
        a.headers
    );
    assert_eq!(stack.calls("/cgi-bin/menu/create", None) - before, 1);
    assert_eq!(
        stack.sim.menu(AUTH1),
        None,
        "the fault answered instead of the sim"
    );

    // A connection cut after the POST was written: 502, once.
    stack
        .sim
        .add_fault(FaultSpec::drop_connection("/cgi-bin/menu/create", Some(1)))
        .unwrap();
    let before = stack.calls("/cgi-bin/menu/create", None);
    let a = call(
        &relay,
        CRM_KEY,
        Method::POST,
        &format!("{base}/create"),
        Some(&menu()),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.json);
    assert_eq!(a.header("x-wxhub-attempts"), "1");
    assert!(a.header("x-wxhub-retry").contains("not-retried"));
    assert_eq!(stack.calls("/cgi-bin/menu/create", None) - before, 1);

    // A POST WeChat answers slower than the deadline: 504, once.
    answer_slowly_once(&stack, "/cgi-bin/menu/create");
    let before = stack.calls("/cgi-bin/menu/create", None);
    let a = call(
        &relay,
        CRM_KEY,
        Method::POST,
        &format!("{base}/create"),
        Some(&menu()),
    )
    .await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT, "{}", a.json);
    assert_eq!(a.header("x-wxhub-attempts"), "1");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(stack.calls("/cgi-bin/menu/create", None) - before <= 1);

    // -1 on a GET: retried once after the backoff.
    stack
        .sim
        .add_fault(FaultSpec::error("/cgi-bin/menu/get", -1, Some(1)))
        .unwrap();
    let a = call(&relay, CRM_KEY, Method::GET, &format!("{base}/get"), None).await;
    assert_eq!(a.header("x-wxhub-attempts"), "2", "{:?}", a.headers);
    assert_ne!(a.errcode(), -1);
    // ... but only once: two -1s in a row come back.
    stack
        .sim
        .add_fault(FaultSpec::error("/cgi-bin/menu/get", -1, Some(2)))
        .unwrap();
    let a = call(&relay, CRM_KEY, Method::GET, &format!("{base}/get"), None).await;
    assert_eq!((a.errcode(), a.header("x-wxhub-attempts")), (-1, "2"));

    // A token rejection of a POST is healed (WeChat did nothing with it).
    stack
        .sim
        .add_fault(FaultSpec::error("/cgi-bin/menu/create", 40001, Some(1)))
        .unwrap();
    let a = call(
        &relay,
        CRM_KEY,
        Method::POST,
        &format!("{base}/create"),
        Some(&menu()),
    )
    .await;
    assert_eq!(
        (a.errcode(), a.header("x-wxhub-attempts")),
        (0, "2"),
        "{}",
        a.json
    );
    assert_eq!(stack.sim.menu(AUTH1), Some(menu()["button"].clone()));
    drop(relay);
    stack.stop().await;
}

fn multipart(filename: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "wxhubBoundary7MA4YWxkTrZu0gW";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_streams_through_both_ways() {
    let stack = Stack::start_with(tickets("relay-media")).await.unwrap();
    let relay = stack
        .relay(&[("WXHUB_RELAY__MAX_BODY_BYTES", "3145728")])
        .await
        .unwrap();
    let client = http();

    // Upload 2 MB (over the 1 MB replay limit: streamed through, never held).
    let image: Vec<u8> = (0..2 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let (content_type, body) = multipart("photo.jpg", &image);
    relay.shared.upstream.held.reset_peak();
    let up = client
        .post(format!(
            "{}/v1/{TENANT}/{AUTH1}/cgi-bin/media/upload?type=image",
            relay.url
        ))
        .bearer_auth(CRM_KEY)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(up.status(), StatusCode::OK);
    let up: Value = up.json().await.unwrap();
    let media_id = up["media_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{up}"))
        .to_owned();
    assert!(
        relay.shared.upstream.held.peak() < 64 * 1024,
        "upload held {} bytes",
        relay.shared.upstream.held.peak()
    );
    let down = media_get(&client, &relay, &media_id).await;
    assert_eq!(down.headers()["content-type"], "image/jpeg");
    assert!(
        down.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("photo.jpg")
    );
    assert_eq!(down.bytes().await.unwrap().as_ref(), image.as_slice());

    // Download 10 MB, read chunk by chunk: the relay never holds it.
    let big: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    let big_id = stack.sim.put_media(AUTH1, "image", "big.png", big.clone());
    relay.shared.upstream.held.reset_peak();
    let rss_before = rss_bytes();
    let peak_rss = Arc::new(Mutex::new(rss_before));
    let sampler = {
        let peak_rss = Arc::clone(&peak_rss);
        tokio::spawn(async move {
            loop {
                let now = rss_bytes();
                {
                    let mut p = peak_rss.lock().unwrap();
                    *p = (*p).max(now);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut down = media_get(&client, &relay, &big_id).await;
    let (mut n, mut chunks, mut digest) = (0usize, 0usize, 0u64);
    while let Some(chunk) = down.chunk().await.unwrap() {
        for (i, b) in chunk.iter().enumerate() {
            assert_eq!(*b, ((n + i) % 253) as u8);
        }
        digest = digest.wrapping_add(chunk.len() as u64);
        n += chunk.len();
        chunks += 1;
    }
    sampler.abort();
    assert_eq!(n, big.len());
    assert_eq!(digest, big.len() as u64);
    let held = relay.shared.upstream.held.peak();
    let rss_growth = peak_rss.lock().unwrap().saturating_sub(rss_before);
    eprintln!(
        "10 MB download: {chunks} chunks, relay held at most {held} bytes, process RSS grew {rss_growth} bytes"
    );
    assert!(
        held < 64 * 1024,
        "the relay held {held} bytes of a 10 MB download"
    );
    assert!(
        rss_growth < 10 * 1024 * 1024,
        "RSS grew {rss_growth} bytes during a 10 MB download"
    );

    // WeChat's limits and codes come back as-is; the relay's own limit refuses before sending.
    let (ct, thumb) = multipart("t.jpg", &vec![1u8; 70 * 1024]);
    let r: Value = client
        .post(format!(
            "{}/v1/{TENANT}/{AUTH1}/cgi-bin/media/upload?type=thumb",
            relay.url
        ))
        .bearer_auth(CRM_KEY)
        .header("content-type", ct)
        .body(thumb)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["errcode"], 40006, "{r}");
    let uploads = stack.calls("/cgi-bin/media/upload", None);
    // Declared over relay.max_body_bytes: refused on the headers (a raw request, so the test
    // reads the answer instead of racing the relay's close while writing 4 MB).
    let status_line = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = relay.url.trim_start_matches("http://").to_owned();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /v1/{TENANT}/{AUTH1}/cgi-bin/media/upload?type=image HTTP/1.1\r\nhost: relay\r\nauthorization: Bearer {CRM_KEY}\r\ncontent-type: multipart/form-data; boundary=x\r\ncontent-length: 4194304\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(status_line.contains(" 413 "), "{status_line}");
    assert_eq!(
        stack.calls("/cgi-bin/media/upload", None),
        uploads,
        "nothing forwarded"
    );
    drop(relay);
    stack.stop().await;
}

/// A business callback that records what it receives.
async fn business_callback() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let app = axum_free_server(Arc::clone(&got)).await;
    (app, got)
}

/// A minimal HTTP server (no framework in this crate's dependencies): answers 204 to every
/// request and records its JSON body, or `{"head": ...}` (request line and headers) when it
/// has none.
async fn axum_free_server(got: Arc<Mutex<Vec<Value>>>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/wx-oauth", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let got = Arc::clone(&got);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            let v = serde_json::from_slice(&buf[end + 4..end + 4 + len])
                                .unwrap_or_else(|_| json!({"head": &text[..end]}));
                            got.lock().unwrap().push(v);
                            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                            return;
                        }
                    }
                }
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_oauth_delivers_the_user_once_and_refuses_forged_states() {
    let stack = Stack::start_with(tickets("relay-oauth")).await.unwrap();
    let (callback, got) = business_callback().await;
    let sim = stack.sim.base_url();
    let relay = stack
        .relay(&[
            ("WXHUB_RELAY__OAUTH_AUTHORIZE_BASE", sim.as_str()),
            ("WXHUB_RELAY__OAUTH_CALLBACKS__ACME", callback.as_str()),
        ])
        .await
        .unwrap();
    let client = http();
    let exchanges = || stack.calls("/sns/oauth2/component/access_token", None);

    for (scope, user) in [
        ("snsapi_base", "o_base_user"),
        ("snsapi_userinfo", "o_info_user"),
    ] {
        let issued = call(
            &relay,
            CRM_KEY,
            Method::POST,
            &format!("/oauth/{TENANT}/{AUTH1}/authorize-url"),
            Some(&json!({"scope": scope, "return_to": "https://shop.example/home", "data": "cart=7"})),
        )
        .await;
        assert_eq!(issued.status, StatusCode::OK, "{}", issued.json);
        let url = issued.json["url"].as_str().unwrap().to_owned();
        assert!(
            url.contains(&format!("component_appid={COMPONENT}"))
                && url.ends_with("#wechat_redirect"),
            "{url}"
        );
        // The user's browser at WeChat's page (the sim picks the user from `openid`).
        let page = client
            .get(format!(
                "{}&openid={user}",
                url.trim_end_matches("#wechat_redirect")
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::FOUND);
        let back = page.headers()["location"].to_str().unwrap().to_owned();
        assert!(
            back.starts_with(&format!("{}/oauth/{TENANT}/{AUTH1}/callback", relay.url)),
            "{back}"
        );
        let done = client.get(&back).send().await.unwrap();
        assert_eq!(done.status(), StatusCode::FOUND);
        assert_eq!(done.headers()["location"], "https://shop.example/home");
        let delivered = got.lock().unwrap().last().cloned().unwrap();
        assert_eq!(delivered["openid"], user);
        assert_eq!(delivered["appid"], AUTH1);
        assert_eq!(delivered["data"], "cart=7");
        if scope == "snsapi_userinfo" {
            assert_eq!(delivered["userinfo"]["openid"], user, "{delivered}");
            assert!(delivered["unionid"].is_string());
        } else {
            assert!(delivered.get("userinfo").is_none(), "{delivered}");
        }
        assert!(
            !delivered.to_string().contains("access_token"),
            "the user's token stays in the relay"
        );

        // The same redirect again (a reused state): refused, nothing exchanged.
        let before = exchanges();
        let again = client.get(&back).send().await.unwrap();
        assert_eq!(again.status(), StatusCode::BAD_REQUEST);
        assert_eq!(exchanges(), before);
    }
    assert_eq!(got.lock().unwrap().len(), 2);

    // Forged states: never issued, malformed, issued for another account.
    let before = exchanges();
    for forged in [
        format!("/oauth/{TENANT}/{AUTH1}/callback?code=abc&state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        format!("/oauth/{TENANT}/{AUTH1}/callback?code=abc&state=../x"),
        format!("/oauth/{TENANT}/{AUTH1}/callback?code=abc"),
    ] {
        let r = client
            .get(format!("{}{forged}", relay.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{forged}");
    }
    let issued = call(
        &relay,
        CRM_KEY,
        Method::POST,
        &format!("/oauth/{TENANT}/{AUTH1}/authorize-url"),
        Some(&json!({"scope": "snsapi_base"})),
    )
    .await;
    let state = issued.json["state"].as_str().unwrap().to_owned();
    let r = client
        .get(format!(
            "{}/oauth/{TENANT}/{AUTH2}/callback?code=abc&state={state}",
            relay.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(exchanges(), before, "no forged state reached WeChat");
    assert_eq!(got.lock().unwrap().len(), 2, "nor the business callback");

    // Bad requests for a URL.
    for (tenant, appid, body, key, status) in [
        (
            TENANT,
            AUTH1,
            json!({"scope": "snsapi_login"}),
            CRM_KEY,
            StatusCode::BAD_REQUEST,
        ),
        (
            TENANT,
            AUTH1,
            json!({"scope": "snsapi_base", "return_to": "javascript:x"}),
            CRM_KEY,
            StatusCode::BAD_REQUEST,
        ),
        (
            TENANT,
            FRESH,
            json!({"scope": "snsapi_base"}),
            CRM_KEY,
            StatusCode::NOT_FOUND,
        ),
        (
            TENANT,
            AUTH1,
            json!({"scope": "snsapi_base"}),
            BETA_KEY,
            StatusCode::FORBIDDEN,
        ),
        (
            OA_TENANT,
            OA_APPID,
            json!({"scope": "snsapi_base"}),
            CRM_KEY,
            StatusCode::BAD_REQUEST,
        ),
        (
            TENANT,
            AUTH1,
            json!({"scope": "snsapi_base"}),
            MENUS_KEY,
            StatusCode::FORBIDDEN,
        ),
        (
            BETA,
            BETA_AUTH,
            json!({"scope": "snsapi_base"}),
            BETA_KEY,
            StatusCode::CONFLICT,
        ),
    ] {
        let r = call(
            &relay,
            key,
            Method::POST,
            &format!("/oauth/{tenant}/{appid}/authorize-url"),
            Some(&body),
        )
        .await;
        assert_eq!(r.status, status, "{tenant}/{appid} {body}: {}", r.json);
    }
    drop(relay);
    stack.stop().await;
}

/// (API key, method, path, body, status, reason).
type Case<'a> = (&'a str, Method, String, Option<Value>, StatusCode, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_and_bad_input_is_refused_before_wechat() {
    let stack = Stack::start_with(tickets("relay-refusals")).await.unwrap();
    let relay = stack
        .relay(&[
            ("WXHUB_RELAY__MAX_BODY_BYTES", "4096"),
            ("WXHUB_RELAY__REPLAY_BODY_BYTES", "1024"),
        ])
        .await
        .unwrap();
    // AUTH2 revokes its authorization (WeChat notifies; token-control applies it).
    stack.sim.revoke(COMPONENT, AUTH2).await.unwrap();
    let auths = &stack.auths;
    stack
        .wait_for(|| async {
            auths
                .get(TENANT, AUTH2)
                .await
                .ok()
                .flatten()
                .is_some_and(|a| a.status.as_str() != "authorized")
        })
        .await;
    let before = forwarded(&stack);
    let menu_get = "cgi-bin/menu/get";
    let cases: Vec<Case<'_>> = vec![
        (
            "",
            Method::GET,
            format!("/v1/{TENANT}/{AUTH1}/{menu_get}"),
            None,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            "nope",
            Method::GET,
            format!("/v1/{TENANT}/{AUTH1}/{menu_get}"),
            None,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            CRM_KEY,
            Method::GET,
            format!("/v1/ACME!/{AUTH1}/{menu_get}"),
            None,
            StatusCode::BAD_REQUEST,
            "bad_tenant",
        ),
        (
            OPS_KEY,
            Method::GET,
            format!("/v1/nobody/{AUTH1}/{menu_get}"),
            None,
            StatusCode::NOT_FOUND,
            "unknown_tenant",
        ),
        // Isolation: beta's client cannot act for acme, acme's not for beta, and acme's tenant
        // does not reach beta's authorizer.
        (
            BETA_KEY,
            Method::GET,
            format!("/v1/{TENANT}/{AUTH1}/{menu_get}"),
            None,
            StatusCode::FORBIDDEN,
            "permission_denied",
        ),
        (
            CRM_KEY,
            Method::GET,
            format!("/v1/{BETA}/{BETA_AUTH}/{menu_get}"),
            None,
            StatusCode::FORBIDDEN,
            "permission_denied",
        ),
        (
            CRM_KEY,
            Method::GET,
            format!("/v1/{TENANT}/{BETA_AUTH}/{menu_get}"),
            None,
            StatusCode::NOT_FOUND,
            "unknown_appid",
        ),
        (
            CRM_KEY,
            Method::GET,
            format!("/v1/{TENANT}/{FRESH}/{menu_get}"),
            None,
            StatusCode::NOT_FOUND,
            "unknown_appid",
        ),
        (
            CRM_KEY,
            Method::GET,
            format!("/v1/{TENANT}/{AUTH2}/{menu_get}"),
            None,
            StatusCode::CONFLICT,
            "account_unusable",
        ),
        (
            CRM_KEY,
            Method::GET,
            format!("/v1/{TENANT}/not-an-appid/{menu_get}"),
            None,
            StatusCode::BAD_REQUEST,
            "bad_appid",
        ),
        (
            CRM_KEY,
            Method::GET,
            format!("/v1/{OA_TENANT}/wxsomeoneelse/{menu_get}"),
            None,
            StatusCode::NOT_FOUND,
            "unknown_appid",
        ),
        (
            CRM_KEY,
            Method::GET,
            format!("/v1/{TENANT}/-/{menu_get}"),
            None,
            StatusCode::BAD_REQUEST,
            "not_component_scoped",
        ),
        (
            CRM_KEY,
            Method::GET,
            format!("/v1/{OA_TENANT}/-/sns/oauth2/component/access_token"),
            None,
            StatusCode::BAD_REQUEST,
            "component_scoped",
        ),
        // Paths.
        (
            MENUS_KEY,
            Method::GET,
            format!("/v1/{TENANT}/{AUTH1}/cgi-bin/media/get?media_id=x"),
            None,
            StatusCode::FORBIDDEN,
            "path_not_allowed",
        ),
        (
            CRM_KEY,
            Method::GET,
            format!("/v1/{OA_TENANT}/-/cgi-bin/token?grant_type=client_credential"),
            None,
            StatusCode::FORBIDDEN,
            "path_not_allowed",
        ),
        (
            CRM_KEY,
            Method::POST,
            format!("/v1/{TENANT}/-/cgi-bin/component/api_query_auth"),
            Some(json!({})),
            StatusCode::FORBIDDEN,
            "path_not_allowed",
        ),
        (
            CRM_KEY,
            Method::GET,
            format!("/v1/{TENANT}/{AUTH1}/cgi-bin/me%20nu/get"),
            None,
            StatusCode::BAD_REQUEST,
            "bad_path",
        ),
        (
            CRM_KEY,
            Method::GET,
            format!("/v1/{TENANT}/{AUTH1}/cgi-bin/menu//get"),
            None,
            StatusCode::BAD_REQUEST,
            "bad_path",
        ),
        // The caller's own credentials.
        (
            CRM_KEY,
            Method::GET,
            format!("/v1/{TENANT}/{AUTH1}/{menu_get}?access_token=stolen"),
            None,
            StatusCode::BAD_REQUEST,
            "caller_token",
        ),
        (
            CRM_KEY,
            Method::GET,
            format!(
                "/v1/{TENANT}/{AUTH1}/sns/oauth2/component/access_token?component_access_token=x"
            ),
            None,
            StatusCode::BAD_REQUEST,
            "caller_token",
        ),
        // Too large a body.
        (
            CRM_KEY,
            Method::POST,
            format!("/v1/{TENANT}/{AUTH1}/cgi-bin/menu/create"),
            Some(json!({"pad": "x".repeat(5000)})),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
    ];
    for (key, method, path, body, status, reason) in cases {
        let mut r = http().request(method, format!("{}{path}", relay.url));
        if !key.is_empty() {
            r = r.bearer_auth(key);
        }
        if let Some(b) = &body {
            r = r.json(b);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        assert_eq!(r.headers()["x-wxhub-attempts"], "0", "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], reason, "{path}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(!v.to_string().contains("stolen"));
    }
    assert_eq!(forwarded(&stack), before, "nothing refused reached WeChat");
    assert_eq!(
        stack
            .sim
            .calls(&CallFilter {
                path: None,
                appid: Some(AUTH2.into()),
                errcode: None
            })
            .len(),
        0
    );
    drop(relay);
    stack.stop().await;
}

/// Runs the `wxhub` CLI in-process (on a blocking thread: it starts a runtime of its own).
async fn wxhub(args: Vec<String>) -> (u8, Vec<u8>, String) {
    tokio::task::spawn_blocking(move || {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = wxhub_cli::main_with(
            std::iter::once("wxhub".to_owned()).chain(args),
            &mut std::io::empty(),
            &mut out,
            &mut err,
        );
        let code = if code == std::process::ExitCode::SUCCESS {
            0
        } else {
            2
        };
        (code, out, String::from_utf8_lossy(&err).into_owned())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_menus_and_media_through_the_relay() {
    let stack = Stack::start_with(tickets("relay-cli")).await.unwrap();
    let relay = stack.relay(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cli.toml");
    std::fs::write(
        &config,
        format!(
            "[relay]\nendpoint = \"{}\"\n\n[client]\napi_key = \"{CRM_KEY}\"\n",
            relay.url
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let args = |a: &[&str]| -> Vec<String> {
        a.iter()
            .map(|s| (*s).to_owned())
            .chain(["--config".to_owned(), config.clone()])
            .collect()
    };
    let menu_file = dir.path().join("menu.json");
    let bad_file = dir.path().join("bad.json");
    std::fs::write(&menu_file, menu().to_string()).unwrap();
    std::fs::write(
        &bad_file,
        json!({"button": [{"name": "菜单", "sub_button": [{"type": "view", "name": "搜索"}]}]})
            .to_string(),
    )
    .unwrap();
    let (menu_path, bad_path) = (
        menu_file.display().to_string(),
        bad_file.display().to_string(),
    );

    // Invalid JSON is refused naming the button, before anything reaches WeChat.
    let creates = stack.calls("/cgi-bin/menu/create", None);
    let (code, out, err) = wxhub(args(&[
        "menu", "create", TENANT, AUTH1, "--json", &bad_path,
    ]))
    .await;
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(
        err.contains("button[0].sub_button[0] \"搜索\": type view needs url"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(stack.calls("/cgi-bin/menu/create", None), creates);

    for (tenant, appid, agent) in [
        (TENANT, AUTH1, None),
        (OA_TENANT, "-", None),
        (CORP_TENANT, "-", Some(AGENT_ID.to_string())),
    ] {
        let with_agent = |mut a: Vec<String>| {
            if let Some(id) = &agent {
                a.extend(["--agentid".to_owned(), id.clone()]);
            }
            a
        };
        let (code, out, err) = wxhub(with_agent(args(&[
            "menu", "create", tenant, appid, "--json", &menu_path,
        ])))
        .await;
        assert_eq!(code, 0, "{tenant}: {err}");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["errcode"], 0);
        let (code, out, err) = wxhub(with_agent(args(&["menu", "get", tenant, appid]))).await;
        assert_eq!(code, 0, "{tenant}: {err}");
        let v: Value = serde_json::from_slice(&out).unwrap();
        let buttons = if agent.is_some() {
            &v["button"]
        } else {
            &v["menu"]["button"]
        };
        assert_eq!(buttons, &menu()["button"], "{tenant}: {v}");
        let (code, _, err) = wxhub(with_agent(args(&["menu", "delete", tenant, appid]))).await;
        assert_eq!(code, 0, "{err}");
        let (code, out, err) = wxhub(with_agent(args(&["menu", "get", tenant, appid]))).await;
        assert_eq!((code, out.len()), (2, 0));
        assert!(err.contains("WeChat errcode 46003"), "{err}");
    }

    // Media: upload a file, download it to stdout.
    let photo = dir.path().join("photo.jpg");
    let bytes: Vec<u8> = (0..300_000).map(|i| (i % 241) as u8).collect();
    std::fs::write(&photo, &bytes).unwrap();
    let (code, out, err) = wxhub(args(&[
        "media",
        "upload",
        TENANT,
        AUTH1,
        "--type",
        "image",
        &photo.display().to_string(),
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_slice(&out).unwrap();
    let media_id = v["media_id"].as_str().unwrap().to_owned();
    let (code, out, err) = wxhub(args(&["media", "get", TENANT, AUTH1, &media_id])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, bytes);
    let (code, out, err) = wxhub(args(&["media", "get", TENANT, AUTH1, "no-such-media"])).await;
    assert_eq!((code, out.len()), (2, 0));
    assert!(err.contains("40007"), "{err}");
    // A refusal of the relay is a failure too.
    let (code, _, err) = wxhub(args(&["menu", "get", BETA, BETA_AUTH])).await;
    assert_eq!(code, 2);
    assert!(err.contains("relay refused (403)"), "{err}");
    drop(relay);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_calls_pass_the_trace_context_on_and_are_counted() {
    let stack = Stack::start_with(tickets("relay-trace")).await.unwrap();
    let (capture, got) = business_callback().await;
    let wechat = capture.trim_end_matches("/wx-oauth").to_owned();
    let relay = stack
        .relay(&[("WXHUB_WECHAT__API_BASE", wechat.as_str())])
        .await
        .unwrap();
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = http()
        .get(format!(
            "{}/v1/{TENANT}/{AUTH1}/cgi-bin/user/info?openid=o_x&lang=zh_CN",
            relay.url
        ))
        .bearer_auth(CRM_KEY)
        .header("traceparent", traceparent)
        .header("cookie", "session=secret-cookie")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["x-wxhub-attempts"], "1");
    let head = got.lock().unwrap()[0]["head"].as_str().unwrap().to_owned();
    let lower = head.to_ascii_lowercase();
    assert!(
        head.starts_with("GET /cgi-bin/user/info?openid=o_x&lang=zh_CN&access_token="),
        "{head}"
    );
    assert!(
        lower.contains(&format!("traceparent: {traceparent}")),
        "{head}"
    );
    assert!(
        !lower.contains("authorization:") && !lower.contains("secret-cookie"),
        "{head}"
    );
    let metrics = relay_metrics(&relay).await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("wxhub_relay_calls_total{") && l.contains("family=\"cgi-bin/user\"")
        })
        .unwrap_or_else(|| panic!("no relay call counted in\n{metrics}"));
    assert!(
        line.contains("tenant=\"acme\"") && line.contains("errcode=\"0\""),
        "{line}"
    );
    drop(relay);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_is_sent_once_even_when_its_token_is_rejected() {
    let stack = Stack::start_with(tickets("relay-streamed")).await.unwrap();
    let relay = stack
        .relay(&[("WXHUB_RELAY__REPLAY_BODY_BYTES", "1024")])
        .await
        .unwrap();
    let (ct, body) = multipart("p.jpg", &[7u8; 8192]);
    let upload = || {
        http()
            .post(format!(
                "{}/v1/{TENANT}/{AUTH1}/cgi-bin/media/upload?type=image",
                relay.url
            ))
            .bearer_auth(CRM_KEY)
            .header("content-type", ct.clone())
            .body(body.clone())
            .send()
    };
    stack
        .sim
        .add_fault(FaultSpec::error("/cgi-bin/media/upload", 40001, Some(1)))
        .unwrap();
    let before = stack.calls("/cgi-bin/media/upload", None);
    let r = upload().await.unwrap();
    assert_eq!(r.headers()["x-wxhub-attempts"], "1");
    assert!(
        r.headers()["x-wxhub-retry"]
            .to_str()
            .unwrap()
            .contains("body was streamed"),
        "{:?}",
        r.headers()
    );
    assert_eq!(r.json::<Value>().await.unwrap()["errcode"], 40001);
    assert_eq!(stack.calls("/cgi-bin/media/upload", None) - before, 1);
    // The caller's own retry works: the token was replaced.
    let r: Value = upload().await.unwrap().json().await.unwrap();
    assert!(r["media_id"].is_string(), "{r}");
    drop(relay);
    stack.stop().await;
}

/// One account's calls to one WeChat path are limited across replicas (relay.rate_limit): the
/// call past the burst is refused with 429 before WeChat, other paths and accounts go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_one_account_to_one_path_are_rate_limited_before_wechat() {
    let stack = Stack::start_with(tickets("relay-rate")).await.unwrap();
    let limit = [
        ("WXHUB_RELAY__RATE_LIMIT__COUNT", "2"),
        ("WXHUB_RELAY__RATE_LIMIT__PERIOD_MS", "60000"),
        ("WXHUB_RELAY__RATE_LIMIT__BURST", "2"),
    ];
    // Two replicas share the limit.
    let (a, b) = (
        stack.relay(&limit).await.unwrap(),
        stack.relay(&limit).await.unwrap(),
    );
    let get = format!("/v1/{TENANT}/{AUTH1}/cgi-bin/menu/get");
    for relay in [&a, &b] {
        let ok = call(relay, CRM_KEY, Method::GET, &get, None).await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.json);
    }
    let before = stack.calls("/cgi-bin/menu/get", Some(AUTH1));
    let refused = call(&a, CRM_KEY, Method::GET, &get, None).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.json
    );
    assert_eq!(refused.json["error"], "rate_limited", "{}", refused.json);
    assert_eq!(
        stack.calls("/cgi-bin/menu/get", Some(AUTH1)),
        before,
        "nothing forwarded past the limit"
    );
    // Another path of the account, and the same path of another account, have their own buckets.
    let other_path = call(
        &b,
        CRM_KEY,
        Method::GET,
        &format!("/v1/{TENANT}/{AUTH1}/cgi-bin/menu/delete"),
        None,
    )
    .await;
    assert_eq!(other_path.status, StatusCode::OK, "{}", other_path.json);
    let other_account = call(
        &b,
        CRM_KEY,
        Method::GET,
        &format!("/v1/{TENANT}/{AUTH2}/cgi-bin/menu/get"),
        None,
    )
    .await;
    assert_eq!(
        other_account.status,
        StatusCode::OK,
        "{}",
        other_account.json
    );
    drop((a, b));
    stack.stop().await;
}

/// Polls `f` every 20 ms until it holds, for at most 5 s; says whether it did.
async fn eventually(mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_max_in_flight_are_refused_at_once_and_a_streaming_answer_keeps_its_slot() {
    let stack = Stack::start_with(tickets("relay-in-flight")).await.unwrap();
    let relay = stack
        .relay(&[("WXHUB_RELAY__MAX_IN_FLIGHT", "1")])
        .await
        .unwrap();
    let get = format!("/v1/{TENANT}/{AUTH1}/cgi-bin/menu/get");
    let warm = call(&relay, CRM_KEY, Method::GET, &get, None).await;
    assert_eq!(warm.status, StatusCode::OK, "{}", warm.json);

    // A call WeChat answers slowly holds the one slot: the next is refused, nothing sent.
    answer_slowly_once(&stack, "/cgi-bin/menu/get");
    let before = stack.calls("/cgi-bin/menu/get", Some(AUTH1));
    let slow = tokio::spawn({
        let url = format!("{}{get}", relay.url);
        async move {
            http()
                .get(url)
                .bearer_auth(CRM_KEY)
                .send()
                .await
                .map(|r| r.status())
        }
    });
    assert!(
        eventually(async || relay.shared.calls_in_progress() == 1).await,
        "the slow call is in progress"
    );
    let refused = call(&relay, CRM_KEY, Method::GET, &get, None).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.json
    );
    assert_eq!(
        refused.json["error"], "relay_overloaded",
        "{}",
        refused.json
    );
    assert_eq!(refused.header("retry-after"), "1");
    assert_eq!(refused.header("x-wxhub-attempts"), "0");
    assert_eq!(slow.await.unwrap().unwrap(), StatusCode::OK);
    assert_eq!(
        stack.calls("/cgi-bin/menu/get", Some(AUTH1)),
        before + 1,
        "only the slow call was forwarded"
    );
    assert_eq!(relay.shared.calls_in_progress(), 0);
    let after = call(&relay, CRM_KEY, Method::GET, &get, None).await;
    assert_eq!(after.status, StatusCode::OK, "the slot was given back");

    // A download the caller reads slowly keeps the slot after its headers came back (32 MB:
    // more than the socket buffers of both hops hold), and gives it back when the caller
    // hangs up.
    let big: Vec<u8> = (0..32 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let big_id = stack.sim.put_media(AUTH1, "image", "big.png", big);
    let mut down = media_get(&http(), &relay, &big_id).await;
    assert_eq!(down.status(), StatusCode::OK);
    assert!(!down.chunk().await.unwrap().unwrap_or_default().is_empty());
    assert_eq!(
        relay.shared.calls_in_progress(),
        1,
        "the download holds its slot"
    );
    assert_eq!(calls_in_progress_gauge(&relay).await, 1.0);
    let during = call(&relay, CRM_KEY, Method::GET, &get, None).await;
    assert_eq!(
        (during.status, during.json["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("relay_overloaded")),
        "the streaming answer holds the slot: {}",
        during.json
    );
    drop(down);
    assert!(
        eventually(
            async || call(&relay, CRM_KEY, Method::GET, &get, None).await.status == StatusCode::OK
        )
        .await,
        "the slot came back once the caller hung up"
    );
    assert_eq!(calls_in_progress_gauge(&relay).await, 0.0);
    drop(relay);
    stack.stop().await;
}
