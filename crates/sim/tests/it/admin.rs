//! The admin API, the seed file and the `run` entry point.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use wxhub_sim::{FaultSpec, Seed, SimConfig};

use crate::common::*;

#[tokio::test]
async fn seed_clock_records_and_views_over_http() -> Result<()> {
    let sim = start(Seed::default()).await;
    let api = Api::new(&sim);
    let seeded = api
        .post(
            "/sim/seed",
            json!({
                "components": [{"appid": "wxcomp_admin", "secret": SECRET, "token": TOKEN, "aes_key": KEY}],
                "accounts": [{"appid": "wxoa_admin", "user_name": "gh_admin", "secret": "s",
                              "users": [{"openid": "o_1", "last_interaction_ago_secs": 10}]}],
                "authorizations": [{"component_appid": "wxcomp_admin", "authorizer_appid": "wxoa_admin"}],
                "quotas": {"/cgi-bin/token": 5}
            }),
        )
        .await?;
    assert_eq!(seeded["ok"], true);
    let view = api.get("/sim/components/wxcomp_admin").await?;
    assert_eq!(view["authorizers"], 1);
    let auth = api
        .get("/sim/components/wxcomp_admin/authorizers/wxoa_admin")
        .await?;
    assert!(
        auth["refresh_token"]
            .as_str()
            .unwrap_or_default()
            .starts_with("refreshtoken@@@")
    );
    let account = api.get("/sim/accounts/wxoa_admin").await?;
    assert_eq!(account["users"][0]["window_left"], 5);

    let before = api.get("/sim/clock").await?;
    let after = api
        .post("/sim/clock/advance", json!({"secs": 3600}))
        .await?;
    let moved = after["now_ms"].as_i64().unwrap_or_default()
        - before["now_ms"].as_i64().unwrap_or_default();
    assert!((3_600_000..3_660_000).contains(&moved));
    assert_eq!(after["offset_ms"], 3_600_000);
    assert!(sim.clock().offset() >= Duration::from_secs(3600));

    api.get("/cgi-bin/token?grant_type=client_credential&appid=wxoa_admin&secret=s")
        .await?;
    api.get("/cgi-bin/token?grant_type=client_credential&appid=wxoa_admin&secret=bad")
        .await?;
    let calls = api
        .get("/sim/calls?path=/cgi-bin/token&errcode=40125")
        .await?;
    assert_eq!(calls["calls"].as_array().map(Vec::len), Some(1));
    assert_eq!(calls["calls"][0]["appid"], "wxoa_admin");
    let all = api.get("/sim/calls?appid=wxoa_admin").await?;
    assert_eq!(all["calls"].as_array().map(Vec::len), Some(2));
    let del = api
        .http
        .delete(format!("{}/sim/calls", api.base))
        .send()
        .await?;
    assert_eq!(del.status(), 200);
    assert_eq!(
        api.get("/sim/calls").await?["calls"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    assert_eq!(
        api.get("/sim/messages").await?["messages"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );

    let auth = api
        .post("/sim/authorize", json!({"component_appid": "wxcomp_admin", "authorizer_appid": "wxoa_admin", "push": false}))
        .await?;
    assert_eq!(auth["info_type"], "updateauthorized");
    assert!(
        auth["auth_code"]
            .as_str()
            .unwrap_or_default()
            .starts_with("queryauthcode@@@")
    );
    Ok(())
}

#[tokio::test]
async fn bad_admin_input_is_400_with_a_reason() -> Result<()> {
    let sim = start(Seed::default()).await;
    let api = Api::new(&sim);
    let cases = [
        (
            "/sim/seed",
            json!({"components": [{"appid": "wx1", "secret": "s", "token": "t", "aes_key": "short"}]}),
            "aes_key",
        ),
        (
            "/sim/seed",
            json!({"components": [{"appid": "wx1", "secret": "s", "token": "t", "aes_key": KEY, "message_url_template": "http://x/cb"}]}),
            "$APPID$",
        ),
        (
            "/sim/seed",
            json!({"authorizations": [{"component_appid": "wxnone", "authorizer_appid": "wxnone"}]}),
            "unknown component",
        ),
        ("/sim/seed", json!({"bogus": 1}), "unknown field"),
        (
            "/sim/clock/advance",
            json!({"secs": 1, "ms": 1}),
            "exactly one",
        ),
        ("/sim/clock/advance", json!({}), "exactly one"),
        (
            "/sim/quotas",
            json!({"path": "nope", "limit": 1}),
            "must start",
        ),
        (
            "/sim/release-check",
            json!({"component_appid": "wxnone", "groups": [0]}),
            "groups",
        ),
    ];
    for (path, body, reason) in cases {
        let resp = api
            .http
            .post(format!("{}{path}", api.base))
            .json(&body)
            .send()
            .await?;
        assert_eq!(resp.status(), 400, "{path} {body}");
        let text = resp.text().await?;
        assert!(text.contains(reason), "{path}: {text}");
    }
    let resp = api
        .http
        .post(format!("{}/sim/seed", api.base))
        .body("{oops")
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    let resp = api
        .http
        .get(format!("{}/sim/accounts/wxnobody", api.base))
        .send()
        .await?;
    assert_eq!(resp.status(), 404);
    let resp = api
        .http
        .get(format!("{}/sim/nothing-here", api.base))
        .send()
        .await?;
    assert_eq!(resp.status(), 404);
    let resp = api
        .http
        .delete(format!("{}/sim/faults/abc", api.base))
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    // Unknown WeChat paths answer in WeChat's JSON shape.
    let resp = api
        .http
        .get(format!("{}/cgi-bin/nope", api.base))
        .send()
        .await?;
    assert_eq!(resp.status(), 404);
    assert_eq!(errcode(&resp.json().await?), -1);
    Ok(())
}

/// A quota, fault or token lifetime on a path the sim does not serve could never apply: a typo
/// would leave the test it belongs to checking nothing. Each is refused, naming the path, and
/// changes nothing.
#[tokio::test]
async fn settings_on_paths_the_sim_does_not_serve_are_refused() -> Result<()> {
    const TYPO: &str = "/cgi-bin/tokne";
    let sim = start(Seed::default()).await;
    let refused = |r: Result<(), wxhub_sim::SimError>| {
        let err = r.expect_err("refused").to_string();
        assert!(err.contains(TYPO), "{err}");
        assert!(
            err.contains("/cgi-bin/token"),
            "lists what is served: {err}"
        );
    };
    refused(sim.set_quota(TYPO, Some(1)));
    refused(sim.add_fault(FaultSpec::error(TYPO, 45009, None)).map(drop));
    refused(sim.set_token_ttl(TYPO, None, Some(Duration::from_secs(60))));
    let seed = Seed {
        components: vec![component("wxcomp_typo", None, None)],
        quotas: [(TYPO.to_owned(), 1)].into(),
        ..Seed::default()
    };
    refused(sim.seed(&seed));
    assert!(
        sim.component("wxcomp_typo").is_none(),
        "the seed applied nothing"
    );
    assert!(sim.faults().is_empty());

    let api = Api::new(&sim);
    let resp = api
        .http
        .post(format!("{}/sim/quotas", api.base))
        .json(&json!({"path": TYPO, "limit": 1}))
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await?.contains(TYPO));
    Ok(())
}

#[tokio::test]
async fn example_seed_file_loads_and_serves() -> Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/seed.toml");
    let seed = Seed::load(&path)?;
    assert!(!seed.components.is_empty() && !seed.accounts.is_empty() && !seed.wecom.is_empty());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = SimConfig {
        auto_ticket_push: false,
        seed: Some(seed.clone()),
        ..SimConfig::default()
    };
    let server = tokio::spawn(wxhub_sim::run(config, listener, async {
        let _ = stopped.await;
    }));
    let http = client();
    let appid = &seed.components[0].appid;
    let view: serde_json::Value = http
        .get(format!("{base}/sim/components/{appid}"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(view["appid"], appid.as_str());
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server).await???;
    assert!(Seed::from_toml("components = 3").is_err());
    Ok(())
}
