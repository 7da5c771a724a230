//! The relay's overhead (`make bench`): the same WeChat call — `GET /cgi-bin/menu/get` of an
//! authorizer, answered by wxhub-sim — made directly with the token and through the relay with
//! an API key, in one run on one stack (sim, token-control, relays in-process; real Redis).
//! Two relays: one as configured by default (`relay.rate_limit_lease` 32: a Redis script per
//! lease of rate-limit units) and one with `rate_limit_lease = 1` (a Redis script per call),
//! so the limiter's share is measured in the same run.
//!
//! 1. **Max rate**, closed loop, `BENCH_CONCURRENCY` (32) workers each: direct, then each relay.
//! 2. **Half the (default) relay's max rate**, open loop (latency from the scheduled send
//!    time): direct, then each relay. The added p50/p99 is relayed minus direct.
//! 3. The rate-limit script alone (`Limiter::acquire`, closed loop, the same workers).
//!
//! Each run also reports CPU time per call of this process and of redis-server (from /proc;
//! Redis is shared, so its figure includes whatever else used it meanwhile).
//! `BENCH_SECS` (default 10) sets each measured run's length. Prints one block of figures.

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
                let resp = r.send().await.map_err(|e| chain(&e.without_url()))?;
                let status = resp.status();
                let body = resp.bytes().await.map_err(|e| chain(&e.without_url()))?;
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

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
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

async fn open(target: &Target, rate: f64, secs: f64) -> Run {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let n = (rate * secs) as u64;
    let started = Instant::now();
    let latency = Arc::new(std::sync::Mutex::new((histogram(), 0u64, None)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let (t, latency) = (target.clone(), Arc::clone(&latency));
        tasks.spawn(async move {
            let result = t.once().await;
            let mut l = latency.lock().expect("latency");
            let _ = l.0.record(due.elapsed().as_micros() as u64);
            if let Err(e) = result {
                l.1 += 1;
                l.2.get_or_insert(e);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let secs = started.elapsed().as_secs_f64();
    let (h, errors, first_error) = {
        let l = latency.lock().expect("latency");
        (l.0.clone(), l.1, l.2.clone())
    };
    Run {
        requests: n,
        errors,
        first_error,
        secs,
        latency: h,
        cpu: (0.0, 0.0),
    }
}

fn env(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench());
}

async fn bench() {
    let secs = env("BENCH_SECS", 10.0);
    let workers = env("BENCH_CONCURRENCY", 32.0) as usize;
    let stack = Stack::start_with(Setup {
        tickets: true,
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
    let half = r_max.rate() / 2.0;
    let d_half = measured(pid, open(&direct, half, secs)).await;
    let e_half = measured(pid, open(&relayed_exact, half, secs)).await;
    let r_half = measured(pid, open(&relayed, half, secs)).await;
    let s_max = measured(pid, closed(&script, workers, secs)).await;

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
    let _ = writeln!(out, "{}", line("direct max", &d_max));
    let _ = writeln!(out, "{}", line("relayed (lease 1) max", &e_max));
    let _ = writeln!(out, "{}", line("relayed max", &r_max));
    let _ = writeln!(out, "{}", line(&format!("direct @{half:.0}/s"), &d_half));
    let _ = writeln!(
        out,
        "{}",
        line(&format!("relayed (lease 1) @{half:.0}/s"), &e_half)
    );
    let _ = writeln!(out, "{}", line(&format!("relayed @{half:.0}/s"), &r_half));
    let _ = writeln!(out, "{}", line("rate-limit script max", &s_max));
    for (name, r) in [
        ("direct max", &d_max),
        ("relayed (lease 1) max", &e_max),
        ("relayed max", &r_max),
        ("direct half", &d_half),
        ("relayed (lease 1) half", &e_half),
        ("relayed half", &r_half),
        ("rate-limit script", &s_max),
    ] {
        if let Some(e) = &r.first_error {
            let _ = writeln!(out, "relay {name}: first error: {e}");
        }
    }
    for (name, r) in [("relay", &r_half), ("relay (lease 1)", &e_half)] {
        let _ = writeln!(
            out,
            "{name} overhead at half the relay's max: +{:.3} ms p50, +{:.3} ms p99",
            r.ms(0.50) - d_half.ms(0.50),
            r.ms(0.99) - d_half.ms(0.99),
        );
    }
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
