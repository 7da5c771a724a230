//! The inputs of `docs/scaling.md#capacity`: what one callback, one messaging job and one broker
//! publish cost, measured so that the figures can be multiplied out.
//!
//! 1. **Broker**: confirmed publishes/s that the one RabbitMQ node takes from the bus crate's
//!    publisher (64 in flight, a CallbackEvent of a text callback as the body, into the events
//!    exchange's quorum queue), no Redis, no HTTP.
//! 2. **Callbacks**: the release `wxhub-gateway` binary (next to this benchmark's own binary:
//!    `cargo bench -p wxhub-gateway --no-run` builds it) under wxhub-loadgen (signed, encrypted,
//!    80 % text / 20 % events), closed loop at 64 connections and open loop at a fixed rate.
//!    Per callback: the process's CPU time (utime + stime from `/proc/PID/stat`, start-up
//!    excluded), Redis commands (`INFO commandstats` deltas) and Redis memory (`used_memory`
//!    delta: the dedupe markers, which live `gateway.dedupe_done_ttl_secs`).
//! 3. **Instructions per callback** (when `valgrind` is installed): the same binary under
//!    `valgrind --tool=callgrind`, once idle and once taking `CAP_CALLGRIND_CALLBACKS` callbacks
//!    over the same time; the difference of the instruction totals divided by the callbacks.
//! 4. **Jobs**: the stack in one process (sim, token-control, worker; `wxhub_tests::Stack`),
//!    `CAP_JOBS` template messages with idempotency keys enqueued over gRPC and sent to the sim.
//!    Per job: Redis commands (minus the same stack's idle commands over the same time) and
//!    memory (job record, attempts, idempotency key, msgid index, limiter state).
//!
//! The benchmark runs itself again against a private `redis-server` on a free port (no
//! persistence), so the counts are its own; without `redis-server` it uses the shared Redis and
//! says so. `cargo bench -p wxhub-tests --bench capacity` (part of `make bench`). Knobs (env):
//! `CAP_SECS` (10), `CAP_RATE` (1000), `CAP_JOBS` (2000), `CAP_CALLGRIND_CALLBACKS` (1000),
//! `CAP_PARTS` (`broker,callbacks,jobs`: which of 1, 2–3 and 4 to run).

#![allow(clippy::print_stdout)] // the figures of a run are its output

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prost::Message as _;
use tokio_util::sync::CancellationToken;
use wxhub_bus::Outgoing;
use wxhub_loadgen::{LoadConfig, LoadReport};
use wxhub_proto::events::v1::CallbackEvent;
use wxhub_proto::messaging::v1 as pb;
use wxhub_proto::messaging::v1::messaging_client::MessagingClient;
use wxhub_testkit::Namespace;
use wxhub_tests::cpu;
use wxhub_tests::messaging::enqueue_all;
use wxhub_tests::{AUTH1, OPS_KEY, Setup, Stack, TEMPLATE, TENANT, USERS, req, user};

const GW_TENANT: &str = "cap";
const COMPONENT: &str = "wx0cap0component";
const AUTHORIZER: &str = "wx0cap0account";
const TOKEN: &str = "cap-message-token";
const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
/// Set in the re-run against the private Redis.
const CHILD: &str = "WXHUB_CAPACITY_REDIS";

// The allocator of the services' binaries (gateway, worker, relay).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(run());
        return;
    }
    let status = match PrivateRedis::start() {
        Some(redis) => {
            let status = Command::new(std::env::current_exe().expect("current exe"))
                .env(CHILD, &redis.url)
                .env("WXHUB_TEST_REDIS_URL", &redis.url)
                .status()
                .expect("the benchmark itself");
            drop(redis);
            status
        }
        None => {
            println!(
                "capacity: no redis-server binary: counts on the shared Redis include other clients"
            );
            Command::new(std::env::current_exe().expect("current exe"))
                .env(CHILD, wxhub_testkit::redis_url())
                .status()
                .expect("the benchmark itself")
        }
    };
    std::process::exit(status.code().unwrap_or(1));
}

