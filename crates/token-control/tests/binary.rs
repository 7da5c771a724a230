//! The `wxhub-token-control` binary: `--dump-config` redacts secrets; it serves health and
//! stops within its grace period on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wxhub_runtime::tenants::api_key_sha256;

#[test]
fn dump_config_redacts_secrets() {
    let out = Command::new(env!("CARGO_BIN_EXE_wxhub-token-control"))
        .arg("--dump-config")
        .env_remove("WXHUB_CONFIG")
        .env("WXHUB_AMQP__URL", "amqp://user:hunter2@mq:5672/%2f")
        .env("WXHUB_TOKEN_CONTROL__LOCK_TTL_MS", "4321")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("lock_ttl_ms = 4321"), "{text}");
    assert!(text.contains("amqp://user:***@mq"), "{text}");
    assert!(!text.contains("hunter2"));

    let bad = Command::new(env!("CARGO_BIN_EXE_wxhub-token-control"))
        .arg("--dump-config")
        .env_remove("WXHUB_CONFIG")
        .env("WXHUB_TOKEN_CONTROL__REFRESH_AT", "2")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("refresh_at"));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn serves_and_stops_on_sigterm_within_its_grace() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.toml");
    std::fs::write(
        &tenants,
        format!(
            "[[tenants]]\nid = \"oa\"\nkind = \"official_account\"\napp_id = \"wxoa\"\napp_secret = \"s\"\ntoken = \"t\"\nencoding_aes_key = \"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\"\n\n[[clients]]\nname = \"c\"\napi_key_sha256 = \"{}\"\ntenants = [\"oa\"]\n",
            api_key_sha256("k")
        ),
    )
    .unwrap();
    let (grpc, ops) = (free_port(), free_port());
    let ns = format!("t-bin-{:08x}", rand::random::<u32>());
    let mut child = Command::new(env!("CARGO_BIN_EXE_wxhub-token-control"))
        .env_remove("WXHUB_CONFIG")
        .env("WXHUB_NAMESPACE", &ns)
        .env("WXHUB_TENANTS__FILE", &tenants)
        .env("WXHUB_TOKEN_CONTROL__LISTEN", format!("127.0.0.1:{grpc}"))
        .env(
            "WXHUB_TOKEN_CONTROL__OPS_LISTEN",
            format!("127.0.0.1:{ops}"),
        )
        .env("WXHUB_SHUTDOWN__GRACE_MS", "3000")
        .envs(wxhub_testkit::redis_env())
        .env("WXHUB_AMQP__URL", wxhub_testkit::amqp_url())
        .env("WXHUB_AMQP__DELIVERY_LIMIT", "5")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut healthy = false;
    for _ in 0..200 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", ops)) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut reply = String::new();
            let _ = s.read_to_string(&mut reply);
            if reply.starts_with("HTTP/1.1 200") {
                healthy = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(healthy, "the ops listener answers /healthz");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", grpc)).is_ok(),
        "gRPC listens"
    );
    let started = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = status.expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    // Clean up the topology it declared (same names as any namespace's).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cancel = tokio_util::sync::CancellationToken::new();
        let bus = wxhub_bus::Bus::start(
            wxhub_bus::AmqpConfig::new(wxhub_testkit::amqp_url()),
            wxhub_bus::Topology::new(ns.clone(), 5),
            "cleanup",
            cancel.clone(),
        );
        if bus.wait_connected(Duration::from_secs(10)).await
            && let Ok(ch) = bus.channel().await
        {
            let _ = bus.topology().delete(&ch, &[]).await;
        }
        bus.close().await;
    });
}
