//! Scale: 100,000 authorizers in the simulator, 3 token-control replicas, virtual time.
//!
//! The replicas import the authorizers from `api_get_authorizer_list` at start (their first
//! tokens spread over 0.8 of a lifetime), then the benchmark moves the simulator's virtual clock
//! forward in steps of 10 s, each time waiting until every due refresh is done, for two token
//! lifetimes (4 virtual hours). Over the second lifetime it reports:
//!
//! - whether every token was refreshed before it expired (all token expiries are scanned every
//!   10 virtual minutes and at the end),
//! - upstream calls per authorizer (no authorizer refreshed twice within one refresh window:
//!   consecutive calls for one appid at least half a lifetime apart),
//! - refreshes per second: peak (10 s buckets) against the average,
//! - Redis commands per refresh (`INFO commandstats` deltas over the window, minus the
//!   benchmark's own polling and scans; other users of the same Redis add noise). Commands run
//!   inside Lua scripts are counted individually, next to the `evalsha` that ran them.
//!
//! - Redis memory per authorizer (`used_memory` after the import and at the end, less the
//!   empty Redis's).
//!
//! `WXHUB_BENCH_AUTHORIZERS` overrides the 100,000. The benchmark starts its own
//! `redis-server` on a free port (no persistence) so the command counts are its own; without a
//! `redis-server` binary it uses the shared one.

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wxhub_runtime::config::Source;
use wxhub_runtime::{Listeners, Service, Tenants, TenantsHandle};
use wxhub_sim::{AccountSeed, AuthorizationSeed, CallFilter, ComponentSeed, Seed, SimConfig};
use wxhub_store::{Authorizers, Credentials, Store};
use wxhub_testkit::Namespace;
use wxhub_token_control::{Config, FnClock, Options, TokenControl};

const COMPONENT: &str = "wxscale0000000001";
const LIFETIME_S: i64 = 7200;
const STEP_S: i64 = 10;
const AES: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

fn appid(i: usize) -> String {
    format!("wxs{i:015}")
}

/// `used_memory` of the benchmark's Redis, bytes.
async fn used_memory(store: &Store) -> i64 {
    let mut conn = store.conn();
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time of the benchmark's Redis so far (`used_cpu_user + used_cpu_sys`), seconds.
async fn redis_cpu(store: &Store) -> f64 {
    let mut conn = store.conn();
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_user:")
                .or_else(|| l.strip_prefix("used_cpu_sys:"))
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

/// utime + stime of this process (the 3 replicas, the simulator and the benchmark's polling)
/// so far, seconds.
fn own_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11)
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
    let hz: f64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    ticks as f64 / hz
}

async fn commandstats(store: &Store) -> HashMap<String, u64> {
    let mut conn = store.conn();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("cmdstat_")?;
            let (name, stats) = rest.split_once(':')?;
            let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// Expired tokens at `now_ms` (and tokens missing).
async fn expired(store: &Store, n: usize, now_ms: i64) -> (usize, usize) {
    let keys = store.keys("scale");
    let mut conn = store.conn();
    let (mut expired, mut missing) = (0, 0);
    for chunk in (0..n).collect::<Vec<_>>().chunks(2000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.hget(keys.token(&format!("authorizer:{}", appid(*i))), "exp");
        }
        let exps: Vec<Option<i64>> = pipe.query_async(&mut conn).await.unwrap();
        for e in exps {
            match e {
                None => missing += 1,
                Some(e) if e <= now_ms => expired += 1,
                Some(_) => {}
            }
        }
    }
    (expired, missing)
}

