//! The gRPC surface: tenant isolation for every RPC, each bad input (a clear status, no state
//! change), WeChat-side failures, Official Account and WeCom tenants, JS-SDK, health and
//! reflection.

use std::time::Duration;

use tonic::Code;
use wxhub_proto::token::v1 as pb;
use wxhub_sim::FaultSpec;

use crate::harness::*;

fn expect<T>(r: Result<tonic::Response<T>, tonic::Status>, code: Code, text: &str) {
    let s = r.err().expect("must fail");
    assert_eq!(s.code(), code, "{s:?}");
    assert!(
        s.message().contains(text),
        "{:?} should mention {text:?}",
        s.message()
    );
}

fn get(tenant: &str, appid: &str) -> pb::GetAccessTokenRequest {
    pb::GetAccessTokenRequest {
        tenant: tenant.into(),
        appid: appid.into(),
        min_remaining_secs: 0,
    }
}

/// Every RPC against `tenant` with `key`; the status code of each.
async fn every_rpc(env: &Env, key: &str, tenant: &str, appid: &str) -> Vec<(&'static str, Code)> {
    let mut c = env.client(0).await;
    let t = || tenant.to_owned();
    let a = || appid.to_owned();
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    vec![
        (
            "GetAccessToken",
            code(
                c.get_access_token(req(get(tenant, appid), key))
                    .await
                    .map(drop),
            ),
        ),
        (
            "InvalidateAccessToken",
            code(
                c.invalidate_access_token(req(
                    pb::InvalidateAccessTokenRequest {
                        tenant: t(),
                        appid: a(),
                        rejected_token: "x".into(),
                    },
                    key,
                ))
                .await
                .map(drop),
            ),
        ),
        (
            "CreateAuthorizationUrl",
            code(
                c.create_authorization_url(req(
                    pb::CreateAuthorizationUrlRequest {
                        tenant: t(),
                        redirect_uri: "https://example.com/done".into(),
                        auth_type: 0,
                        biz_appid: String::new(),
                    },
                    key,
                ))
                .await
                .map(drop),
            ),
        ),
        (
            "ExchangeAuthCode",
            code(
                c.exchange_auth_code(req(
                    pb::ExchangeAuthCodeRequest {
                        tenant: t(),
                        auth_code: "queryauthcode@@@x".into(),
                        ..Default::default()
                    },
                    key,
                ))
                .await
                .map(drop),
            ),
        ),
        (
            "GetAuthorizer",
            code(
                c.get_authorizer(req(
                    pb::GetAuthorizerRequest {
                        tenant: t(),
                        appid: a(),
                    },
                    key,
                ))
                .await
                .map(drop),
            ),
        ),
        (
            "ListAuthorizers",
            code(
                c.list_authorizers(req(
                    pb::ListAuthorizersRequest {
                        tenant: t(),
                        page_size: 10,
                        page_token: String::new(),
                    },
                    key,
                ))
                .await
                .map(drop),
            ),
        ),
        (
            "SyncAuthorizers",
            code(
                c.sync_authorizers(req(pb::SyncAuthorizersRequest { tenant: t() }, key))
                    .await
                    .map(drop),
            ),
        ),
        (
            "GetJsapiTicket",
            code(
                c.get_jsapi_ticket(req(
                    pb::GetJsapiTicketRequest {
                        tenant: t(),
                        appid: a(),
                    },
                    key,
                ))
                .await
                .map(drop),
            ),
        ),
        (
            "SignJsapiUrl",
            code(
                c.sign_jsapi_url(req(
                    pb::SignJsapiUrlRequest {
                        tenant: t(),
                        appid: a(),
                        url: "https://example.com/page".into(),
                    },
                    key,
                ))
                .await
                .map(drop),
            ),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rpc_is_authenticated_and_limited_to_the_clients_tenants() {
    let env = Env::start(Setup::new("tc-isolation", 1)).await;
    // Warm some state so "no change" is meaningful.
    let mut c = env.client(0).await;
    c.get_access_token(req(get(BETA, BETA_AUTH), KEY_BETA))
        .await
        .unwrap();
    let before = env.durable_snapshot().await;

    for (rpc, code) in every_rpc(&env, KEY_ACME, BETA, BETA_AUTH).await {
        assert_eq!(code, Code::PermissionDenied, "{rpc}: acme's key on beta");
    }
    for (rpc, code) in every_rpc(&env, "", ACME, AUTH1).await {
        assert_eq!(code, Code::Unauthenticated, "{rpc}: no key");
    }
    for (rpc, code) in every_rpc(&env, "not-a-key", ACME, AUTH1).await {
        assert_eq!(code, Code::Unauthenticated, "{rpc}: unknown key");
    }
    for (rpc, code) in every_rpc(&env, KEY_DIRECT, ACME, AUTH1).await {
        assert_eq!(
            code,
            Code::PermissionDenied,
            "{rpc}: OA client on a component"
        );
    }
    // The authorizer of beta cannot be reached through acme's tenant either.
    let err = c
        .get_access_token(req(get(ACME, BETA_AUTH), KEY_ACME))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let err = c
        .get_authorizer(req(
            pb::GetAuthorizerRequest {
                tenant: ACME.into(),
                appid: BETA_AUTH.into(),
            },
            KEY_ACME,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    env.assert_unchanged(&before, "rejected calls").await;

    // The wildcard client reaches both.
    c.get_access_token(req(get(ACME, AUTH1), KEY_OPS))
        .await
        .unwrap();
    c.get_access_token(req(get(BETA, BETA_AUTH), KEY_OPS))
        .await
        .unwrap();
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_a_clear_status_and_changes_nothing() {
    let env = Env::start(Setup::new("tc-badinput", 1)).await;
    let mut c = env.client(0).await;
    let before = env.durable_snapshot().await;
    expect(
        c.get_access_token(req(get("nobody", ""), KEY_OPS)).await,
        Code::NotFound,
        "unknown tenant",
    );
    expect(
        c.get_access_token(req(get("Bad Tenant!", ""), KEY_OPS))
            .await,
        Code::InvalidArgument,
        "tenant must match",
    );
    expect(
        c.get_access_token(req(get(ACME, "wx-unknown-appid"), KEY_ACME))
            .await,
        Code::NotFound,
        "unknown authorizer",
    );
    expect(
        c.get_access_token(req(get(ACME, "wx:../../etc"), KEY_ACME))
            .await,
        Code::InvalidArgument,
        "appid must match",
    );
    expect(
        c.get_access_token(req(
            pb::GetAccessTokenRequest {
                tenant: ACME.into(),
                appid: AUTH1.into(),
                min_remaining_secs: 7200,
            },
            KEY_ACME,
        ))
        .await,
        Code::InvalidArgument,
        "min_remaining_secs",
    );
    expect(
        c.get_access_token(req(get(OA, AUTH1), KEY_DIRECT)).await,
        Code::InvalidArgument,
        "no authorizers",
    );
    expect(
        c.invalidate_access_token(req(
            pb::InvalidateAccessTokenRequest {
                tenant: ACME.into(),
                appid: AUTH1.into(),
                rejected_token: String::new(),
            },
            KEY_ACME,
        ))
        .await,
        Code::InvalidArgument,
        "rejected_token",
    );
    for (uri, auth_type, biz, text) in [
        ("not a url", 0, "", "redirect_uri"),
        ("ftp://example.com/x", 0, "", "redirect_uri"),
        ("https://example.com/x", 1, AUTH1, "mutually exclusive"),
        ("https://example.com/x", 9, "", "auth_type"),
    ] {
        expect(
            c.create_authorization_url(req(
                pb::CreateAuthorizationUrlRequest {
                    tenant: ACME.into(),
                    redirect_uri: uri.into(),
                    auth_type,
                    biz_appid: biz.into(),
                },
                KEY_ACME,
            ))
            .await,
            Code::InvalidArgument,
            text,
        );
    }
    expect(
        c.create_authorization_url(req(
            pb::CreateAuthorizationUrlRequest {
                tenant: OA.into(),
                redirect_uri: "https://example.com/x".into(),
                auth_type: 0,
                biz_appid: String::new(),
            },
            KEY_DIRECT,
        ))
        .await,
        Code::FailedPrecondition,
        "for components",
    );
    expect(
        c.list_authorizers(req(
            pb::ListAuthorizersRequest {
                tenant: ACME.into(),
                page_size: 501,
                page_token: String::new(),
            },
            KEY_ACME,
        ))
        .await,
        Code::InvalidArgument,
        "page_size",
    );
    expect(
        c.sign_jsapi_url(req(
            pb::SignJsapiUrlRequest {
                tenant: ACME.into(),
                appid: AUTH1.into(),
                url: "javascript:alert(1)".into(),
            },
            KEY_ACME,
        ))
        .await,
        Code::InvalidArgument,
        "url",
    );
    expect(
        c.get_jsapi_ticket(req(
            pb::GetJsapiTicketRequest {
                tenant: ACME.into(),
                appid: String::new(),
            },
            KEY_ACME,
        ))
        .await,
        Code::InvalidArgument,
        "appid",
    );
    expect(
        c.exchange_auth_code(req(
            pb::ExchangeAuthCodeRequest {
                tenant: ACME.into(),
                auth_code: String::new(),
                ..Default::default()
            },
            KEY_ACME,
        ))
        .await,
        Code::InvalidArgument,
        "auth_code",
    );
    // A code WeChat never issued.
    expect(
        c.exchange_auth_code(req(
            pb::ExchangeAuthCodeRequest {
                tenant: ACME.into(),
                auth_code: "queryauthcode@@@forged".into(),
                ..Default::default()
            },
            KEY_ACME,
        ))
        .await,
        Code::FailedPrecondition,
        "authorization code",
    );
    // Everything above left the store as it was (the component token fetched for the forged
    // code, and the memory that WeChat refused it, aside: legitimate state; the unknown
    // authorizer was re-listed first, which changes only coordination keys).
    let legitimate = |k: &String| k.ends_with(":token:component") || k.contains(":schedule");
    let after: Vec<_> = env
        .durable_snapshot()
        .await
        .into_iter()
        .filter(|(k, _)| !legitimate(k))
        .collect();
    let before: Vec<_> = before.into_iter().filter(|(k, _)| !legitimate(k)).collect();
    assert_eq!(after, before);

    // Expired and reused codes.
    let fresh = env.sim.authorize(ACME_APPID, FRESH, false).await.unwrap();
    let exchange = |code: String| pb::ExchangeAuthCodeRequest {
        tenant: ACME.into(),
        auth_code: code,
        ..Default::default()
    };
    let rec = c
        .exchange_auth_code(req(exchange(fresh.authorized.auth_code.clone()), KEY_ACME))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rec.appid, FRESH);
    assert!(rec.has_refresh_token);
    let before = env.snapshot().await;
    expect(
        c.exchange_auth_code(req(exchange(fresh.authorized.auth_code.clone()), KEY_ACME))
            .await,
        Code::FailedPrecondition,
        "already used",
    );
    let again = env.sim.authorize(ACME_APPID, FRESH, false).await.unwrap();
    env.sim.advance(Duration::from_secs(601));
    expect(
        c.exchange_auth_code(req(exchange(again.authorized.auth_code.clone()), KEY_ACME))
            .await,
        Code::FailedPrecondition,
        "expired",
    );
    let changed: Vec<_> = env
        .snapshot()
        .await
        .into_iter()
        .filter(|(k, _)| k.contains(&format!("authorizer:{FRESH}")))
        .collect();
    let was: Vec<_> = before
        .into_iter()
        .filter(|(k, _)| k.contains(&format!("authorizer:{FRESH}")))
        .collect();
    assert_eq!(changed, was, "failed exchanges changed no authorizer state");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wechat_side_failures_are_specific_statuses() {
    let mut setup = Setup::new("tc-wxfail", 1);
    setup.tenants = tenants_toml("wrong-secret");
    setup.wait_reconcile = false;
    let env = Env::start(setup).await;
    let mut c = env.client(0).await;
    // Bad component secret.
    let err = c
        .get_access_token(req(get(ACME, ""), KEY_ACME))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(
        err.message().contains("app_secret") && err.message().contains("40125"),
        "{err}"
    );
    assert!(!err.message().contains("wrong-secret"));
    // Quota on an authorizer refresh (beta's secret is right).
    c.get_access_token(req(get(BETA, ""), KEY_BETA))
        .await
        .unwrap();
    env.wait_for(|| async { env.auths.count(BETA).await.unwrap_or(0) >= 1 })
        .await;
    env.sim
        .add_fault(FaultSpec::error(
            "/cgi-bin/component/api_authorizer_token",
            45009,
            Some(1),
        ))
        .unwrap();
    let err = c
        .get_access_token(req(get(BETA, BETA_AUTH), KEY_BETA))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    // -1 is retried with backoff within the deadline.
    env.sim
        .add_fault(FaultSpec::error(
            "/cgi-bin/component/api_authorizer_token",
            -1,
            Some(2),
        ))
        .unwrap();
    let ok = c
        .get_access_token(req(get(BETA, BETA_AUTH), KEY_BETA))
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    // A refresh token that even the list cannot recover: revoked, clear error.
    env.sim
        .add_fault(FaultSpec::error(
            "/cgi-bin/component/api_authorizer_token",
            61023,
            Some(2),
        ))
        .unwrap();
    let err = c
        .invalidate_access_token(req(
            pb::InvalidateAccessTokenRequest {
                tenant: BETA.into(),
                appid: BETA_AUTH.into(),
                rejected_token: ok.unwrap().into_inner().access_token,
            },
            KEY_BETA,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("authorize again"), "{err}");
    // Metrics name the quota failure.
    let metrics = env.metrics(0).await;
    assert!(
        metrics.contains("wxhub_wechat_quota_exhausted_total"),
        "quota surfaces in metrics:\n{metrics}"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn official_account_and_wecom_tenants_use_the_same_machinery() {
    let env = Env::start(Setup::new("tc-direct", 2)).await;
    let mut c = env.client(0).await;
    let oa = c
        .get_access_token(req(get(OA, ""), KEY_DIRECT))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(oa.appid, OA_APPID);
    let account = env.sim.account(OA_APPID).unwrap();
    assert_eq!(
        account.stable_access_token.as_deref(),
        Some(oa.access_token.as_str()),
        "stable_token, not /cgi-bin/token"
    );
    assert_eq!(env.calls("/cgi-bin/token", None), 0);
    let stable_calls = env.calls("/cgi-bin/stable_token", Some(OA_APPID));
    // Scheduled like every token.
    assert!(env.creds.due(OA, "app").await.unwrap().is_some());
    // Invalidation of the token WeChat still issues: normal mode answers it again, so
    // force_refresh replaces it, once.
    let mut c1 = env.client(1).await;
    let replaced = c1
        .invalidate_access_token(req(
            pb::InvalidateAccessTokenRequest {
                tenant: OA.into(),
                appid: String::new(),
                rejected_token: oa.access_token.clone(),
            },
            KEY_DIRECT,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(replaced.access_token, oa.access_token);
    assert_eq!(
        env.calls("/cgi-bin/stable_token", Some(OA_APPID)),
        stable_calls + 2
    );
    let metrics = env.metrics(1).await;
    assert!(
        metrics.contains("wxhub_stable_token_force_refresh_total{tenant=\"oa\",result=\"ok\"} 1"),
        "the force is counted:\n{metrics}"
    );

    let wc = c
        .get_access_token(req(get(CORP, ""), KEY_DIRECT))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(wc.appid, CORP_ID);
    let agents = env.sim.corp(CORP_ID).unwrap();
    assert_eq!(
        agents[0].access_token.as_deref(),
        Some(wc.access_token.as_str())
    );
    assert_eq!(env.calls("/cgi-bin/gettoken", Some(CORP_ID)), 1);
    // Expiry in virtual time: refreshed through the same path.
    env.sim.advance(Duration::from_secs(7300));
    let wc2 = c
        .get_access_token(req(get(CORP, ""), KEY_DIRECT))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(wc2.access_token, wc.access_token);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn official_accounts_can_use_cgi_bin_token() {
    let env =
        Env::start(Setup::new("tc-oa-token", 1).with("WXHUB_TOKEN_CONTROL__OA_TOKEN_API", "token"))
            .await;
    let mut c = env.client(0).await;
    let t = c
        .get_access_token(req(get(OA, ""), KEY_DIRECT))
        .await
        .unwrap()
        .into_inner();
    let account = env.sim.account(OA_APPID).unwrap();
    assert_eq!(
        account.access_token.as_deref(),
        Some(t.access_token.as_str())
    );
    assert_eq!(env.calls("/cgi-bin/token", Some(OA_APPID)), 1);
    assert_eq!(env.calls("/cgi-bin/stable_token", None), 0);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jsapi_tickets_and_signatures() {
    let env = Env::start(Setup::new("tc-jsapi", 1)).await;
    let mut c = env.client(0).await;
    let ticket = c
        .get_jsapi_ticket(req(
            pb::GetJsapiTicketRequest {
                tenant: ACME.into(),
                appid: AUTH1.into(),
            },
            KEY_ACME,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!ticket.ticket.is_empty());
    let url = "https://shop.example.com/page?x=1#section";
    let sig = c
        .sign_jsapi_url(req(
            pb::SignJsapiUrlRequest {
                tenant: ACME.into(),
                appid: AUTH1.into(),
                url: url.into(),
            },
            KEY_ACME,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sig.appid, AUTH1, "wx.config uses the authorizer's appid");
    assert_eq!(sig.url, "https://shop.example.com/page?x=1");
    assert_eq!(
        sig.signature,
        wxhub_crypto::jssdk_signature(
            &ticket.ticket,
            &sig.nonce_str,
            &sig.timestamp.to_string(),
            url
        )
    );
    assert_eq!(
        env.calls("/cgi-bin/ticket/getticket", None),
        1,
        "the ticket is cached"
    );
    // The Official Account's own ticket.
    let oa = c
        .sign_jsapi_url(req(
            pb::SignJsapiUrlRequest {
                tenant: OA.into(),
                appid: String::new(),
                url: "https://oa.example.com/".into(),
            },
            KEY_DIRECT,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(oa.appid, OA_APPID);
    let err = c
        .get_jsapi_ticket(req(
            pb::GetJsapiTicketRequest {
                tenant: CORP.into(),
                appid: String::new(),
            },
            KEY_DIRECT,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn authorizers_are_listed_paged_and_synced() {
    let env = Env::start(Setup::new("tc-list", 1)).await;
    let mut c = env.client(0).await;
    let page = |token: &str| pb::ListAuthorizersRequest {
        tenant: ACME.into(),
        page_size: 1,
        page_token: token.into(),
    };
    let first = c
        .list_authorizers(req(page(""), KEY_ACME))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.total, 2);
    assert_eq!(first.authorizers.len(), 1);
    assert_eq!(first.authorizers[0].appid, AUTH1);
    let second = c
        .list_authorizers(req(page(&first.next_page_token), KEY_ACME))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.authorizers[0].appid, AUTH2);
    assert!(second.next_page_token.is_empty());
    // A new authorization WeChat knows about is picked up by a sync.
    env.sim.authorize(ACME_APPID, FRESH, false).await.unwrap();
    let synced = c
        .sync_authorizers(req(
            pb::SyncAuthorizersRequest {
                tenant: ACME.into(),
            },
            KEY_ACME,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(synced.listed, 3);
    assert_eq!(synced.authorized, 1);
    let rec = c
        .get_authorizer(req(
            pb::GetAuthorizerRequest {
                tenant: ACME.into(),
                appid: FRESH.into(),
            },
            KEY_ACME,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rec.status, "authorized");
    assert!(
        !rec.has_refresh_token,
        "never exchanged: WeChat lists no refresh token"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_reflection_and_deadlines() {
    let env = Env::start(Setup::new("tc-health", 1)).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", env.replicas[0].addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "wxhub.token.v1.TokenControl".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut stream = reflection
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    let listed = format!("{:?}", reply.message_response);
    assert!(listed.contains("wxhub.token.v1.TokenControl"), "{listed}");

    // A short grpc-timeout bounds the upstream call.
    env.sim
        .add_fault(FaultSpec::latency(
            "/cgi-bin/component/api_authorizer_token",
            Duration::from_secs(3),
            Some(1),
        ))
        .unwrap();
    let mut c = env.client(0).await;
    let mut r = req(get(ACME, AUTH2), KEY_ACME);
    r.set_timeout(Duration::from_millis(300));
    let err = c.get_access_token(r).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::DeadlineExceeded | Code::Cancelled | Code::Unavailable
        ),
        "{err:?}"
    );
    env.shutdown().await;
}
