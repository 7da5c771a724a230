//! The client against a tiny local stub: request shapes, response decoding, error
//! classification, timeouts, and that no secret leaks into errors or `Debug`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::{Value, json};
use wxhub_wechat_api::WechatConfig;
use wxhub_wechat_api::{ErrorClass, Host, Secret, WechatApi, WechatError, paths};

#[derive(Default)]
struct Seen {
    requests: Vec<(String, HashMap<String, String>, Value)>,
}

type Shared = Arc<Mutex<Seen>>;

fn record(seen: &Shared, path: &str, raw: Option<String>, body: &Bytes) {
    let query = url_decode(raw.as_deref().unwrap_or_default());
    let body = serde_json::from_slice(body).unwrap_or(Value::Null);
    seen.lock()
        .unwrap()
        .requests
        .push((path.to_owned(), query, body));
}

fn url_decode(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

async fn stub() -> (String, Shared) {
    let seen: Shared = Arc::default();
    let app = Router::new()
        .route(
            paths::COMPONENT_TOKEN,
            post(
                |State(s): State<Shared>, RawQuery(q): RawQuery, body: Bytes| async move {
                    record(&s, paths::COMPONENT_TOKEN, q, &body);
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    if v["component_appsecret"] == "wrong" {
                        return axum::Json(json!({"errcode": 40125, "errmsg": "invalid appsecret rid: 1-2-3"}));
                    }
                    if v["component_appsecret"] == "bad40001" {
                        return axum::Json(json!({"errcode": 40001, "errmsg": "invalid credential"}));
                    }
                    if v["component_verify_ticket"] == "old" {
                        return axum::Json(json!({"errcode": 61005, "errmsg": "component ticket is expired"}));
                    }
                    axum::Json(json!({"component_access_token": "CAT-1", "expires_in": 7200}))
                },
            ),
        )
        .route(
            paths::QUERY_AUTH,
            post(
                |State(s): State<Shared>, RawQuery(q): RawQuery, body: Bytes| async move {
                    record(&s, paths::QUERY_AUTH, q, &body);
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    if v["authorization_code"] == "used" {
                        return axum::Json(json!({"errcode": 61009, "errmsg": "code is invalid"}));
                    }
                    axum::Json(json!({"authorization_info": {
                        "authorizer_appid": "wxauth1",
                        "authorizer_access_token": "AAT-1",
                        "expires_in": 7200,
                        "authorizer_refresh_token": "ART-1",
                        "func_info": [{"funcscope_category": {"id": 1}}, {"funcscope_category": {"id": 15}}]
                    }}))
                },
            ),
        )
        .route(
            paths::AUTHORIZER_TOKEN,
            post(
                |State(s): State<Shared>, RawQuery(q): RawQuery, body: Bytes| async move {
                    record(&s, paths::AUTHORIZER_TOKEN, q, &body);
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    match v["authorizer_refresh_token"].as_str() {
                        Some("lost") => axum::Json(json!({"errcode": 61023, "errmsg": "refresh_token is invalid"})),
                        Some("busy") => axum::Json(json!({"errcode": -1, "errmsg": "system error"})),
                        Some("quota") => axum::Json(json!({"errcode": 45009, "errmsg": "reach max api daily quota limit"})),
                        Some("slow") => {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            axum::Json(json!({}))
                        }
                        _ => axum::Json(json!({"authorizer_access_token": "AAT-2", "expires_in": "7200", "authorizer_refresh_token": "ART-2"})),
                    }
                },
            ),
        )
        .route(
            paths::GET_AUTHORIZER_INFO,
            post(
                |State(s): State<Shared>, RawQuery(q): RawQuery, body: Bytes| async move {
                    record(&s, paths::GET_AUTHORIZER_INFO, q, &body);
                    axum::Json(json!({
                        "authorizer_info": {"nick_name": "Acme 咖啡", "user_name": "gh_1", "principal_name": "Acme Ltd",
                            "service_type_info": {"id": 2}, "verify_type_info": {"id": 0}, "account_status": 1,
                            "MiniProgramInfo": {"network": {}}},
                        "authorization_info": {"authorizer_appid": "wxauth1", "authorizer_refresh_token": "",
                            "func_info": [{"funcscope_category": {"id": 17}}]}
                    }))
                },
            ),
        )
        .route(
            paths::GET_AUTHORIZER_LIST,
            post(
                |State(s): State<Shared>, RawQuery(q): RawQuery, body: Bytes| async move {
                    record(&s, paths::GET_AUTHORIZER_LIST, q, &body);
                    axum::Json(json!({"total_count": 2, "list": [
                        {"authorizer_appid": "wxa", "refresh_token": "R-a", "auth_time": 1558000607},
                        {"authorizer_appid": "wxb", "refresh_token": "", "auth_time": 1558000608},
                        {"refresh_token": "no appid: skipped"}
                    ]}))
                },
            ),
        )
        .route(
            paths::STABLE_TOKEN,
            post(
                |State(s): State<Shared>, RawQuery(q): RawQuery, body: Bytes| async move {
                    record(&s, paths::STABLE_TOKEN, q, &body);
                    axum::Json(json!({"access_token": "OA-1", "expires_in": 7000}))
                },
            ),
        )
        .route(
            paths::OA_TOKEN,
            get(|State(s): State<Shared>, RawQuery(q): RawQuery| async move {
                record(&s, paths::OA_TOKEN, q, &Bytes::new());
                axum::Json(json!({"access_token": "OA-2", "expires_in": 7200}))
            }),
        )
        .route(
            paths::WECOM_TOKEN,
            get(|State(s): State<Shared>, RawQuery(q): RawQuery| async move {
                record(&s, paths::WECOM_TOKEN, q.clone(), &Bytes::new());
                if q.unwrap_or_default().contains("corpsecret=bad") {
                    return axum::Json(json!({"errcode": 40001, "errmsg": "invalid credential"}));
                }
                axum::Json(json!({"errcode": 0, "errmsg": "ok", "access_token": "WC-1", "expires_in": 7200}))
            }),
        )
        .route(
            paths::GET_TICKET,
            get(|State(s): State<Shared>, RawQuery(q): RawQuery| async move {
                record(&s, paths::GET_TICKET, q, &Bytes::new());
                axum::Json(json!({"errcode": 0, "errmsg": "ok", "ticket": "JT-1", "expires_in": 7200}))
            }),
        )
        .route(
            paths::START_PUSH_TICKET,
            post(
                |State(s): State<Shared>, RawQuery(q): RawQuery, body: Bytes| async move {
                    record(&s, paths::START_PUSH_TICKET, q, &body);
                    axum::Json(json!({"errcode": 0, "errmsg": "ok"}))
                },
            ),
        )
        .route(
            paths::CUSTOM_SEND,
            post(|| async { (StatusCode::BAD_GATEWAY, "upstream down").into_response() }),
        )
        .route(
            paths::TEMPLATE_SEND,
            post(|| async { "<html>not json</html>" }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn client(base: &str, timeout_ms: u64) -> WechatApi {
    WechatApi::new(&WechatConfig {
        api_base: base.to_owned(),
        qyapi_base: format!("{base}/"),
        mp_base: base.to_owned(),
        timeout_ms,
    })
    .unwrap()
}

#[tokio::test]
async fn component_lifecycle_requests_and_responses() {
    let (base, seen) = stub().await;
    let api = client(&base, 2000);
    let secret = Secret::new("s3cret");
    let token = api
        .component_token("wxcomp", &secret, &Secret::new("ticket@@@1"))
        .await
        .unwrap();
    assert_eq!(token.token.expose(), "CAT-1");
    assert_eq!(token.expires_in, 7200);
    assert!(
        !format!("{token:?}").contains("CAT-1"),
        "tokens never print"
    );

    let info = api
        .query_auth(&token.token, "wxcomp", "code-1")
        .await
        .unwrap();
    assert_eq!(info.authorizer_appid, "wxauth1");
    assert_eq!(info.access_token.as_ref().unwrap().token.expose(), "AAT-1");
    assert_eq!(info.refresh_token.as_ref().unwrap().expose(), "ART-1");
    assert_eq!(info.func_info, vec![1, 15]);

    let (at, refresh) = api
        .authorizer_token(&token.token, "wxcomp", "wxauth1", &Secret::new("ART-1"))
        .await
        .unwrap();
    assert_eq!(at.token.expose(), "AAT-2");
    assert_eq!(at.expires_in, 7200, "a quoted number is accepted");
    assert_eq!(refresh.unwrap().expose(), "ART-2");

    let profile = api
        .get_authorizer_info(&token.token, "wxcomp", "wxauth1")
        .await
        .unwrap();
    assert_eq!(profile.nick_name, "Acme 咖啡");
    assert_eq!(profile.service_type, Some(2));
    assert!(profile.is_mini_program);
    assert_eq!(
        profile.refresh_token, None,
        "an empty refresh token is none"
    );
    assert_eq!(profile.func_info, vec![17]);

    let list = api
        .get_authorizer_list(&token.token, "wxcomp", 0, 10_000)
        .await
        .unwrap();
    assert_eq!(list.total_count, 2);
    assert_eq!(list.list.len(), 2);
    assert_eq!(list.list[0].refresh_token.as_ref().unwrap().expose(), "R-a");
    assert_eq!(list.list[1].refresh_token, None);

    api.start_push_ticket("wxcomp", &secret).await.unwrap();

    let seen = seen.lock().unwrap();
    let (_, q, body) = &seen.requests[0];
    assert!(q.is_empty(), "api_component_token takes no query token");
    assert_eq!(body["component_appsecret"], "s3cret");
    assert_eq!(body["component_verify_ticket"], "ticket@@@1");
    let (path, q, body) = &seen.requests[1];
    assert_eq!(path, paths::QUERY_AUTH);
    assert_eq!(q["component_access_token"], "CAT-1");
    assert_eq!(body["authorization_code"], "code-1");
    let (_, _, body) = &seen.requests[4];
    assert_eq!(body["count"], 500, "count is clamped to WeChat's maximum");
    let (_, _, body) = &seen.requests[5];
    assert_eq!(body["component_secret"], "s3cret");
}

#[tokio::test]
async fn official_account_wecom_and_tickets() {
    let (base, seen) = stub().await;
    let api = client(&base, 2000);
    let t = api
        .stable_token("wxoa", &Secret::new("oa-secret"), false)
        .await
        .unwrap();
    assert_eq!((t.token.expose(), t.expires_in), ("OA-1", 7000));
    let t = api
        .oa_token("wxoa", &Secret::new("oa-secret"))
        .await
        .unwrap();
    assert_eq!(t.token.expose(), "OA-2");
    let t = api
        .wecom_token("ww1", &Secret::new("corp-secret"))
        .await
        .unwrap();
    assert_eq!(t.token.expose(), "WC-1");
    let j = api.jsapi_ticket(&Secret::new("OA-2")).await.unwrap();
    assert_eq!(j.ticket.expose(), "JT-1");

    let seen = seen.lock().unwrap();
    assert_eq!(seen.requests[0].2["grant_type"], "client_credential");
    assert_eq!(seen.requests[0].2["force_refresh"], false);
    assert_eq!(seen.requests[1].1["grant_type"], "client_credential");
    assert_eq!(seen.requests[1].1["secret"], "oa-secret");
    assert_eq!(seen.requests[2].1["corpid"], "ww1");
    assert_eq!(seen.requests[3].1["type"], "jsapi");
    assert_eq!(seen.requests[3].1["access_token"], "OA-2");
}

#[tokio::test]
async fn errors_are_typed_classified_and_secret_free() {
    let (base, _) = stub().await;
    let api = client(&base, 2000);
    let ct = Secret::new("CAT-SECRET-VALUE");

    let e = api
        .component_token("wxcomp", &Secret::new("wrong"), &Secret::new("t"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(40125));
    assert_eq!(e.class(), ErrorClass::Config);
    assert!(e.to_string().contains("rid: 1-2-3"), "{e}");

    let e = api
        .component_token("wxcomp", &Secret::new("bad40001"), &Secret::new("t"))
        .await
        .unwrap_err();
    assert_eq!(
        e.class(),
        ErrorClass::Config,
        "40001 on a token endpoint is a bad secret"
    );

    let e = api
        .component_token("wxcomp", &Secret::new("s"), &Secret::new("old"))
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Ticket);

    let e = api.query_auth(&ct, "wxcomp", "used").await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::AuthCode);

    for (refresh, class, code) in [
        ("lost", ErrorClass::RefreshToken, 61023),
        ("busy", ErrorClass::Transient, -1),
        ("quota", ErrorClass::Quota, 45009),
    ] {
        let e = api
            .authorizer_token(&ct, "wxcomp", "wxa", &Secret::new(refresh))
            .await
            .unwrap_err();
        assert_eq!((e.class(), e.code()), (class, Some(code)), "{refresh}");
    }

    let e = api
        .wecom_token("ww1", &Secret::new("bad"))
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Config);
    assert!(!e.to_string().contains("bad"), "{e}");

    // A 5xx and a non-JSON body on the send APIs.
    let e = api
        .post_with_token::<_, Value>(Host::Api, paths::CUSTOM_SEND, &ct, &json!({}))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        WechatError::Http {
            api: paths::CUSTOM_SEND,
            status: 502
        }
    );
    assert_eq!(e.class(), ErrorClass::Transient);
    assert!(e.outcome_unknown());
    let e = api
        .post_with_token::<_, Value>(Host::Api, paths::TEMPLATE_SEND, &ct, &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(e, WechatError::Decode { .. }), "{e:?}");

    // A timeout, with the token in the URL: the error must not carry it.
    let short = api.with_timeout(Duration::from_millis(100));
    assert_eq!(short.timeout(), Duration::from_millis(100));
    let e = short
        .authorizer_token(&ct, "wxcomp", "wxa", &Secret::new("slow"))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        WechatError::Timeout {
            api: paths::AUTHORIZER_TOKEN
        }
    );
    assert!(e.outcome_unknown());
    assert!(!format!("{e} {e:?}").contains("CAT-SECRET-VALUE"));
    assert!(!format!("{api:?}").contains("SECRET"));
}

#[tokio::test]
async fn unreachable_host_is_a_connect_error_without_url() {
    // Bind then drop a listener: the port refuses connections.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let api = client(&format!("http://{addr}"), 1000);
    let e = api
        .jsapi_ticket(&Secret::new("TOKEN-IN-QUERY"))
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient);
    assert!(matches!(e, WechatError::Connect { .. }), "{e:?}");
    assert!(!e.to_string().contains("TOKEN-IN-QUERY"), "{e}");
    assert!(!e.outcome_unknown(), "nothing was sent");
}