/// A private `redis-server` on a free port, killed on drop.
struct PrivateRedis {
    child: Child,
    url: String,
}

impl PrivateRedis {
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        let redis = Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(redis);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `INFO` of the benchmark's Redis: command calls by name and `used_memory`.
#[derive(Default)]
struct RedisStats {
    calls: HashMap<String, u64>,
    used_memory: i64,
    keys: i64,
    /// `used_cpu_user + used_cpu_sys` of the server, seconds.
    cpu: f64,
}

impl RedisStats {
    async fn read(conn: &mut redis::aio::MultiplexedConnection) -> Self {
        let info: String = redis::cmd("INFO")
            .arg("all")
            .query_async(conn)
            .await
            .expect("INFO");
        let mut stats = Self::default();
        for line in info.lines() {
            if let Some(rest) = line.strip_prefix("cmdstat_")
                && let Some((name, fields)) = rest.split_once(':')
                && let Some(calls) = fields.split(',').find_map(|f| f.strip_prefix("calls="))
            {
                stats
                    .calls
                    .insert(name.to_owned(), calls.parse().unwrap_or(0));
            } else if let Some(v) = line
                .strip_prefix("used_cpu_user:")
                .or_else(|| line.strip_prefix("used_cpu_sys:"))
            {
                stats.cpu += v.trim().parse::<f64>().unwrap_or(0.0);
            } else if let Some(v) = line.strip_prefix("used_memory:") {
                stats.used_memory = v.trim().parse().unwrap_or(0);
            } else if let Some(v) = line.strip_prefix("db0:keys=") {
                stats.keys = v
                    .split(',')
                    .next()
                    .and_then(|k| k.parse().ok())
                    .unwrap_or(0);
            }
        }
        stats
    }

