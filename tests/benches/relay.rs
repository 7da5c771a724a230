//! The relay's overhead (`make bench`): the same WeChat call — `GET /cgi-bin/menu/get` of an
//! authorizer, answered by wxhub-sim — made directly with the token and through the relay with
//! an API key, in one run on one stack (sim, token-control, relay in-process; real Redis).
//!
//! 1. **Max rate**, closed loop, `BENCH_CONCURRENCY` (32) workers each: direct, then relayed.
//! 2. **Half the relay's max rate**, open loop (latency from the scheduled send time): direct,
//!    then relayed. The added p50/p99 is relayed minus direct.
//!
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
    secs: f64,
    latency: Histogram<u64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.secs
    }

    fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

#[derive(Clone)]
struct Target {
    client: reqwest::Client,
    url: String,
    key: Option<String>,
}

impl Target {
    async fn once(&self) -> bool {
        let mut r = self.client.get(&self.url);
        if let Some(k) = &self.key {
            r = r.bearer_auth(k);
        }
        match r.send().await {
            Ok(resp) if resp.status().is_success() => resp.bytes().await.is_ok_and(|b| {
                !b.windows(9).any(|w| w == b"\"errcode\"")
                    || b.windows(11).any(|w| w == b"\"errcode\":0")
            }),
            _ => false,
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
                while Instant::now() < until {
                    let s = Instant::now();
                    if !t.once().await {
                        errors += 1;
                    }
                    let _ = h.record(s.elapsed().as_micros() as u64);
                    n += 1;
                }
                (h, n, errors)
            })
        })
        .collect();
    let mut run = Run {
        requests: 0,
        errors: 0,
        secs: 0.0,
        latency: histogram(),
    };
    for t in tasks {
        let (h, n, e) = t.await.expect("worker");
        run.latency.add(h).expect("same bounds");
        run.requests += n;
        run.errors += e;
    }
    run.secs = started.elapsed().as_secs_f64();
    run
}

async fn open(target: &Target, rate: f64, secs: f64) -> Run {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let n = (rate * secs) as u64;
    let started = Instant::now();
    let latency = Arc::new(std::sync::Mutex::new((histogram(), 0u64)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let (t, latency) = (target.clone(), Arc::clone(&latency));
        tasks.spawn(async move {
            let ok = t.once().await;
            let mut l = latency.lock().expect("latency");
            let _ = l.0.record(due.elapsed().as_micros() as u64);
            if !ok {
                l.1 += 1;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let secs = started.elapsed().as_secs_f64();
    let (h, errors) = {
        let l = latency.lock().expect("latency");
        (l.0.clone(), l.1)
    };
    Run {
        requests: n,
        errors,
        secs,
        latency: h,
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
    // The relay's own cost is measured, not its rate limit (one account, one path, at full speed
    // would be refused after the first burst): a limit no run reaches. The limiter itself still
    // runs on every call (one Redis script), as in production.
    let relay = stack
        .relay(&[
            ("WXHUB_RELAY__RATE_LIMIT__COUNT", "1000000"),
            ("WXHUB_RELAY__RATE_LIMIT__PERIOD_MS", "1000"),
            ("WXHUB_RELAY__RATE_LIMIT__BURST", "1000000"),
        ])
        .await
        .expect("relay");
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
    let direct = Target {
        client: client.clone(),
        url: format!(
            "{}/cgi-bin/menu/get?access_token={token}",
            stack.sim.base_url()
        ),
        key: None,
    };
    let relayed = Target {
        client,
        url: format!("{}/v1/{TENANT}/{AUTH1}/cgi-bin/menu/get", relay.url),
        key: Some(CRM_KEY.into()),
    };
    // Warm both paths (connections, the relay's token cache).
    closed(&direct, workers, 1.0).await;
    closed(&relayed, workers, 1.0).await;

    let d_max = closed(&direct, workers, secs).await;
    let r_max = closed(&relayed, workers, secs).await;
    let half = r_max.rate() / 2.0;
    let d_half = open(&direct, half, secs).await;
    let r_half = open(&relayed, half, secs).await;

    let mut out = std::io::stdout().lock();
    let line = |name: &str, r: &Run| {
        format!(
            "relay {name:<22} {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  errors {}",
            r.rate(),
            r.ms(0.50),
            r.ms(0.99),
            r.errors
        )
    };
    let _ = writeln!(out, "{}", line("direct max", &d_max));
    let _ = writeln!(out, "{}", line("relayed max", &r_max));
    let _ = writeln!(out, "{}", line(&format!("direct @{half:.0}/s"), &d_half));
    let _ = writeln!(out, "{}", line(&format!("relayed @{half:.0}/s"), &r_half));
    let _ = writeln!(
        out,
        "relay overhead at half the relay's max: +{:.3} ms p50, +{:.3} ms p99; max rate {:.0} vs {:.0} req/s direct ({workers} workers, {secs} s runs)",
        r_half.ms(0.50) - d_half.ms(0.50),
        r_half.ms(0.99) - d_half.ms(0.99),
        r_max.rate(),
        d_max.rate()
    );
    drop(relay);
    stack.stop().await;
}
