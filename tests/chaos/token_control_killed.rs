//! Scenario 3: token-control replicas die and freeze while they hold refreshes.
//!
//! Three `wxhub-token-control` replicas refresh acme's component token and its two authorizers'
//! tokens: the sim grants 6 s tokens (refreshed at ~80 % of that) and rotates the refresh token
//! on every `api_authorizer_token`, and performs each token call at once but answers it only
//! 1.2 s later — so a replica holding a refresh holds a token WeChat already issued and, for an
//! authorizer, a refresh token WeChat already replaced. Each replica reaches WeChat through a
//! fault proxy of its own, which shows when it has a call in flight: that is when it is hit.
//!
//! 1. The first of replicas 1 and 2 to have a WeChat call in flight is SIGKILLed, and
//!    restarted 5 s later.
//! 2. The first of them to have one then is SIGSTOPped, for 5 s past its lease
//!    (`lock_ttl_ms`), then SIGCONTinued. It waits for WeChat longer than that (its
//!    `wechat.timeout_ms` is 20 s), so on resuming it reads WeChat's answer and tries to write a
//!    token its lease no longer covers: the fence must refuse it.
//!
//! A reader asks replica 3 (never hit) for the three tokens all along and checks each served token against
//! WeChat at once. Afterwards, from Redis and the sim: every stored token is the one WeChat issued
//! last (no stale overwrite), every stored refresh token is WeChat's current one (none lost),
//! and the replicas serve the stored token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wxhub_sim::{CallFilter, FaultSpec, SimConfig};
use wxhub_testkit::proxy::FaultProxy;
use wxhub_tests::{COMPONENT, TENANT};

use crate::harness::{Service, World, full};
use crate::tokens::{self, CREDENTIALS};

const AUTHORIZER_TOKEN: &str = "/cgi-bin/component/api_authorizer_token";
const COMPONENT_TOKEN: &str = "/cgi-bin/component/api_component_token";
const LOCK_TTL_MS: u64 = 3000;

fn label(appid: &str) -> &str {
    if appid.is_empty() { "component" } else { appid }
}

/// WeChat's latest token for `appid` (the component's own for `""`).
fn wechat_token(world: &World, appid: &str) -> Option<String> {
    if appid.is_empty() {
        world.sim.component(COMPONENT)?.access_token
    } else {
        world.sim.authorizer(COMPONENT, appid)?.access_token
    }
}

