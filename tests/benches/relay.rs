//! The relay's overhead (`make bench`): the same WeChat call — `GET /cgi-bin/menu/get` of an
//! authorizer, answered by wxhub-sim — made directly with the token and through the relay with
//! an API key, in one run on one stack (sim, token-control, relays in-process; real Redis).
//! Two relays: one as configured by default (`relay.rate_limit_lease` 256: a Redis script per
//! lease of rate-limit units) and one with `rate_limit_lease = 1` (a Redis script per call),
//! so the limiter's share is measured in the same run.
//!
//! 1. **Max rate**, closed loop, `BENCH_CONCURRENCY` (32) workers each: direct, then each relay
//!    (`BENCH_SECS`, 10 s each).
//! 2. **Half the (default) relay's max rate, paired**: `BENCH_WINDOWS` (5) windows of
//!    `BENCH_WINDOW_SECS` (6 s). In each, one open-loop schedule sends the relayed call at half
//!    the relay's max rate (`BENCH_RATE_FRACTION`, 0.5) and, spread evenly among those, the direct call at
//!    `BENCH_DIRECT_SHARE` (0.25) of that rate, so both paths meet the same scheduler, Redis
//!    and timer in the same window. (The direct path at the full rate as well adds its client
//!    and sim work to 2 cores already half busy: tried, the process saturated and both paths
//!    queued for seconds, so the difference of the two quantiles measured queues, not the
//!    relay. Its quarter share still gives 14,000–18,000 samples a window.) Latency is from each request's scheduled time (a late generator counts against
//!    the request, as in any open loop). **Added p50/p99** is the relayed path's quantile minus
//!    the direct path's, of that window (a difference of quantiles, not a quantile of
//!    per-request differences); each window is printed, then the median over windows. Nothing
//!    is excluded.
//! 3. **The relay's own time**, server side, in the same windows: `wxhub_relay_own_seconds`
//!    (each call's time in the relay's handler minus its exchanges with WeChat), read from the
//!    relay's `/metrics` before and after each window. The quantile is the upper bound of the
//!    bucket it falls in (buckets 10 µs … 1 s), so "≤".
//! 4. The rate-limit script alone (`Limiter::acquire`, closed loop, the same workers).
//!
//! **Threads.** The machine has 2 cores for everything: this process (load generator, sim,
//! relays, token-control) and redis-server. With the services' runtime and the client's at 2
//! worker threads each (the earlier bench), 4 busy threads plus Redis shared 2 cores, and
//! either path's p99 was a preempted thread's time slice (9–20 ms direct). Here the services'
//! runtime (relays, token-control) gets `BENCH_SERVICE_THREADS` (1) worker and the client's
//! runtime (generator, sim) `BENCH_CLIENT_THREADS` (1): one busy thread per core, with Redis
//! the only other. The relay's max rate
//! is then one core's; half of it leaves both cores about half busy. Set both to 2 to see the
//! oversubscribed case.
//!
//! **Pinning** (`BENCH_PIN=1`; off by default): the services' runtime threads (relays,
//! token-control) are pinned to CPU 1 and the client's (generator, sim; and the main thread,
//! which polls the open-loop schedule) to CPU 0, with `sched_setaffinity` as each thread starts,
//! as a deployment gives the relay a CPU of its own. The bench does not pin Redis: the shared
//! server stays where the scheduler puts it; for one of its own, start one (e.g.
//! `taskset -c 0 redis-server --port 6390 --save ''`) and set
//! `WXHUB_TEST_REDIS_URL=redis://127.0.0.1:6390`. The bench prints each thread's allowed CPUs.
//!
//! Each phase also reports CPU: µs per request of this process and of redis-server (from /proc;
//! Redis is shared, so its figure includes whatever else used it meanwhile), and for the paired
//! windows the cores used. Prints one block of figures.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use wxhub_proto::token::v1::GetAccessTokenRequest;
use wxhub_tests::*;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Run {
    requests: u64,
    errors: u64,
    /// What the first failed request said.
    first_error: Option<String>,
    secs: f64,
    latency: Histogram<u64>,
    /// CPU µs per request: this process, redis-server.
    cpu: (f64, f64),
}

impl Run {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.secs
    }

    fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

