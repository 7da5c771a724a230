//! The `wxhub-gateway` binary: `--dump-config`, the example config, and SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use wxhub_gateway::GatewayConfig;
use wxhub_runtime::config::Source;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_wxhub-gateway");

fn example_config() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/gateway.toml")
}

#[test]
fn the_example_config_is_valid_and_dump_config_redacts_secrets() {
    let config = GatewayConfig::load(&Source {
        file: Some(example_config()),
        env: vec![],
    })
    .expect("deploy/config/gateway.toml loads and validates");
    assert_eq!(config.gateway.deadline_ms, 4000);

    let out = Command::new(BIN)
        .args([
            "--config",
            example_config().to_str().unwrap(),
            "--dump-config",
        ])
        .env("WXHUB_AMQP__URL", "amqp://user:hunter2@rabbit:5672/%2f")
        .env("WXHUB_CLIENT__API_KEY", "key-that-must-not-print")
        .env("WXHUB_GATEWAY__DEADLINE_MS", "3000")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("[gateway]") && text.contains("deadline_ms = 3000"),
        "{text}"
    );
    assert!(
        !text.contains("hunter2") && !text.contains("key-that-must-not-print"),
        "{text}"
    );

    let bad = Command::new(BIN)
        .arg("--dump-config")
        .env("WXHUB_GATEWAY__DEADLINE_MS", "9000")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("deadline_ms"));
}

#[tokio::test]
async fn the_binary_serves_and_exits_cleanly_on_sigterm() {
    let ns = wxhub_testkit::Namespace::new("gw-bin");
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.toml");
    std::fs::write(&tenants, tenants_toml()).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(BIN)
        .env("WXHUB_NAMESPACE", ns.name())
        .envs(wxhub_testkit::redis_env())
        .env("WXHUB_AMQP__URL", wxhub_testkit::amqp_url())
        .env("WXHUB_AMQP__DELIVERY_LIMIT", "5")
        .env("WXHUB_TENANTS__FILE", &tenants)
        .env("WXHUB_GATEWAY__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = http();
    let ready = eventually(300, Duration::from_millis(100), || async {
        let res = client.get(format!("{base}/readyz")).send().await.ok()?;
        (res.status() == StatusCode::OK).then_some(())
    })
    .await;
    assert!(ready.is_some(), "the binary never became ready");
    let xml = text_xml("gh_bin", "oBin", "via the binary", 7_900_000_001);
    let cb = callback(
        "/wx/comp/callback/wxauth0000000001",
        &comp(),
        Framing::Safe,
        &xml,
    );
    let res = client
        .post(format!("{base}{}", cb.path_and_query))
        .body(cb.body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status:?}");

    let cancel = tokio_util::sync::CancellationToken::new();
    let reader = ns.bus(&cancel).await;
    let got = ns
        .drain_queue(
            &reader,
            &ns.topology().unrouted_queue(),
            Duration::from_millis(100),
        )
        .await;
    assert_eq!(got.len(), 1);
    ns.cleanup(Some(&reader), &[]).await;
}