/// The first of `proxies` to have a WeChat call in flight (waits at most 40 s).
async fn first_holding(proxies: &[&FaultProxy]) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        if let Some(i) = proxies.iter().position(|p| p.awaiting() > 0) {
            return Some(i);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

#[derive(Default)]
struct Reads {
    ok: u64,
    failed: Vec<String>,
    /// Served tokens WeChat refused at the time they were served.
    refused: u64,
    slowest: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "part of `make chaos` (about 50 s), not of `make test`"]
async fn token_control_replicas_killed_and_paused_while_refreshing_lose_nothing() {
    let world = World::start(
        "chaos-token-control",
        SimConfig {
            token_ttl: Duration::from_secs(6),
            rotate_refresh_tokens: true,
            ..SimConfig::default()
        },
    )
    .await;
    world.give_ticket().await;
    for path in [AUTHORIZER_TOKEN, COMPONENT_TOKEN] {
        world
            .sim
            .add_fault(FaultSpec::respond_after(
                path,
                Duration::from_millis(1200),
                None,
            ))
            .expect("fault");
    }
    let sim: SocketAddr = world
        .sim
        .base_url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("sim address");
    let mut replicas = Vec::new();
    for i in 0..3 {
        let proxy = FaultProxy::start(sim).await.expect("proxy");
        let base = format!("http://{}", proxy.addr());
        // Replicas 1 and 2 (the ones hit) wait for WeChat longer than a pause: when a paused
        // one resumes, WeChat's answer is there, and it tries to write a token its lease no
        // longer covers.
        let timeout = if i < 2 { 20_000 } else { 2_500 };
        let (service, url, ops) = world
            .token_control(
                wxhub_testkit::redis_env(),
                &[
                    ("WXHUB_WECHAT__API_BASE", base),
                    ("WXHUB_WECHAT__TIMEOUT_MS", timeout.to_string()),
                    ("WXHUB_TOKEN_CONTROL__LOCK_TTL_MS", LOCK_TTL_MS.to_string()),
                    ("WXHUB_TOKEN_CONTROL__CLAIM_MS", "5000".to_owned()),
                    (
                        "WXHUB_TOKEN_CONTROL__DEFAULT_MIN_REMAINING_MS",
                        "1000".to_owned(),
                    ),
                ],
            )
            .await;
        replicas.push((service, url, ops, proxy));
    }
    world.wait_for_authorizers().await;
    let calls_before = world
        .sim
        .calls(&CallFilter {
            path: Some(AUTHORIZER_TOKEN.into()),
            ..CallFilter::default()
        })
        .len();

    // The reader: replica 3, every credential, checked against WeChat as served.
    let reading = Arc::new(AtomicBool::new(true));
    let reader = {
        let (url, reading) = (replicas[2].1.clone(), reading.clone());
        let sim = world.sim.clone();
        tokio::spawn(async move {
            let mut reads = Reads::default();
            while reading.load(Ordering::SeqCst) {
                for appid in CREDENTIALS {
                    let started = Instant::now();
                    match tokens::read(&url, appid, Duration::from_secs(10)).await {
                        Ok(token) => {
                            reads.ok += 1;
                            reads.refused += u64::from(sim.check_token(&token).is_err());
                        }
                        Err(e) => reads.failed.push(format!("{}: {e}", label(appid))),
                    }
                    reads.slowest = reads.slowest.max(started.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            reads
        })
    };
    let pause_for = Duration::from_millis(LOCK_TTL_MS + 5000);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 1. SIGKILL of whichever of replicas 1 and 2 first has a call in flight; back 5 s later.
    let killed_one = first_holding(&[&replicas[0].3, &replicas[1].3]).await;
    let kill_holding = killed_one.is_some();
    let killed = Instant::now();
    let victim = killed_one.unwrap_or(0);
    replicas[victim].0.kill();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let restart = replicas[victim].0.restart().await;

    // 2. SIGSTOP of whichever first has a call in flight then, past the lease.
    let paused_one = first_holding(&[&replicas[0].3, &replicas[1].3]).await;
    let pause_holding = paused_one.is_some();
    let paused = paused_one.unwrap_or(1);
    replicas[paused].0.pause();
    tokio::time::sleep(pause_for).await;
    replicas[paused].0.resume();
    let run_more = if full() { 20 } else { 6 };
    tokio::time::sleep(Duration::from_secs(run_more)).await;
    reading.store(false, Ordering::SeqCst);
    let reads = reader.await.expect("reader");
    let window = killed.elapsed();

    // Converged: stored = WeChat's latest and accepted; refresh tokens = WeChat's current.
    let converging = Instant::now();
    let mismatch = loop {
        let mut mismatch = Vec::new();
        for appid in CREDENTIALS {
            let credential = if appid.is_empty() {
                "component".to_owned()
            } else {
                format!("authorizer:{appid}")
            };
            let stored = world
                .creds
                .token(TENANT, &credential)
                .await
                .expect("redis")
                .map(|t| t.value.expose().to_owned());
            let latest = wechat_token(&world, appid);
            if stored.is_none() || stored != latest {
                mismatch.push(format!("{}: stored is not WeChat's latest", label(appid)));
            }
            if !appid.is_empty() {
                let record = world.auths.get(TENANT, appid).await.expect("redis");
                let view = world.sim.authorizer(COMPONENT, appid).expect("authorizer");
                if record
                    .and_then(|r| r.refresh_token)
                    .map(|r| r.expose().to_owned())
                    != Some(view.refresh_token)
                {
                    mismatch.push(format!("{appid}: refresh token is not WeChat's current"));
                }
            }
        }
        if mismatch.is_empty() || converging.elapsed() > Duration::from_secs(20) {
            break mismatch;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let converged = converging.elapsed();
    // Every replica serves the stored token.
    let mut served_stale = 0;
    for (_, url, _, _) in &replicas {
        for appid in CREDENTIALS {
            let token = tokens::read(url, appid, Duration::from_secs(10))
                .await
                .expect("a replica answers after the faults");
            served_stale += usize::from(Some(token) != wechat_token(&world, appid));
        }
    }
    let refused_by_fence = Service::metric(
        &replicas[paused].2,
        "wxhub_token_stale_writes_refused_total",
    )
    .await;
    let mut metrics: HashMap<&str, f64> = HashMap::new();
    for (_, _, ops, _) in &replicas {
        for name in [
            "wxhub_token_stale_writes_refused_total",
            "wxhub_refresh_token_invalid_total",
            "wxhub_reconcile_refresh_tokens_total",
        ] {
            *metrics.entry(name).or_default() += Service::metric(ops, name).await;
        }
    }
    let refresh_calls = world
        .sim
        .calls(&CallFilter {
            path: Some(AUTHORIZER_TOKEN.into()),
            ..CallFilter::default()
        })
        .len()
        - calls_before;
    println!(
        "chaos token-control: 3 replicas, 6 s tokens, rotating refresh tokens, WeChat answering \
         token calls 1.2 s late; replica {} SIGKILLed (call in flight: {kill_holding}), ready \
         again {:.2} s after its restart; replica {} SIGSTOPped {:.1} s (call in flight: \
         {pause_holding}; lease {LOCK_TTL_MS} ms); over {:.1} s: reads via replica 3 ok {}, \
         failed {}, served tokens WeChat refused {}, slowest {:.2} s; authorizer-token calls \
         {refresh_calls}; the paused replica's writes refused by the fence \
         {refused_by_fence} (all replicas {}); refresh tokens WeChat refused \
         (61023) {}, healed by reconcile {}; converged {:.2} s after the load; tokens served afterwards \
         that are not WeChat's latest {served_stale}; mismatches {mismatch:?}",
        victim + 1,
        restart.as_secs_f64(),
        paused + 1,
        pause_for.as_secs_f64(),
        window.as_secs_f64(),
        reads.ok,
        reads.failed.len(),
        reads.refused,
        reads.slowest.as_secs_f64(),
        metrics["wxhub_token_stale_writes_refused_total"],
        metrics["wxhub_refresh_token_invalid_total"],
        metrics["wxhub_reconcile_refresh_tokens_total"],
        converged.as_secs_f64(),
    );
    assert!(
        kill_holding,
        "no replica had a WeChat call in flight to be killed in"
    );
    assert!(
        pause_holding,
        "no replica had a WeChat call in flight to be paused in"
    );
    // The credential it held expired during the pause and the reader needed it, so another
    // replica took the lease and refreshed it: the late write is a stale one.
    assert!(
        refused_by_fence >= 1.0,
        "the paused replica's late write was not refused by the fence"
    );
    assert!(
        mismatch.is_empty(),
        "stale tokens or lost refresh tokens: {mismatch:?}"
    );
    assert_eq!(
        served_stale, 0,
        "a replica serves a token that is not WeChat's latest"
    );
    assert_eq!(reads.refused, 0, "served tokens WeChat refuses");
    assert!(
        reads.failed.is_empty(),
        "reads through the healthy replica failed: {:?}",
        &reads.failed[..reads.failed.len().min(5)]
    );
    drop(replicas);
    world.stop(&[]).await;
}