/// CPU time (µs) of process `pid` so far: utime + stime of /proc/{pid}/stat, 0 if unreadable.
fn cpu_us(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // USER_HZ is 100 on Linux.
    (ticks(11) + ticks(12)) * 10_000.0
}

/// Measures the CPU this process and Redis (`redis_pid`) spend on `work`, per request.
async fn measured(redis_pid: &str, work: impl Future<Output = Run>) -> Run {
    let (me, redis) = (cpu_us("self"), cpu_us(redis_pid));
    let mut run = work.await;
    let n = run.requests.max(1) as f64;
    run.cpu = ((cpu_us("self") - me) / n, (cpu_us(redis_pid) - redis) / n);
    run
}

/// What one request is.
#[derive(Clone)]
enum Target {
    Http {
        client: reqwest::Client,
        url: String,
        key: Option<String>,
    },
    /// One rate-limit script (a bucket no run empties).
    Limiter(wxhub_store::Limiter),
}

const UNREACHED: wxhub_store::Rate = wxhub_store::Rate {
    count: 1_000_000,
    period_ms: 1000,
    burst: 1_000_000,
};

impl Target {
    /// One request; the error says what failed (the first of a run is printed).
    async fn once(&self) -> Result<(), String> {
        match self {
            Target::Http { client, url, key } => {
                let mut r = client.get(url);
                if let Some(k) = key {
                    r = r.bearer_auth(k);
                }
                let resp = r
                    .send()
                    .await
                    .map_err(|e| wxhub_wechat_api::source_chain(&e.without_url()))?;
                let status = resp.status();
                let body = resp
                    .bytes()
                    .await
                    .map_err(|e| wxhub_wechat_api::source_chain(&e.without_url()))?;
                let ok = status.is_success()
                    && (!body.windows(9).any(|w| w == b"\"errcode\"")
                        || body.windows(11).any(|w| w == b"\"errcode\":0"));
                if ok {
                    Ok(())
                } else {
                    let text = String::from_utf8_lossy(&body);
                    Err(format!(
                        "{status}: {}",
                        text.chars().take(160).collect::<String>()
                    ))
                }
            }
            Target::Limiter(limiter) => match limiter
                .acquire(TENANT, &[("bench:relay-script", UNREACHED)], 1)
                .await
            {
                Ok(wxhub_store::Decision::Allowed { .. }) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

async fn closed(target: &Target, workers: usize, secs: f64) -> Run {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let t = target.clone();
            tokio::spawn(async move {
                let (mut h, mut n, mut errors) = (histogram(), 0u64, 0u64);
                let mut first = None;
                while Instant::now() < until {
                    let s = Instant::now();
                    if let Err(e) = t.once().await {
                        errors += 1;
                        first.get_or_insert(e);
                    }
                    let _ = h.record(s.elapsed().as_micros() as u64);
                    n += 1;
                }
                (h, n, errors, first)
            })
        })
        .collect();
    let mut run = Run {
        requests: 0,
        errors: 0,
        first_error: None,
        secs: 0.0,
        latency: histogram(),
        cpu: (0.0, 0.0),
    };
    for t in tasks {
        let (h, n, e, first) = t.await.expect("worker");
        run.latency.add(h).expect("same bounds");
        run.requests += n;
        run.errors += e;
        if run.first_error.is_none() {
            run.first_error = first;
        }
    }
    run.secs = started.elapsed().as_secs_f64();
    run
}

/// One paired window of `secs`: `b` at `rate` per second and `a` at `share × rate`, in one
/// evenly spaced schedule (`a`'s requests spread among `b`'s). The schedule runs as a task of
/// this runtime (tokio's timer has 1 ms ticks: a tick's due requests start together, which
/// both paths share); latency counts from each request's scheduled time.
async fn paired(a: &Target, b: &Target, rate: f64, share: f64, secs: f64) -> (Run, Run) {
    let total = rate * (1.0 + share);
    let interval = Duration::from_secs_f64(1.0 / total);
    let n = (total * secs) as u64;
    let of_a = share / (1.0 + share);
    let results = Arc::new(std::sync::Mutex::new([
        (histogram(), 0u64, 0u64, None::<String>),
        (histogram(), 0u64, 0u64, None::<String>),
    ]));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let due = started + interval.mul_f64(i as f64);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        // Slot i is `a`'s when the running count of `a`'s due requests steps up.
        let which = usize::from(((i + 1) as f64 * of_a).floor() == (i as f64 * of_a).floor());
        let t = if which == 0 { a.clone() } else { b.clone() };
        let sink = Arc::clone(&results);
        tasks.push(tokio::spawn(async move {
            let result = t.once().await;
            let took = due.elapsed().as_micros() as u64;
            let mut r = sink.lock().expect("results");
            let r = &mut r[which];
            let _ = r.0.record(took);
            r.1 += 1;
            if let Err(e) = result {
                r.2 += 1;
                r.3.get_or_insert(e);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let [ra, rb] = results.lock().expect("results").clone();
    let run =
        |(latency, requests, errors, first_error): (Histogram<u64>, u64, u64, Option<String>)| {
            Run {
                requests,
                errors,
                first_error,
                secs,
                latency,
                cpu: (0.0, 0.0),
            }
        };
    (run(ra), run(rb))
}

/// The cumulative buckets of histogram `name` on a `/metrics` page: (upper bound in s, count).
async fn buckets(client: &reqwest::Client, url: &str, name: &str) -> Vec<(f64, u64)> {
    let Ok(page) = client.get(format!("{url}/metrics")).send().await else {
        return Vec::new();
    };
    let page = page.text().await.unwrap_or_default();
    let prefix = format!("{name}_bucket{{le=\"");
    page.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// Upper bound (ms) of the bucket holding quantile `q` of the counts between two scrapes,
/// and how many calls that was.
fn bucket_quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> (f64, u64) {
    let delta: Vec<(f64, u64)> = after
        .iter()
        .map(|(le, n)| {
            let was = before.iter().find(|(l, _)| l == le).map_or(0, |(_, n)| *n);
            (*le, n.saturating_sub(was))
        })
        .collect();
    let total = delta.last().map_or(0, |(_, n)| *n);
    let rank = (q * total as f64).ceil() as u64;
    let le = delta
        .iter()
        .find(|(_, n)| *n >= rank.max(1))
        .map_or(f64::NAN, |(le, _)| *le);
    (le * 1000.0, total)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn env(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// With `BENCH_PIN=1`: the CPU of the client's runtime (generator, sim) and of the main thread.
const CLIENT_CPU: usize = 0;
/// With `BENCH_PIN=1`: the CPU of the services' runtime (relays, token-control).
const SERVICES_CPU: usize = 1;

fn main() {
    let pin = std::env::var("BENCH_PIN").is_ok_and(|v| v == "1");
    // Before pinning, which narrows what this thread (and the count) sees to one CPU.
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(env("BENCH_CLIENT_THREADS", 1.0).max(1.0) as usize)
        .enable_all();
    if pin {
        // `block_on` polls `bench` itself (the open-loop schedule) on this thread.
        cpu::pin_current_thread(CLIENT_CPU).expect("pin the main thread");
        builder.on_thread_start(|| {
            cpu::pin_current_thread(CLIENT_CPU).expect("pin a client runtime thread");
        });
    }
    let runtime = builder.build().expect("runtime");
    runtime.block_on(bench(pin, cores));
}

async fn bench(pin: bool, cores: usize) {
    let secs = env("BENCH_SECS", 10.0);
    let workers = env("BENCH_CONCURRENCY", 32.0) as usize;
    let windows = env("BENCH_WINDOWS", 5.0).max(1.0) as usize;
    let window_secs = env("BENCH_WINDOW_SECS", 6.0);
    let share = env("BENCH_DIRECT_SHARE", 0.25);
    let fraction = env("BENCH_RATE_FRACTION", 0.5).clamp(0.01, 1.0);
    let service_threads = env("BENCH_SERVICE_THREADS", 1.0).max(1.0) as usize;
    let client_threads = env("BENCH_CLIENT_THREADS", 1.0).max(1.0) as usize;
    let stack = Stack::start_with(Setup {
        tickets: true,
        service_threads,
        services_cpu: pin.then_some(SERVICES_CPU),
        ..Setup::new("bench-relay")
    })
    .await
    .expect("stack");
    let store = stack.ns.store();
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut store.conn())
        .await
        .expect("redis INFO");
    let redis_pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .unwrap_or("0")
        .trim()
        .to_owned();
    // The relay's own cost is measured, not its rate limit (one account, one path, at full speed
    // would be refused after the first burst): a limit no run reaches. The limiter itself still
    // runs, as in production: per lease (the default relay) or per call (`exact`).
    let unreached = [
        ("WXHUB_RELAY__RATE_LIMIT__COUNT", "1000000"),
        ("WXHUB_RELAY__RATE_LIMIT__PERIOD_MS", "1000"),
        ("WXHUB_RELAY__RATE_LIMIT__BURST", "1000000"),
    ];
    let relay = stack.relay(&unreached).await.expect("relay");
    let mut exact_settings = unreached.to_vec();
    exact_settings.push(("WXHUB_RELAY__RATE_LIMIT_LEASE", "1"));
    let exact = stack.relay(&exact_settings).await.expect("relay");
    let mut tc = stack.token_client().await;
    let token = tc
        .get_access_token(req(
            GetAccessTokenRequest {
                tenant: TENANT.into(),
                appid: AUTH1.into(),
                min_remaining_secs: 0,
            },
            OPS_KEY,
        ))
        .await
        .expect("token")
        .into_inner()
        .access_token;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let menu = serde_json::json!({"button": [{"type": "click", "name": "bench", "key": "b"}]});
    let created = client
        .post(format!(
            "{}/v1/{TENANT}/{AUTH1}/cgi-bin/menu/create",
            relay.url
        ))
        .bearer_auth(CRM_KEY)
        .json(&menu)
        .send()
        .await
        .expect("create");
    assert!(created.status().is_success());
    let direct = Target::Http {
        client: client.clone(),
        url: format!(
            "{}/cgi-bin/menu/get?access_token={token}",
            stack.sim.base_url()
        ),
        key: None,
    };
    let through = |url: &str| Target::Http {
        client: client.clone(),
        url: format!("{url}/v1/{TENANT}/{AUTH1}/cgi-bin/menu/get"),
        key: Some(CRM_KEY.into()),
    };
    let (relayed, relayed_exact) = (through(&relay.url), through(&exact.url));
    let script = Target::Limiter(wxhub_store::Limiter::new(store));
    // Warm every path (connections, the relays' token caches).
    for t in [&direct, &relayed_exact, &relayed, &script] {
        closed(t, workers, 1.0).await;
    }

    let pid = redis_pid.as_str();
    let d_max = measured(pid, closed(&direct, workers, secs)).await;
    let e_max = measured(pid, closed(&relayed_exact, workers, secs)).await;
    let r_max = measured(pid, closed(&relayed, workers, secs)).await;
    // The target is stated at half the max; other fractions show where the tail sets in.
    let half = r_max.rate() * fraction;

    let mut out = std::io::stdout().lock();
    let line = |name: &str, r: &Run| {
        format!(
            "relay {name:<28} {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  errors {}  cpu/call {:>5.1} us + redis {:>4.1} us",
            r.rate(),
            r.ms(0.50),
            r.ms(0.99),
            r.errors,
            r.cpu.0,
            r.cpu.1
        )
    };
    let _ = writeln!(
        out,
        "relay threads: services {service_threads}, client {client_threads}; {cores} cores"
    );
    let pinning = if pin {
        format!(
            "on: services' runtime (relays, token-control) on CPU {SERVICES_CPU}, client runtime (generator, sim) and main thread on CPU {CLIENT_CPU}; Redis not pinned by the bench"
        )
    } else {
        "off (BENCH_PIN=1 pins)".to_owned()
    };
    let _ = writeln!(
        out,
        "relay pinning {pinning}; threads' allowed CPUs: {}",
        cpu::thread_cpus()
    );
    let _ = writeln!(out, "{}", line("direct max", &d_max));
    let _ = writeln!(out, "{}", line("relayed (lease 1) max", &e_max));
    let _ = writeln!(out, "{}", line("relayed max", &r_max));
    let _ = out.flush();

    let (mut added50, mut added99, mut own99) = (Vec::new(), Vec::new(), Vec::new());
    let mut errors = Vec::new();
    for w in 1..=windows {
        let before = buckets(&client, &relay.url, wxhub_relay::OWN_SECONDS).await;
        let stages = [
            wxhub_relay::LIMIT_WAIT_SECONDS,
            wxhub_relay::TOKEN_WAIT_SECONDS,
        ];
        let mut stage_before = Vec::new();
        for st in stages {
            stage_before.push(buckets(&client, &relay.url, st).await);
        }
        let (me, redis) = (cpu_us("self"), cpu_us(pid));
        let machine = cpu::Machine::start();
        let (d, r) = paired(&direct, &relayed, half, share, window_secs).await;
        let machine = machine.took();
        let cores = (
            (cpu_us("self") - me) / 1e6 / d.secs,
            (cpu_us(pid) - redis) / 1e6 / d.secs,
        );
        let others = machine.busy / d.secs - cores.0 - cores.1;
        let after = buckets(&client, &relay.url, wxhub_relay::OWN_SECONDS).await;
        let (own50, calls) = bucket_quantile(&before, &after, 0.50);
        let (own_99, _) = bucket_quantile(&before, &after, 0.99);
        for (st, b0) in stages.iter().zip(&stage_before) {
            let b1 = buckets(&client, &relay.url, st).await;
            let _ = writeln!(
                out,
                "relay stage {st}: p50 <= {:.3} p99 <= {:.3} p999 <= {:.3} ms",
                bucket_quantile(b0, &b1, 0.5).0,
                bucket_quantile(b0, &b1, 0.99).0,
                bucket_quantile(b0, &b1, 0.999).0
            );
        }
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let _ = writeln!(
            out,
            "relay window {w}: relayed @{half:.0}/s, direct @{:.0}/s  direct p50 {:.3} p99 {:.3} ms ({} req, {} errors)  relayed p50 {:.3} p99 {:.3} ms ({} req, {} errors)  added p50 {:+.3} p99 {:+.3} ms  relay's own (server, {calls} calls) p50 <= {own50:.3} p99 <= {own_99:.3} ms  cores: process {:.2} redis {:.2} others {:.2}  steal {:.0} ms (worst 50 ms: {:.0} ms)  new connections {}  load {}",
            half * share,
            d.ms(0.50),
            d.ms(0.99),
            d.requests,
            d.errors,
            r.ms(0.50),
            r.ms(0.99),
            r.requests,
            r.errors,
            r.ms(0.50) - d.ms(0.50),
            r.ms(0.99) - d.ms(0.99),
            cores.0,
            cores.1,
            others.max(0.0),
            machine.steal * 1e3,
            machine.worst_steal * 1e3,
            machine.connections,
            load.split_whitespace().next().unwrap_or("?"),
        );
        let _ = out.flush();
        added50.push(r.ms(0.50) - d.ms(0.50));
        added99.push(r.ms(0.99) - d.ms(0.99));
        own99.push(own_99);
        for (name, run) in [("direct", d), ("relayed", r)] {
            if let Some(e) = run.first_error {
                errors.push(format!("window {w} {name}: {e}"));
            }
        }
    }
    let s_max = measured(pid, closed(&script, workers, secs)).await;
    let _ = writeln!(out, "{}", line("rate-limit script max", &s_max));
    for (name, r) in [
        ("direct max", &d_max),
        ("relayed (lease 1) max", &e_max),
        ("relayed max", &r_max),
        ("rate-limit script", &s_max),
    ] {
        if let Some(e) = &r.first_error {
            errors.push(format!("{name}: {e}"));
        }
    }
    for e in errors {
        let _ = writeln!(out, "relay first error: {e}");
    }
    let _ = writeln!(
        out,
        "relay overhead (pinning {}) at {fraction} of the relay's max ({half:.0}/s), median of {windows} paired windows: {:+.3} ms p50, {:+.3} ms p99 (windows: {}); relay's own p99 <= {:.3} ms (median)",
        if pin { "on" } else { "off" },
        median(added50.clone()),
        median(added99.clone()),
        added99
            .iter()
            .map(|v| format!("{v:+.3}"))
            .collect::<Vec<_>>()
            .join(" "),
        median(own99),
    );
    let _ = writeln!(
        out,
        "max rate {:.0} (lease 1: {:.0}) vs {:.0} req/s direct ({workers} workers, {secs} s runs)",
        r_max.rate(),
        e_max.rate(),
        d_max.rate()
    );
    drop((relay, exact));
    stack.stop().await;
}
