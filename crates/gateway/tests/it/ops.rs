//! Tenants hot reload, health, readiness and metrics.

use std::time::Duration;

use reqwest::StatusCode;

use crate::common::*;

const LATE_KEY: &str = "LATExxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx1";

fn with_late_tenant() -> String {
    format!(
        "{}\n[[tenants]]\nid = \"late\"\nkind = \"official_account\"\napp_id = \"wxlate0000000001\"\napp_secret = \"late-secret\"\ntoken = \"latetoken\"\nencoding_aes_key = \"{LATE_KEY}\"\n",
        tenants_toml()
    )
}

#[tokio::test]
async fn a_new_tenant_becomes_reachable_without_a_restart() {
    let h = Harness::start("gw-reload").await;
    h.wait_connected().await;
    let late = crypt("latetoken", LATE_KEY, "wxlate0000000001");
    let xml = text_xml("gh_late", "oLate", "hello", 7_800_000_001);
    let (status, _) = h
        .post(&callback("/wx/late/callback", &late, Framing::Safe, &xml))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    std::fs::write(&h.tenants_file, with_late_tenant()).unwrap();
    let reached = eventually(200, Duration::from_millis(50), || async {
        let (status, _) = h
            .post(&callback("/wx/late/callback", &late, Framing::Safe, &xml))
            .await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    assert!(reached.is_some(), "the reloaded tenant was never served");
    let got = h.take(&h.unrouted()).await;
    assert_eq!(got.len(), 1);
    assert_eq!(event_of(&got[0]).tenant, "late");

    // A broken file is ignored; the tenants stay.
    std::fs::write(&h.tenants_file, "[[tenants]]\nid = ").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let xml2 = text_xml("gh_late", "oLate", "still here", 7_800_000_002);
    assert_eq!(
        h.post(&callback("/wx/late/callback", &late, Framing::Safe, &xml2))
            .await
            .0,
        StatusCode::OK
    );

    // Removing the tenant makes its URL unknown again.
    std::fs::write(&h.tenants_file, tenants_toml()).unwrap();
    let gone = eventually(200, Duration::from_millis(50), || async {
        let xml = text_xml("gh_late", "oLate", "gone?", 7_800_000_003);
        let (status, _) = h
            .post(&callback("/wx/late/callback", &late, Framing::Safe, &xml))
            .await;
        (status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert!(gone.is_some());
    h.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let h = Harness::start("gw-ops").await;
    h.wait_connected().await;
    assert_eq!(h.get("/healthz").await, (StatusCode::OK, "ok".to_owned()));
    let ready = eventually(100, Duration::from_millis(50), || async {
        let (status, body) = h.get("/readyz").await;
        (status == StatusCode::OK).then_some(body)
    })
    .await
    .expect("ready");
    let v: serde_json::Value = serde_json::from_str(&ready).unwrap();
    for check in ["redis", "rabbitmq", "tenants", "serving"] {
        assert_eq!(v[check]["ok"], true, "{check}: {ready}");
    }
    let xml = text_xml("gh_acme", "oOps", "m", 7_800_000_010);
    let cb = callback(
        "/wx/comp/callback/wxauth0000000001",
        &comp(),
        Framing::Safe,
        &xml,
    );
    assert_eq!(h.post(&cb).await.0, StatusCode::OK);
    let metrics = h.metrics().await;
    for name in [
        "wxhub_gateway_requests_total",
        "wxhub_gateway_handle_seconds",
        "wxhub_gateway_publish_seconds",
        "wxhub_gateway_published_total",
        "wxhub_gateway_dedupe_total",
        "wxhub_gateway_budget_seconds",
        "wxhub_gateway_inflight_requests",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    assert!(metrics.contains("outcome=\"published\""));
    assert!(metrics.contains("tenant=\"comp\""));
    assert!(!metrics.contains("comptoken") && !metrics.contains("secret-value"));
    h.take(&h.unrouted()).await;
    h.stop().await;
}
