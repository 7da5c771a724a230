//! The load generator against a trivial receiver that checks every body (and decrypts it with
//! the crypto and message crates, which it shares with the gateway, not with the generator).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::routing::post;
use wxhub_crypto::Crypt;
use wxhub_loadgen::{self as load, Encryption, LoadConfig, LoadKind};
use wxhub_message::{Limits, parse_envelope, parse_message};

const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const TOKEN: &str = "simtoken";

const C: &str = "wxcomp_load";

#[derive(Clone)]
struct Sink {
    crypt: Crypt,
    keys: Arc<Mutex<HashSet<String>>>,
    bad: Arc<Mutex<u64>>,
}

async fn sink(State(s): State<Sink>, RawQuery(q): RawQuery, body: Bytes) -> &'static str {
    let q: HashMap<String, String> = url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let ok = (|| {
        s.crypt
            .verify_signature(q.get("signature")?, q.get("timestamp")?, q.get("nonce")?)
            .ok()?;
        let xml = match q.get("encrypt_type") {
            Some(_) => {
                let env = parse_envelope(&body, &Limits::default()).ok()?;
                let plain = s
                    .crypt
                    .verify_and_decrypt(
                        q.get("msg_signature")?,
                        q.get("timestamp")?,
                        q.get("nonce")?,
                        env.encrypt()?,
                    )
                    .ok()?;
                plain.message_str().ok()?.to_owned()
            }
            None => String::from_utf8(body.to_vec()).ok()?,
        };
        Some(parse_message(&xml).ok()?.dedupe_key())
    })();
    match ok {
        Some(key) => {
            s.keys.lock().unwrap().insert(key);
        }
        None => *s.bad.lock().unwrap() += 1,
    }
    "success"
}

async fn receiver() -> (String, Sink) {
    let s = Sink {
        crypt: Crypt::from_parts(TOKEN, KEY, C).unwrap(),
        keys: Arc::default(),
        bad: Arc::default(),
    };
    let app = Router::new().fallback(post(sink)).with_state(s.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, s)
}

#[tokio::test]
async fn closed_loop_posts_unique_valid_callbacks() -> Result<()> {
    let (url, sink) = receiver().await;
    let mut cfg = LoadConfig::new(&url, "acme", "wxauth_load", TOKEN, KEY, C);
    cfg.concurrency = 8;
    cfg.duration = Duration::from_millis(800);
    cfg.mix = vec![
        (LoadKind::Text, 50),
        (LoadKind::Event, 30),
        (LoadKind::Image, 10),
        (LoadKind::Location, 10),
    ];
    let report = load::run(cfg).await?;
    assert!(report.completed > 50, "{report}");
    assert_eq!(report.errors, 0, "{report}");
    assert_eq!(report.status.get("200").copied(), Some(report.completed));
    assert!(report.throughput > 0.0 && report.latency_ms.p50 > 0.0);
    assert!(
        report.latency_ms.p50 <= report.latency_ms.p99
            && report.latency_ms.p99 <= report.latency_ms.max
    );
    assert_eq!(*sink.bad.lock().unwrap(), 0);
    // Every delivered callback had its own dedupe key (unless the pool was reused).
    assert!(!report.reused_bodies);
    assert_eq!(sink.keys.lock().unwrap().len() as u64, report.completed);
    Ok(())
}

#[tokio::test]
async fn open_loop_holds_the_rate_and_reports_reuse() -> Result<()> {
    let (url, sink) = receiver().await;
    let mut cfg = LoadConfig::new(&url, "acme", "wxauth_load", TOKEN, KEY, C);
    cfg.rate = Some(200.0);
    cfg.concurrency = 4;
    cfg.duration = Duration::from_secs(1);
    cfg.mode = Encryption::Compatible;
    // A pool too small for 200 bodies: they are reused and the report says so.
    cfg.pool_bytes = 50 * 1024;
    let report = load::run(cfg).await?;
    assert!((190..=201).contains(&report.sent), "{report}");
    assert!(report.reused_bodies);
    assert!(report.unique_bodies < 200);
    assert_eq!(
        sink.keys.lock().unwrap().len(),
        report.unique_bodies.min(report.completed as usize)
    );
    Ok(())
}

#[tokio::test]
async fn plain_mode_and_json_output_through_the_cli() -> Result<()> {
    let (url, sink) = receiver().await;
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = wxhub_loadgen::cli::main_with(
        [
            "wxhub-loadgen",
            "--gateway",
            &url,
            "--tenant",
            "acme",
            "--appid",
            "wxauth_load",
            "--token",
            TOKEN,
            "--aes-key",
            KEY,
            "--component-appid",
            C,
            "--max",
            "--concurrency",
            "2",
            "--duration",
            "0.3",
            "--mode",
            "plain",
            "--mix",
            "text=1,link=1,voice=1",
            "--json",
        ],
        &mut out,
        &mut err,
    )
    .await;
    assert_eq!(
        code,
        std::process::ExitCode::SUCCESS,
        "{}",
        String::from_utf8_lossy(&err)
    );
    let report: serde_json::Value = serde_json::from_slice(&out)?;
    assert!(
        report["completed"].as_u64().unwrap_or_default() > 0,
        "{report}"
    );
    assert_eq!(report["mode"], "plain");
    assert_eq!(*sink.bad.lock().unwrap(), 0);

    let code = wxhub_loadgen::cli::main_with(
        [
            "wxhub-loadgen",
            "--gateway",
            &url,
            "--tenant",
            "a",
            "--appid",
            "b",
            "--token",
            "t",
            "--aes-key",
            KEY,
            "--component-appid",
            C,
        ],
        &mut Vec::new(),
        &mut err,
    )
    .await;
    assert_eq!(code, std::process::ExitCode::from(2));
    assert!(String::from_utf8_lossy(&err).contains("--rate"));
    Ok(())
}

#[tokio::test]
async fn rejects_bad_configuration() {
    let mut cfg = LoadConfig::new("http://127.0.0.1:9", "a", "b", TOKEN, "short", C);
    assert!(load::run(cfg.clone()).await.is_err());
    cfg.aes_key = KEY.into();
    cfg.concurrency = 0;
    assert!(load::run(cfg.clone()).await.is_err());
    cfg.concurrency = 1;
    cfg.rate = Some(-1.0);
    assert!(load::run(cfg).await.is_err());
    assert!(load::parse_mix("text=1,bogus=2").is_err());
    assert!(load::parse_mix("text=0").is_err());
    assert_eq!(
        load::parse_mix("text=80, event=20").map(|m| m.len()).ok(),
        Some(2)
    );
}
