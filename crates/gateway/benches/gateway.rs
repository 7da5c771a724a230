//! Gateway throughput against its floor, on the local Redis and RabbitMQ (`make bench`).
//!
//! 1. **Floor**: `BENCH_CONCURRENCY` (64) tasks each doing exactly the gateway's storage work per
//!    callback — Redis dedupe claim, confirmed publish of a CallbackEvent-sized body to the same
//!    topology (events exchange → alternate exchange → quorum queue), dedupe complete — with no
//!    HTTP and no crypto. Reports confirmed publishes/s.
//! 2. **Gateway at max**: the gateway in-process on port 0; the load generator (wxhub-loadgen:
//!    signed, encrypted, safe-mode callbacks; 80 % text, 20 % events) in closed loop at the same
//!    concurrency. Every 200 must be in the queue: the queue is counted afterwards.
//! 3. **Gateway at half that rate**: open loop; p50/p99 latency from the scheduled send time.
//!
//! `BENCH_SECS` (default 10) sets each measured run's length. Prints one block of figures.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lapin::options::{QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use wxhub_bus::{Bus, Outgoing};
use wxhub_gateway::{CALLBACK_EVENT_TYPE, Gateway, GatewayConfig};
use wxhub_loadgen::{LoadConfig, LoadReport};
use wxhub_proto::events::v1::CallbackEvent;
use wxhub_runtime::config::Source;
use wxhub_runtime::{Listeners, Service};
use wxhub_store::dedupe::{Claim, Dedupe};
use wxhub_testkit::Namespace;

// The same allocator as the wxhub-gateway binary.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN: &str = "bench-message-token";
const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const COMPONENT: &str = "wxbenchcomponent";
const AUTHORIZER: &str = "wxbenchauthorizer1";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn out(line: &str) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Messages in `queue` now; then empties it.
async fn count_and_purge(bus: &Bus, queue: &str) -> u64 {
    let ch = bus.channel().await.expect("channel");
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    let n = u64::from(q.message_count());
    ch.queue_purge(queue.into(), QueuePurgeOptions::default())
        .await
        .expect("purge");
    settle(bus).await;
    n
}

/// Publishes a tiny confirmed message to the release-check queue; returns how long the broker
/// took to confirm it.
async fn probe(bus: &Bus) -> Result<Duration, wxhub_bus::BusError> {
    let sent = Instant::now();
    let jobs = bus.topology().jobs_exchange();
    bus.publish(&Outgoing {
        exchange: &jobs,
        routing_key: wxhub_bus::topology::RELEASE_CHECK_KEY,
        body: b"broker probe",
        message_id: "broker-probe",
        message_type: "bench.probe",
        headers: &[],
    })
    .await?;
    Ok(sent.elapsed())
}