fn main() {
    let _ = wxhub_runtime::ops::prometheus();
    let n: usize = std::env::var("WXHUB_BENCH_AUTHORIZERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(n));
}

/// A private Redis (killed on drop), or `None` to use the shared one.
struct PrivateRedis(std::process::Child, String);

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn private_redis() -> Option<PrivateRedis> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(PrivateRedis(child, format!("redis://127.0.0.1:{port}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

async fn run(n: usize) {
    let wall = Instant::now();
    let redis = private_redis();
    let redis_url = redis
        .as_ref()
        .map_or_else(wxhub_testkit::redis_url, |r| r.1.clone());
    let ns = Namespace::new("bench-scale");
    let seed = Seed {
        components: vec![ComponentSeed {
            appid: COMPONENT.into(),
            secret: "scale-secret".into(),
            token: "t".into(),
            aes_key: AES.into(),
            auth_event_url: None,
            message_url_template: None,
            encryption: Default::default(),
            auto_ticket_push: false,
        }],
        accounts: (0..n)
            .map(|i| AccountSeed {
                appid: appid(i),
                user_name: format!("gh_{i:012}"),
                ..Default::default()
            })
            .collect(),
        authorizations: (0..n)
            .map(|i| AuthorizationSeed {
                component_appid: COMPONENT.into(),
                authorizer_appid: appid(i),
                refresh_token: None,
                func_info: None,
            })
            .collect(),
        ..Default::default()
    };
    let sim = wxhub_sim::start(SimConfig {
        auto_ticket_push: false,
        record_capacity: 4_000_000,
        seed: Some(seed),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let clock = sim.clock();
    let store =
        Store::connect(&wxhub_store::RedisConfig::new(redis_url.clone()), ns.name()).unwrap();
    let creds = Credentials::new(store.clone());
    let memory_empty = used_memory(&store).await;
    let _ = sim.push_ticket(COMPONENT).await;
    let ticket = sim.component(COMPONENT).unwrap().latest_ticket.unwrap();
    creds
        .store_ticket("scale", &ticket, clock.now_secs(), clock.now_ms())
        .await
        .unwrap();
    let tenants = TenantsHandle::fixed(
        Tenants::from_toml(&format!(
            "[[tenants]]\nid = \"scale\"\nkind = \"component\"\napp_id = \"{COMPONENT}\"\napp_secret = \"scale-secret\"\ntoken = \"t\"\nencoding_aes_key = \"{AES}\"\n"
        ))
        .unwrap(),
    );
    let base = sim.base_url();
    let config = Config::load(&Source {
        file: None,
        env: [
            ("WXHUB_NAMESPACE", ns.name().to_owned()),
            ("WXHUB_REDIS__URL", redis_url.clone()),
            ("WXHUB_TOKEN_CONTROL__CACHE_TTL_MS", "0".into()),
            ("WXHUB_WECHAT__API_BASE", base.clone()),
            ("WXHUB_WECHAT__MP_BASE", base.clone()),
            ("WXHUB_TOKEN_CONTROL__POLL_INTERVAL_MS", "10".into()),
            ("WXHUB_TOKEN_CONTROL__CLAIM_MS", "600000".into()),
            (
                "WXHUB_TOKEN_CONTROL__RECONCILE_SPREAD_MS",
                (LIFETIME_S * 800).to_string(),
            ),
            (
                "WXHUB_TOKEN_CONTROL__RECONCILE_INTERVAL_MS",
                "86400000".into(),
            ),
            (
                "WXHUB_TOKEN_CONTROL__TICKET_CHECK_INTERVAL_MS",
                "86400000".into(),
            ),
            ("WXHUB_TOKEN_CONTROL__READY_REQUIRES_TICKET", "false".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    })
    .unwrap();
    let stop = CancellationToken::new();
    let mut servers = Vec::new();
    let mut engines = Vec::new();
    for _ in 0..3 {
        let c = clock.clone();
        let replica = TokenControl::build(
            config.clone(),
            Options {
                clock: FnClock::new(move || c.now_ms()),
                tenants: Some(tenants.clone()),
                consume: false,
                ..Options::default()
            },
        )
        .await
        .unwrap();
        engines.push(replica.engine().clone());
        let listeners = Listeners::main_and_ops(
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        );
        servers.push(tokio::spawn(
            replica.serve(listeners, stop.clone().cancelled_owned()),
        ));
    }
    // The start-up reconcile imports every authorizer.
    let auths = Authorizers::new(store.clone());
    while auths.count("scale").await.unwrap() < n as u64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "refresh_scale: {n} authorizers imported from api_get_authorizer_list in {:.1} s",
        wall.elapsed().as_secs_f64()
    );
    let memory_imported = used_memory(&store).await;
    let t0 = clock.now_ms();
    let mut stats_before = HashMap::new();
    let mut violations = (0usize, 0usize);
    // (this process, Redis) CPU seconds when the measured window starts.
    let mut cpu_before = (0.0, 0.0);
    // Commands this benchmark itself sends, subtracted from the deltas.
    let (mut own_zcount, mut own_hget, mut own_info) = (0u64, 0u64, 0u64);
    let window_start = t0 + LIFETIME_S * 1000;
    let steps = 2 * LIFETIME_S / STEP_S;
    for step in 1..=steps {
        sim.advance(Duration::from_secs(STEP_S as u64));
        let now = clock.now_ms();
        // Wait until nothing is due and no claimed refresh is still running.
        loop {
            let due = creds.due_count("scale", now).await.unwrap();
            if !stats_before.is_empty() {
                own_zcount += 1;
            }
            if due == 0 && engines.iter().all(|e| e.pending_refreshes() == 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if now >= window_start && stats_before.is_empty() {
            stats_before = commandstats(&store).await;
            own_info += 1;
            cpu_before = (own_cpu_secs(), redis_cpu(&store).await);
            own_info += 1;
        }
        if now >= window_start && step % 60 == 0 {
            own_hget += n as u64;
            let (e, m) = expired(&store, n, clock.now_ms()).await;
            violations.0 += e;
            violations.1 += m;
        }
    }
    let stats_after = commandstats(&store).await;
    let cpu_window = (
        own_cpu_secs() - cpu_before.0,
        redis_cpu(&store).await - cpu_before.1,
    );
    let memory_end = used_memory(&store).await;
    let end = clock.now_ms();
    let (e, m) = expired(&store, n, end).await;
    violations.0 += e;
    violations.1 += m;
    stop.cancel();
    for s in servers {
        let _ = tokio::time::timeout(Duration::from_secs(15), s).await;
    }

    // Upstream calls in the measured lifetime.
    let calls = sim.calls(&CallFilter {
        path: Some("/cgi-bin/component/api_authorizer_token".into()),
        appid: None,
        errcode: Some(0),
    });
    let failed = sim
        .calls(&CallFilter {
            path: Some("/cgi-bin/component/api_authorizer_token".into()),
            appid: None,
            errcode: None,
        })
        .len()
        - calls.len();
    let mut per_appid: HashMap<&str, Vec<i64>> = HashMap::new();
    let mut all_times = Vec::new();
    for c in &calls {
        if let Some(a) = c.appid.as_deref() {
            per_appid.entry(a).or_default().push(c.sim_time_ms);
        }
    }
    let mut too_close = 0;
    let mut refreshed_in_window = 0;
    for times in per_appid.values_mut() {
        times.sort_unstable();
        too_close += times
            .windows(2)
            .filter(|w| w[1] - w[0] < LIFETIME_S * 1000 / 2)
            .count();
        if times.iter().any(|t| *t >= window_start) {
            refreshed_in_window += 1;
        }
        all_times.extend(times.iter().copied().filter(|t| *t >= window_start));
    }
    let in_window = all_times.len();
    let window_s = (end - window_start) as f64 / 1000.0;
    let mut buckets: HashMap<i64, u64> = HashMap::new();
    for t in &all_times {
        *buckets
            .entry((t - window_start) / (STEP_S * 1000))
            .or_default() += 1;
    }
    let peak = buckets.values().copied().max().unwrap_or(0) as f64 / STEP_S as f64;
    let mut minute: HashMap<i64, u64> = HashMap::new();
    for t in &all_times {
        *minute.entry((t - window_start) / 60_000).or_default() += 1;
    }
    let peak_minute = minute.values().copied().max().unwrap_or(0) as f64 / 60.0;
    let average = in_window as f64 / window_s;
    let own = |name: &str| match name {
        "zcount" => own_zcount,
        "hget" => own_hget,
        "info" => own_info,
        _ => 0,
    };
    let delta = |name: &str| {
        (stats_after.get(name).copied().unwrap_or(0))
            .saturating_sub(stats_before.get(name).copied().unwrap_or(0))
            .saturating_sub(own(name))
    };
    let total: u64 = stats_after.keys().map(|k| delta(k)).sum();
    let mut top: Vec<(String, u64)> = stats_after
        .keys()
        .map(|k| (k.clone(), delta(k)))
        .filter(|(_, d)| *d > 0)
        .collect();
    top.sort_by_key(|t| std::cmp::Reverse(t.1));
    let component_calls = sim
        .calls(&CallFilter {
            path: Some("/cgi-bin/component/api_component_token".into()),
            appid: None,
            errcode: None,
        })
        .len();
    println!(
        "refresh_scale: {n} authorizers, 3 replicas, {:.0} virtual s measured (second lifetime), {:.0} s wall in total",
        window_s,
        wall.elapsed().as_secs_f64()
    );
    println!(
        "refresh_scale: tokens expired at a scan: {} (missing: {}); authorizers refreshed in the window: {refreshed_in_window}/{n}",
        violations.0, violations.1
    );
    println!(
        "refresh_scale: upstream api_authorizer_token calls in the window: {in_window} (failed overall: {failed}); refreshes of one appid closer than half a lifetime: {too_close}; component token calls overall: {component_calls}"
    );
    println!(
        "refresh_scale: refreshes/s average {average:.1}, peak {peak:.1} (10 s buckets, {:.2}x average), peak {peak_minute:.1} (60 s buckets, {:.2}x)",
        peak / average,
        peak_minute / average
    );
    println!(
        "refresh_scale: Redis commands per refresh {:.1} ({} commands / {in_window} refreshes; top: {})",
        total as f64 / in_window.max(1) as f64,
        total,
        top.iter()
            .take(8)
            .map(|(k, d)| format!("{k}={:.2}", *d as f64 / in_window.max(1) as f64))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "refresh_scale: CPU per refresh in the window: {:.0} µs of this process (3 replicas, the simulator and the benchmark's polls and scans: an upper bound of token-control's), {:.1} µs of Redis (the scans included)",
        cpu_window.0 / in_window.max(1) as f64 * 1e6,
        cpu_window.1 / in_window.max(1) as f64 * 1e6,
    );
    println!(
        "refresh_scale: Redis used_memory {:.0} MB after the import ({:.0} bytes per authorizer), {:.0} MB after two lifetimes ({:.0} bytes per authorizer: record, refresh token, token, schedule and index entries, leases)",
        (memory_imported - memory_empty) as f64 / 1e6,
        (memory_imported - memory_empty) as f64 / n as f64,
        (memory_end - memory_empty) as f64 / 1e6,
        (memory_end - memory_empty) as f64 / n as f64,
    );
    if redis.is_none() {
        ns.cleanup(None, &[]).await;
    }
    println!(
        "refresh_scale: Redis: {}",
        if redis.is_some() {
            "private redis-server"
        } else {
            "shared (counts include other clients)"
        }
    );
    sim.shutdown().await;
}
