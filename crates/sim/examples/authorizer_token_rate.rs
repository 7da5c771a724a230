//! Measures how many `api_authorizer_token` calls per second an in-process sim answers.
//!
//! `cargo run --release -p wxhub-sim --example authorizer_token_rate -- [AUTHORIZERS] [CLIENTS] [SECONDS]`
//! (defaults: 100000 authorizers, 64 concurrent clients, 5 s).
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::RngExt;
use serde_json::{Value, json};
use wxhub_sim::{AccountSeed, AuthorizationSeed, ComponentSeed, Encryption, Seed, SimConfig};

const C: &str = "wxbench0component";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let authorizers: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let clients: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(64);
    let secs: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5);

    let mut seed = Seed {
        components: vec![ComponentSeed {
            appid: C.into(),
            secret: "secret".into(),
            token: "token".into(),
            aes_key: "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG".into(),
            auth_event_url: None,
            message_url_template: None,
            encryption: Encryption::Safe,
            auto_ticket_push: false,
        }],
        ..Default::default()
    };
    for i in 0..authorizers {
        seed.accounts.push(AccountSeed {
            appid: format!("wxbench{i:010}"),
            user_name: format!("gh_bench{i}"),
            ..Default::default()
        });
        seed.authorizations.push(AuthorizationSeed {
            component_appid: C.into(),
            authorizer_appid: format!("wxbench{i:010}"),
            refresh_token: Some(format!("refreshtoken@@@{i}").into()),
            func_info: None,
        });
    }
    let seeded = Instant::now();
    let sim = wxhub_sim::start(SimConfig {
        auto_ticket_push: false,
        record_capacity: 10_000,
        seed: Some(seed),
        ..SimConfig::default()
    })
    .await?;
    println!(
        "seeded {authorizers} authorizers in {:.2} s",
        seeded.elapsed().as_secs_f64()
    );

    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let base = sim.base_url();
    http.post(format!("{base}/cgi-bin/component/api_start_push_ticket"))
        .json(&json!({"component_appid": C, "component_secret": "secret"}))
        .send()
        .await?;
    let ticket = sim
        .component(C)
        .and_then(|c| c.latest_ticket)
        .unwrap_or_default();
    let r: Value = http
        .post(format!("{base}/cgi-bin/component/api_component_token"))
        .json(&json!({"component_appid": C, "component_appsecret": "secret", "component_verify_ticket": ticket}))
        .send()
        .await?
        .json()
        .await?;
    let token = r["component_access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let url = Arc::new(format!(
        "{base}/cgi-bin/component/api_authorizer_token?component_access_token={token}"
    ));

    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, url, ok, failed) = (
            http.clone(),
            Arc::clone(&url),
            Arc::clone(&ok),
            Arc::clone(&failed),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let i = rand::rng().random_range(0..authorizers.max(1));
                let body = json!({"component_appid": C, "authorizer_appid": format!("wxbench{i:010}"),
                                  "authorizer_refresh_token": format!("refreshtoken@@@{i}")});
                let answer: Option<Value> = match http.post(url.as_str()).json(&body).send().await {
                    Ok(resp) => resp.json().await.ok(),
                    Err(_) => None,
                };
                if answer.is_some_and(|v| v.get("authorizer_access_token").is_some()) {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "api_authorizer_token: {ok} ok, {} failed in {elapsed:.2} s = {:.0} calls/s ({clients} clients, same process)",
        failed.load(Ordering::Relaxed),
        ok as f64 / elapsed
    );
    sim.shutdown().await;
    Ok(())
}