/// Waits until the broker has digested the last run (a purge of ~100k messages from a quorum
/// queue keeps it busy writing and truncating its log for several seconds): confirmed probe
/// publishes must come back in under 5 ms for 40 in a row (at most 60 s).
async fn settle(bus: &Bus) {
    let started = Instant::now();
    let mut quick = 0;
    while quick < 40 && started.elapsed() < Duration::from_secs(60) {
        quick = match probe(bus).await {
            Ok(took) if took < Duration::from_millis(5) => quick + 1,
            _ => 0,
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ch = bus.channel().await.expect("channel");
    let probes = bus.topology().release_check_queue();
    let _ = ch
        .queue_purge(probes.as_str().into(), QueuePurgeOptions::default())
        .await;
}

/// A consumer that empties `queue` while a latency run goes on, as the services consuming the
/// events do in production, and counts what it took.
///
/// Without it a 30 s run leaves ~300,000 unconsumed messages in the quorum queue, and when
/// RabbitMQ's write-ahead log rolls over (every 512 MB written, so about every 50 s at these
/// rates) it must copy every retained message into segment files: a stall of hundreds of
/// milliseconds that hits the floor exactly as it hits the gateway. Consumed and acknowledged
/// messages are not copied, so with the consumer the tail is the publishing path's own.
struct Drain {
    taken: Arc<AtomicU64>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Drain {
    async fn start(bus: &Bus, queue: &str) -> Self {
        use futures::StreamExt as _;
        use lapin::options::{
            BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions,
        };
        let ch = bus.channel().await.expect("channel");
        ch.basic_qos(2000, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut consumer = ch
            .basic_consume(
                queue.into(),
                "bench-drain".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let taken = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let task = {
            let (taken, stop) = (taken.clone(), stop.clone());
            tokio::spawn(async move {
                // One acknowledgement for many deliveries keeps the consumer cheap.
                let ack = |acker: lapin::Acker| async move {
                    acker
                        .ack(BasicAckOptions { multiple: true })
                        .await
                        .expect("ack");
                };
                let mut last = None;
                let mut unacked = 0u64;
                let mut stopping = false;
                loop {
                    let next = if stopping {
                        // After the cancel the broker sends nothing new; what it sent already
                        // is taken too, so nothing returns to the queue after it was counted
                        // (a quorum queue requeues asynchronously: it could land after the
                        // count and the purge).
                        match tokio::time::timeout(Duration::from_secs(2), consumer.next()).await {
                            Ok(next) => next,
                            Err(_) => break,
                        }
                    } else {
                        tokio::select! {
                            () = stop.cancelled() => {
                                stopping = true;
                                ch.basic_cancel("bench-drain".into(), BasicCancelOptions::default())
                                    .await
                                    .expect("cancel the drain");
                                continue;
                            }
                            next = consumer.next() => next,
                        }
                    };
                    let Some(Ok(delivery)) = next else { break };
                    unacked += 1;
                    if unacked >= 500 {
                        ack(delivery.acker).await;
                        taken.fetch_add(unacked, Ordering::Relaxed);
                        unacked = 0;
                        last = None;
                    } else {
                        last = Some(delivery.acker);
                    }
                }
                if let Some(acker) = last {
                    ack(acker).await;
                    taken.fetch_add(unacked, Ordering::Relaxed);
                }
                let _ = ch.close(200, "drained".into()).await;
            })
        };
        Self { taken, stop, task }
    }

    /// Stops consuming; returns how many messages were taken and acknowledged.
    async fn finish(self) -> u64 {
        self.stop.cancel();
        self.task.await.expect("drain task");
        self.taken.load(Ordering::Relaxed)
    }
}

/// Times a confirmed publish of a tiny message every 10 ms on the bench's own connection while a
/// latency run goes on: when the broker itself stalls (RabbitMQ's quorum-queue write-ahead log
/// rolls over every 512 MB written, about every 45-60 s at these rates, and holds every confirm
/// for 200-550 ms on this machine) the report says so next to the tail it causes.
struct BrokerProbe {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<(u64, u64, f64)>,
}

impl BrokerProbe {
    fn start(bus: &Bus) -> Self {
        let stop = CancellationToken::new();
        let task = {
            let (bus, stop) = (bus.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut probes, mut slow, mut worst) = (0u64, 0u64, 0f64);
                while !stop.is_cancelled() {
                    let took = probe(&bus).await.expect("probe publish");
                    let ms = took.as_secs_f64() * 1000.0;
                    probes += 1;
                    slow += u64::from(ms > 50.0);
                    worst = worst.max(ms);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (probes, slow, worst)
            })
        };
        Self { stop, task }
    }

    /// "broker probes: N, over 50 ms: K, slowest X ms".
    async fn finish(self) -> String {
        self.stop.cancel();
        let (probes, slow, worst) = self.task.await.expect("probe task");
        format!("broker probes {probes}, over 50 ms {slow}, slowest {worst:.0} ms")
    }
}

/// A CallbackEvent like the gateway publishes for a text message.
fn sample_event(i: u64) -> Vec<u8> {
    let xml = format!(
        "<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[o_bench_user_000000000000{i}]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[load test message {i} with some typical text content]]></Content><MsgId>{i}</MsgId></xml>"
    );
    CallbackEvent {
        tenant: "bench".into(),
        tenant_kind: "component".into(),
        appid: AUTHORIZER.into(),
        kind: "text".into(),
        xml,
        dedupe_key: format!("bench:{AUTHORIZER}:msg:{i}"),
        received_at_ms: 1_700_000_000_000,
        encrypt_mode: "safe".into(),
        to_user_name: "gh_bench".into(),
        from_user_name: format!("o_bench_user_000000000000{i}"),
        create_time: 1_700_000_000,
        msg_type: "text".into(),
        msg_id: i,
        ..Default::default()
    }
    .encode_to_vec()
}

/// Keys stay unique across floor runs (the warm-up's are still marked done).
static NEXT: AtomicU64 = AtomicU64::new(0);

/// One callback's storage work: claim, confirmed publish, complete.
async fn floor_op(dedupe: &Dedupe, bus: &Bus, exchange: &str, routing_key: &str, i: u64) {
    let key = format!("msg:{i}");
    let owner = format!("{:016x}", rand::random::<u64>());
    let claim = dedupe.claim("bench", AUTHORIZER, &key, &owner).await;
    assert_eq!(claim.expect("redis"), Claim::Fresh);
    let body = sample_event(i);
    let message_id = format!("bench:{AUTHORIZER}:{key}");
    let headers = vec![(
        "traceparent".to_owned(),
        format!(
            "00-{:032x}-{:016x}-01",
            rand::random::<u128>(),
            rand::random::<u64>()
        ),
    )];
    bus.publish(&Outgoing {
        exchange,
        routing_key,
        body: &body,
        message_id: &message_id,
        message_type: CALLBACK_EVENT_TYPE,
        headers: &headers,
    })
    .await
    .expect("confirmed publish");
    dedupe
        .complete("bench", AUTHORIZER, &key, &owner)
        .await
        .expect("complete");
}

/// The floor's work in open loop at `rate`/s for `secs`: (p50, p99, max) in ms from each
/// operation's due time, and what the [`BrokerProbe`] saw. Shows what the broker and Redis alone do to the tail at that rate.
async fn floor_open_loop(
    ns: &Namespace,
    bus: &Bus,
    rate: f64,
    secs: u64,
) -> (f64, f64, f64, String) {
    let dedupe = Dedupe::new(ns.store(), Duration::from_secs(5), Duration::from_secs(600));
    let exchange: Arc<str> = ns.topology().events_exchange().into();
    let routing_key: Arc<str> = format!("bench.{AUTHORIZER}.text").into();
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let drain = Drain::start(bus, &ns.topology().unrouted_queue()).await;
    let probe = BrokerProbe::start(bus);
    let started = tokio::time::Instant::now();
    let total = (rate * secs as f64) as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..total {
        let due = started + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due).await;
        let (dedupe, bus, exchange, routing_key, latencies) = (
            dedupe.clone(),
            bus.clone(),
            exchange.clone(),
            routing_key.clone(),
            latencies.clone(),
        );
        tasks.spawn(async move {
            let i = NEXT.fetch_add(1, Ordering::Relaxed);
            floor_op(&dedupe, &bus, &exchange, &routing_key, i).await;
            let ms = due.elapsed().as_secs_f64() * 1000.0;
            latencies.lock().expect("latencies").push(ms);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let broker = probe.finish().await;
    let drained = drain.finish().await;
    let queued = drained + count_and_purge(bus, &ns.topology().unrouted_queue()).await;
    assert_eq!(queued, total, "every confirmed publish was queued");
    let mut v = std::mem::take(&mut *latencies.lock().expect("latencies"));
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    (at(0.5), at(0.99), v[v.len() - 1], broker)
}

/// The floor: claim → confirmed publish → complete, `concurrency` at a time, for `secs`.
async fn floor(ns: &Namespace, bus: &Bus, concurrency: usize, secs: u64) -> f64 {
    let dedupe = Dedupe::new(ns.store(), Duration::from_secs(5), Duration::from_secs(600));
    let exchange = ns.topology().events_exchange();
    let routing_key = format!("bench.{AUTHORIZER}.text");
    let next = &NEXT;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (dedupe, bus, exchange, routing_key, done, stop) = (
            dedupe.clone(),
            bus.clone(),
            exchange.clone(),
            routing_key.clone(),
            done.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                floor_op(&dedupe, &bus, &exchange, &routing_key, i).await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("floor task");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    let queued = count_and_purge(bus, &ns.topology().unrouted_queue()).await;
    assert_eq!(queued, n, "every confirmed publish is in the queue");
    n as f64 / elapsed
}

fn load(base: &str, concurrency: usize, secs: u64, rate: Option<f64>) -> LoadConfig {
    let mut cfg = LoadConfig::new(base, "bench", AUTHORIZER, TOKEN, KEY, COMPONENT);
    cfg.to_user_name = "gh_bench".into();
    cfg.concurrency = concurrency;
    cfg.duration = Duration::from_secs(secs);
    cfg.rate = rate;
    cfg.timeout = Duration::from_secs(10);
    // Enough distinct bodies (unique MsgIds) that no run wraps around: a reused body would be
    // a retry the gateway rightly drops.
    cfg.pool_bytes = 1 << 30;
    cfg
}

/// Runs the load and checks that every 200 is a message in the queue (or taken from it by a
/// [`Drain`], when `drain`).
async fn run_load(bus: &Bus, queue: &str, cfg: LoadConfig, drain: bool) -> LoadReport {
    let drain = if drain {
        Some(Drain::start(bus, queue).await)
    } else {
        None
    };
    // The load generator is the client: it gets its own runtime, so its tasks do not queue
    // behind the gateway's on the gateway's workers, as with a separate process. One thread,
    // like `wrk -t1`: it drives 64 connections easily and leaves the cores to the server.
    let report = tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("load-generator")
            .enable_all()
            .build()
            .expect("client runtime")
            .block_on(wxhub_loadgen::run(cfg))
    })
    .await
    .expect("load thread")
    .expect("load run");
    // `reused_bodies` is also set when a closed-loop run merely *might* need more bodies than
    // the pool holds; what matters is whether more were sent than exist.
    assert!(
        report.sent <= report.unique_bodies as u64,
        "the body pool was too small: {report}"
    );
    let ok = report.status.get("200").copied().unwrap_or(0);
    let drained = match drain {
        Some(drain) => drain.finish().await,
        None => 0,
    };
    let queued = drained + count_and_purge(bus, queue).await;
    assert_eq!(
        queued, ok,
        "every 200 must be a broker-confirmed message: {report}"
    );
    report
}

/// The kernel's count of connections dropped because an accept queue was full (Linux), if known.
fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench());
}

async fn bench() {
    let secs = env_u64("BENCH_SECS", 10);
    let concurrency = env_u64("BENCH_CONCURRENCY", 64) as usize;
    let cancel = CancellationToken::new();
    let ns = Namespace::new("bench");
    // The floor publishes through as many channels as the gateway opens.
    let mut amqp = wxhub_bus::AmqpConfig::new(wxhub_testkit::amqp_url());
    amqp.publisher_channels = GatewayConfig::load(&Source {
        file: None,
        env: Vec::new(),
    })
    .expect("default gateway config")
    .amqp
    .publisher_channels;
    let bus = ns.bus_with(amqp, &cancel).await;
    let queue = ns.topology().unrouted_queue();

    let rounds = env_u64("BENCH_ROUNDS", 5).max(1) as usize;

    // 1. Floor (warm-up run first).
    let _ = floor(&ns, &bus, concurrency, 2).await;
    if std::env::var("BENCH_FLOOR_ONLY").is_ok() {
        let floor_rate = floor(&ns, &bus, concurrency, secs).await;
        ns.cleanup(Some(&bus), &[]).await;
        out(&format!("floor: {floor_rate:.0} msg/s"));
        return;
    }

    // 2. The gateway in-process.
    let dir = tempfile::tempdir().expect("tempdir");
    let tenants = dir.path().join("tenants.toml");
    std::fs::write(
        &tenants,
        format!(
            "[[tenants]]\nid = \"bench\"\nkind = \"component\"\napp_id = \"{COMPONENT}\"\napp_secret = \"bench-secret\"\ntoken = \"{TOKEN}\"\nencoding_aes_key = \"{KEY}\"\n"
        ),
    )
    .expect("tenants file");
    let config = GatewayConfig::load(&Source {
        file: None,
        env: vec![
            ("WXHUB_NAMESPACE".into(), ns.name().to_owned()),
            ("WXHUB_REDIS__URL".into(), wxhub_testkit::redis_url()),
            ("WXHUB_AMQP__URL".into(), wxhub_testkit::amqp_url()),
            ("WXHUB_AMQP__DELIVERY_LIMIT".into(), "5".into()),
            ("WXHUB_TENANTS__FILE".into(), tenants.display().to_string()),
        ],
    })
    .expect("config");
    let backlog = config.gateway.listen_backlog;
    let gateway = Gateway::build(config, Default::default())
        .await
        .expect("gateway");
    assert!(
        gateway
            .state()
            .bus()
            .wait_connected(Duration::from_secs(30))
            .await
    );
    // Bound like the binary binds it (`gateway.listen_backlog`).
    let listener = wxhub_runtime::service::listener("127.0.0.1:0".parse().expect("addr"), backlog)
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let server =
        tokio::spawn(gateway.serve(Listeners::main(listener), stop.clone().cancelled_owned()));

    let _ = run_load(&bus, &queue, load(&base, concurrency, 2, None), false).await; // warm-up

    // 2. Floor and gateway alternate, so drift of the shared machine (and of the broker's
    // state) hits both alike; medians are reported.
    let mut floors = Vec::with_capacity(rounds);
    let mut maxes = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        floors.push(floor(&ns, &bus, concurrency, secs).await);
        maxes.push(run_load(&bus, &queue, load(&base, concurrency, secs, None), false).await);
    }
    let floor_rate = median(floors.clone());
    let max = {
        let mut sorted = maxes.clone();
        sorted.sort_by(|a, b| a.throughput.total_cmp(&b.throughput));
        sorted.swap_remove(sorted.len() / 2)
    };

    // 3. Half of that rate, in steady state: the broker has digested the purge of the last max
    // run (see `settle`), and a short warm-up at the target rate is discarded.
    let half_rate = (max.throughput / 2.0).floor().max(1.0);
    let _ = run_load(&bus, &queue, load(&base, 1024, 2, Some(half_rate)), true).await;
    // Longer than the max runs: the broker stalls confirms now and then (tens to a few hundred
    // ms); over 30 s the p99 reflects how often that happens, over 10 s it depends on whether
    // one landed inside.
    let half_secs = env_u64("BENCH_HALF_SECS", 30);
    // Open loop: every callback is sent when due, on an idle connection or a new one (WeChat's
    // servers do not wait for one callback's answer before sending the next); 1024 bounds the
    // connections the generator may open.
    let overflows_before = listen_overflows();
    let probe = BrokerProbe::start(&bus);
    let half = run_load(
        &bus,
        &queue,
        load(&base, 1024, half_secs, Some(half_rate)),
        true,
    )
    .await;
    let half_broker = probe.finish().await;
    let overflows = match (overflows_before, listen_overflows()) {
        (Some(a), Some(b)) => format!("{}", b.saturating_sub(a)),
        _ => "n/a".into(),
    };

    stop.cancel();
    let _ = server.await;
    // The same rate and length with no HTTP: how much of the tail is the broker's and Redis's.
    settle(&bus).await;
    let (floor_p50, floor_p99, floor_max, floor_broker) =
        floor_open_loop(&ns, &bus, half_rate, half_secs).await;
    ns.cleanup(Some(&bus), &[]).await;

    let ratio = max.throughput / floor_rate * 100.0;
    let each: Vec<String> = floors
        .iter()
        .zip(&maxes)
        .map(|(f, g)| format!("{f:.0}/{:.0}", g.throughput))
        .collect();
    out(&format!(
        "rounds (floor/gateway msg/s, {secs} s each): {}",
        each.join(", ")
    ));
    out(&format!(
        "floor (claim + confirmed publish + complete, {concurrency} tasks, no HTTP/crypto): {floor_rate:.0} msg/s (median of {rounds})"
    ));
    out(&format!(
        "gateway max (loadgen, closed loop, {concurrency} connections, safe mode): {:.0} callbacks/s (median of {rounds}), all {} answered 200 and confirmed in the queue; p50 {:.2} ms, p99 {:.2} ms",
        max.throughput,
        max.status.get("200").copied().unwrap_or(0),
        max.latency_ms.p50,
        max.latency_ms.p99
    ));
    out(&format!("gateway / floor: {ratio:.1} % (target >= 75 %)"));
    out(&format!(
        "gateway at half rate ({half_rate:.0}/s open loop, {half_secs} s): {:.0} callbacks/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms (target p99 < 50 ms); statuses {:?}; accept-queue overflows {overflows}; {half_broker}",
        half.throughput,
        half.latency_ms.p50,
        half.latency_ms.p99,
        half.latency_ms.p999,
        half.latency_ms.max,
        half.status
    ));
    out(&format!(
        "floor at the same half rate ({half_rate:.0}/s open loop, {half_secs} s, no HTTP/crypto): p50 {floor_p50:.2} ms, p99 {floor_p99:.2} ms, max {floor_max:.2} ms; {floor_broker}"
    ));
}