    /// Commands since `before`, by name, less the `INFO` calls of the benchmark itself.
    fn since(&self, before: &Self) -> HashMap<String, u64> {
        self.calls
            .iter()
            .map(|(name, n)| {
                let was = before.calls.get(name).copied().unwrap_or(0);
                let own = u64::from(name == "info");
                (name.clone(), n.saturating_sub(was).saturating_sub(own))
            })
            .filter(|(_, d)| *d > 0)
            .collect()
    }
}

/// "N.N per X (top: a=.. b=..)" of command deltas over `per` objects.
fn per_object(delta: &HashMap<String, u64>, per: f64) -> String {
    let total: u64 = delta.values().sum();
    let mut top: Vec<_> = delta.iter().collect();
    top.sort_by_key(|(name, n)| (std::cmp::Reverse(**n), (*name).clone()));
    format!(
        "{:.2} ({})",
        total as f64 / per,
        top.iter()
            .take(8)
            .map(|(name, n)| format!("{name}={:.2}", **n as f64 / per))
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// The benchmark Redis's keys by shape (a key with each id-like part — six characters or more,
/// a digit among them — replaced by `*`), for shapes with at least one key per ten of `per`
/// objects: keys per object, `MEMORY USAGE` bytes per key, and the TTL of one of them.
async fn key_shapes(conn: &mut redis::aio::MultiplexedConnection, per: f64) -> String {
    let shape = |key: &str| {
        key.split(':')
            .map(|part| {
                if part.len() >= 6 && part.bytes().any(|b| b.is_ascii_digit()) {
                    "*"
                } else {
                    part
                }
            })
            .collect::<Vec<_>>()
            .join(":")
    };
    let mut keys: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .expect("SCAN");
        keys.extend(page);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    // shape → (keys, bytes, a TTL in seconds)
    let mut shapes: HashMap<String, (u64, u64, i64)> = HashMap::new();
    for chunk in keys.chunks(1000) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("MEMORY").arg("USAGE").arg(key).cmd("TTL").arg(key);
        }
        let answers: Vec<(Option<u64>, i64)> = pipe.query_async(conn).await.expect("MEMORY USAGE");
        for (key, (bytes, ttl)) in chunk.iter().zip(answers) {
            let entry = shapes.entry(shape(key)).or_default();
            entry.0 += 1;
            entry.1 += bytes.unwrap_or(0);
            entry.2 = ttl;
        }
    }
    let mut shapes: Vec<_> = shapes
        .into_iter()
        .filter(|(_, (n, _, _))| *n as f64 >= per / 10.0)
        .collect();
    shapes.sort_by_key(|(_, (_, bytes, _))| std::cmp::Reverse(*bytes));
    shapes
        .iter()
        .map(|(shape, (n, bytes, ttl))| {
            format!(
                "{shape} {:.2}/object {:.0} B TTL {ttl} s",
                *n as f64 / per,
                *bytes as f64 / *n as f64
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    let url = std::env::var(CHILD).expect("the private Redis");
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis")
}

async fn run() {
    let secs = env("CAP_SECS", 10);
    let rate = env("CAP_RATE", 1000) as f64;
    let jobs = env("CAP_JOBS", 2000);
    let callgrind_callbacks = env("CAP_CALLGRIND_CALLBACKS", 1000);
    wxhub_runtime::telemetry::init_for_tests();
    let _ = rustls::crypto::ring::default_provider().install_default();

    let parts = std::env::var("CAP_PARTS").unwrap_or_else(|_| "broker,callbacks,jobs".into());
    let part = |name: &str| parts.split(',').any(|p| p.trim() == name);
    if part("broker") {
        broker(secs).await;
    }
    if part("callbacks") {
        callbacks(secs, rate).await;
        callgrind(callgrind_callbacks).await;
    }
    if part("jobs") {
        jobs_cost(jobs).await;
    }
}

/// A CallbackEvent like the gateway publishes for a text callback.
fn sample_event(i: u64) -> Vec<u8> {
    let xml = format!(
        "<xml><ToUserName><![CDATA[gh_cap]]></ToUserName><FromUserName><![CDATA[o_cap_user_000000000000{i}]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[load test message {i} with some typical text content]]></Content><MsgId>{i}</MsgId></xml>"
    );
    CallbackEvent {
        tenant: GW_TENANT.into(),
        tenant_kind: "component".into(),
        appid: AUTHORIZER.into(),
        kind: "text".into(),
        xml,
        dedupe_key: format!("{GW_TENANT}:{AUTHORIZER}:msg:{i}"),
        received_at_ms: 1_700_000_000_000,
        encrypt_mode: "safe".into(),
        to_user_name: "gh_cap".into(),
        from_user_name: format!("o_cap_user_000000000000{i}"),
        create_time: 1_700_000_000,
        msg_type: "text".into(),
        msg_id: i,
        ..Default::default()
    }
    .encode_to_vec()
}

/// Step 1: confirmed publishes/s of the bus crate's publisher into one node's quorum queue.
async fn broker(secs: u64) {
    let cancel = CancellationToken::new();
    let ns = Namespace::new("cap-broker");
    let bus = ns.bus(&cancel).await;
    let queue = ns.topology().unrouted_queue();
    ns.track_queue(queue.clone());
    let exchange: Arc<str> = ns.topology().events_exchange().into();
    let size = sample_event(1_000_000).len();
    let concurrency = 64;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (bus, exchange, done, stop, next) = (
                bus.clone(),
                exchange.clone(),
                done.clone(),
                stop.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let body = sample_event(1_000_000 + i);
                    let id = format!("{GW_TENANT}:{AUTHORIZER}:msg:{i}");
                    bus.publish(&Outgoing {
                        exchange: &exchange,
                        routing_key: &format!("{GW_TENANT}.{AUTHORIZER}.text"),
                        body: &body,
                        message_id: &id,
                        message_type: wxhub_gateway::CALLBACK_EVENT_TYPE,
                        headers: &[],
                    })
                    .await
                    .expect("confirmed publish");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("publisher");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "capacity broker: {:.0} confirmed publishes/s on one node ({n} in {elapsed:.1} s, {concurrency} in flight, {size}-byte CallbackEvent bodies, quorum queue)",
        n as f64 / elapsed
    );
    ns.cleanup(Some(&bus), &[]).await;
}

/// The binary `name` next to this benchmark's own (`target/release`).
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name)
}

/// A running `wxhub-gateway` process (maybe under valgrind), stopped with SIGTERM on drop.
struct GatewayProcess {
    child: Child,
    url: String,
}

impl GatewayProcess {
    async fn start(ns: &Namespace, dir: &Path, wrapper: &[String]) -> Self {
        let tenants = dir.join("tenants.toml");
        std::fs::write(
            &tenants,
            format!(
                "[[tenants]]\nid = \"{GW_TENANT}\"\nkind = \"component\"\napp_id = \"{COMPONENT}\"\napp_secret = \"cap-secret\"\ntoken = \"{TOKEN}\"\nencoding_aes_key = \"{KEY}\"\n"
            ),
        )
        .expect("tenants file");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let gateway = binary("wxhub-gateway");
        assert!(
            gateway.exists(),
            "{} is not built (cargo bench -p wxhub-gateway --no-run)",
            gateway.display()
        );
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&gateway);
                cmd
            }
            None => Command::new(&gateway),
        };
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WXHUB_NAMESPACE", ns.name())
            .env("WXHUB_REDIS__URL", wxhub_testkit::redis_url())
            .env("WXHUB_TENANTS__FILE", &tenants)
            .env("WXHUB_GATEWAY__LISTEN", format!("127.0.0.1:{port}"))
            .env("WXHUB_AMQP__DELIVERY_LIMIT", "5")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in wxhub_testkit::amqp_env() {
            cmd.env(k, v);
        }
        let process = Self {
            child: cmd.spawn().expect("wxhub-gateway"),
            url: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        for _ in 0..1200 {
            if http
                .get(format!("{}/readyz", process.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return process;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the gateway did not become ready");
    }

    /// utime + stime of the process so far, seconds.
    fn cpu_secs(&self) -> f64 {
        cpu::cpu_secs(&self.child.id().to_string())
    }

    /// SIGTERM, then waits for the exit (a callgrind run writes its totals then).
    fn stop(mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn load(url: &str, concurrency: usize, secs: u64, rate: Option<f64>) -> LoadConfig {
    let mut cfg = LoadConfig::new(url, GW_TENANT, AUTHORIZER, TOKEN, KEY, COMPONENT);
    cfg.to_user_name = "gh_cap".into();
    cfg.concurrency = concurrency;
    cfg.duration = Duration::from_secs(secs);
    cfg.rate = rate;
    cfg.timeout = Duration::from_secs(10);
    cfg.pool_bytes = 1 << 30;
    cfg
}

/// The load generator on a thread and runtime of its own (one worker, like a separate client).
async fn drive(cfg: LoadConfig) -> LoadReport {
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("load runtime")
            .block_on(wxhub_loadgen::run(cfg))
            .expect("load run")
    })
    .await
    .expect("load thread")
}

/// Step 2: CPU time, Redis commands and Redis memory per callback of the release gateway binary.
async fn callbacks(secs: u64, rate: f64) {
    let ns = Namespace::new("cap-callbacks");
    ns.track_queue(ns.topology().unrouted_queue());
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = GatewayProcess::start(&ns, dir.path(), &[]).await;
    let mut conn = redis_conn().await;
    // Warm-up (connections, channels, allocator).
    let warm_up = drive(load(&gateway.url, 64, 2, None)).await;
    // Callbacks taken in all (each leaves its dedupe marker).
    let mut taken = warm_up.status.get("200").copied().unwrap_or(0);
    let runs = [
        (
            "closed loop, 64 connections".to_owned(),
            load(&gateway.url, 64, secs, None),
        ),
        (
            format!("open loop at {rate:.0}/s"),
            load(&gateway.url, 1024, secs, Some(rate)),
        ),
    ];
    for (what, cfg) in runs {
        let before = RedisStats::read(&mut conn).await;
        let cpu_before = gateway.cpu_secs();
        let report = drive(cfg).await;
        // The completer marks keys done just after the answers.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cpu = gateway.cpu_secs() - cpu_before;
        let after = RedisStats::read(&mut conn).await;
        let ok = report.status.get("200").copied().unwrap_or(0);
        assert_eq!(ok, report.sent, "every callback answered 200: {report}");
        taken += ok;
        let n = ok as f64;
        println!(
            "capacity callbacks ({what}): {ok} callbacks at {:.0}/s, p99 {:.1} ms; gateway CPU {:.1} µs per callback ({cpu:.2} s of utime+stime, {:.2} cores); Redis CPU {:.1} µs per callback; Redis commands per callback {}; Redis memory {:.0} bytes and {:.2} keys per callback (dedupe markers, kept gateway.dedupe_done_ttl_secs)",
            report.throughput,
            report.latency_ms.p99,
            cpu / n * 1e6,
            cpu / report.elapsed_s,
            (after.cpu - before.cpu) / n * 1e6,
            per_object(&after.since(&before), n),
            (after.used_memory - before.used_memory) as f64 / n,
            (after.keys - before.keys) as f64 / n,
        );
    }
    println!(
        "capacity callbacks: keys after both runs, by shape: {}",
        key_shapes(&mut conn, taken as f64).await
    );
    assert!(gateway.stop(), "the gateway stopped cleanly");
    ns.cleanup(None, &[]).await;
}

/// The `totals:` (or `summary:`) line of a callgrind output file: instructions executed.
fn callgrind_total(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Step 3: instructions per callback: callgrind totals with `n` callbacks minus idle, over the
/// same time, divided by `n`.
async fn callgrind(n: u64) {
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!(
            "capacity callgrind: valgrind is not installed (apt-get install valgrind): skipped"
        );
        return;
    }
    let secs = 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut totals = Vec::new();
    for callbacks in [0, n] {
        let ns = Namespace::new("cap-callgrind");
        ns.track_queue(ns.topology().unrouted_queue());
        let out = dir.path().join(format!("callgrind.{callbacks}"));
        let wrapper = [
            "valgrind".to_owned(),
            "--tool=callgrind".to_owned(),
            format!("--callgrind-out-file={}", out.display()),
        ];
        let gateway = GatewayProcess::start(&ns, dir.path(), &wrapper).await;
        let mut sent = 0;
        if callbacks == 0 {
            tokio::time::sleep(Duration::from_secs(secs)).await;
        } else {
            let report = drive(load(
                &gateway.url,
                64,
                secs,
                Some(callbacks as f64 / secs as f64),
            ))
            .await;
            sent = report.status.get("200").copied().unwrap_or(0);
            assert_eq!(sent, report.sent, "every callback answered 200: {report}");
        }
        assert!(
            gateway.stop(),
            "the gateway under callgrind stopped cleanly"
        );
        ns.cleanup(None, &[]).await;
        totals.push((sent, callgrind_total(&out).expect("callgrind totals")));
    }
    let (idle, (sent, busy)) = (totals[0].1, totals[1]);
    println!(
        "capacity callgrind: {:.0} instructions per callback ({sent} callbacks in {secs} s: {busy} instructions; idle {secs} s: {idle}; start-up and shutdown in both)",
        busy.saturating_sub(idle) as f64 / sent.max(1) as f64
    );
}

/// Step 4: Redis commands and memory per messaging job (template, idempotency key), the whole path.
async fn jobs_cost(jobs: u64) {
    let mut setup = Setup::new("cap-jobs");
    setup.tickets = true;
    // Limits the run never reaches: the limiter still runs (the same commands) but never waits.
    let unlimited = "{ count = 1000000, period_ms = 1000, burst = 1000000 }";
    setup.worker_env = [
        ("WXHUB_WORKER__LIMITS__TEMPLATE", unlimited),
        ("WXHUB_WORKER__LIMITS__TEMPLATE_PER_OPENID", unlimited),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let stack = Stack::start_with(setup).await.expect("stack");
    stack
        .sim
        .set_quota("/cgi-bin/message/template/send", None)
        .expect("no daily quota");
    let mut conn = redis_conn().await;
    let client = MessagingClient::connect(format!("http://{}", stack.worker))
        .await
        .expect("worker");
    let template = |i: u64| pb::EnqueueRequest {
        tenant: TENANT.into(),
        appid: AUTH1.into(),
        idempotency_key: format!("cap-order-{i}"),
        message: Some(pb::enqueue_request::Message::Template(
            pb::TemplateMessage {
                touser: user(usize::try_from(i).unwrap_or(0) % USERS),
                template_id: TEMPLATE.into(),
                data: [(
                    "keyword1".to_owned(),
                    pb::TemplateValue {
                        value: format!("order {i} shipped"),
                        color: String::new(),
                    },
                )]
                .into(),
                ..Default::default()
            },
        )),
    };
    // Warm-up: the token is fetched, the channels open.
    let mut c = client.clone();
    c.enqueue(req(template(u64::MAX), OPS_KEY))
        .await
        .expect("enqueue");
    while stack.sim.message_count(&Default::default()) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.sim.clear_messages();

    // The stack's own commands while idle (token-control's schedule polls, the worker's loops).
    let idle_secs = 5;
    let before = RedisStats::read(&mut conn).await;
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let idle_after = RedisStats::read(&mut conn).await;
    let idle_redis_cpu = idle_after.cpu - before.cpu;
    let idle = idle_after.since(&before);

    let before = RedisStats::read(&mut conn).await;
    let process_before = cpu::cpu_secs("self");
    let started = Instant::now();
    enqueue_all(&client, jobs, (16, 0), template).await;
    let target = usize::try_from(jobs).unwrap_or(usize::MAX);
    while stack.sim.message_count(&Default::default()) < target {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "sends stalled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The outcome is recorded just after the send.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let took = started.elapsed().as_secs_f64();
    let process = cpu::cpu_secs("self") - process_before;
    let after = RedisStats::read(&mut conn).await;
    let mut delta = after.since(&before);
    for (name, n) in &idle {
        let share = (*n as f64 * took / idle_secs as f64) as u64;
        if let Some(d) = delta.get_mut(name) {
            *d = d.saturating_sub(share);
        }
    }
    let n = jobs as f64;
    let idle_cpu = (idle_redis_cpu / idle_secs as f64) * took;
    println!(
        "capacity jobs: {jobs} template jobs enqueued and sent in {took:.1} s; CPU per job: {:.0} µs of this process (worker, token-control, sim, gateway and the gRPC client: an upper bound of the worker's), Redis {:.1} µs (less its idle CPU); Redis commands per job {} (the stack's idle commands over the same time subtracted: {:.0}/s); Redis memory {:.0} bytes and {:.2} keys per job (record, attempts, idempotency key, msgid index; kept worker.job_ttl_secs)",
        process / n * 1e6,
        (after.cpu - before.cpu - idle_cpu).max(0.0) / n * 1e6,
        per_object(&delta, n),
        idle.values().sum::<u64>() as f64 / idle_secs as f64,
        (after.used_memory - before.used_memory) as f64 / n,
        (after.keys - before.keys) as f64 / n,
    );
    println!(
        "capacity jobs: keys by shape (MEMORY USAGE; what expires when): {}",
        key_shapes(&mut conn, n).await
    );
    stack.stop().await;
}
