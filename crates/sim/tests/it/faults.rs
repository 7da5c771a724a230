//! Fault injection: error codes for N calls or with a probability, latency, dropped connections.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use wxhub_sim::{AccountKind, CallFilter, FaultSpec, Seed};

use crate::common::*;

const OA: &str = "wxoa_faults";

fn seed() -> Seed {
    let mut oa = account(OA, "gh_faults", AccountKind::OfficialAccount, &[]);
    oa.secret = Some("s".into());
    Seed {
        accounts: vec![oa],
        ..Default::default()
    }
}

fn path() -> String {
    format!("/cgi-bin/token?grant_type=client_credential&appid={OA}&secret=s")
}

#[tokio::test]
async fn error_for_the_next_n_calls() -> Result<()> {
    let sim = start(seed()).await;
    let api = Api::new(&sim);
    let id = sim.add_fault(FaultSpec::error("/cgi-bin/token", 45011, Some(2)))?;
    assert_eq!(sim.faults()[0].id, id);
    assert_eq!(errcode(&api.get(&path()).await?), 45011);
    let second = api.get(&path()).await?;
    assert_eq!(errcode(&second), 45011);
    assert!(
        second["errmsg"]
            .as_str()
            .unwrap_or_default()
            .starts_with("api minute-quota reach limit")
    );
    assert!(api.get(&path()).await?.get("access_token").is_some());
    assert!(sim.faults().is_empty());
    let faulted = sim.calls(&CallFilter {
        errcode: Some(45011),
        ..Default::default()
    });
    assert_eq!(faulted.len(), 2);
    Ok(())
}

#[tokio::test]
async fn errors_with_a_probability_are_reproducible_with_a_seed() -> Result<()> {
    async fn pattern(seed_value: u64) -> Result<Vec<i64>> {
        let mut cfg = config(seed());
        cfg.fault_seed = Some(seed_value);
        let sim = wxhub_sim::start(cfg).await?;
        sim.add_fault(FaultSpec::error("*", -1, None).with_probability(0.5))?;
        let api = Api::new(&sim);
        let mut codes = Vec::new();
        for _ in 0..40 {
            codes.push(errcode(&api.get(&path()).await?));
        }
        sim.shutdown().await;
        Ok(codes)
    }
    let a = pattern(99).await?;
    assert_eq!(a, pattern(99).await?);
    assert!(a.contains(&-1) && a.contains(&0), "{a:?}");
    Ok(())
}

#[tokio::test]
async fn latency_makes_callers_time_out() -> Result<()> {
    let sim = start(seed()).await;
    sim.add_fault(FaultSpec::latency(
        "/cgi-bin/token",
        Duration::from_millis(400),
        Some(1),
    ))?;
    let api = Api::new(&sim);
    let started = Instant::now();
    let r = api
        .http
        .get(format!("{}{}", api.base, path()))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(r.is_err_and(|e| e.is_timeout()));
    assert!(started.elapsed() < Duration::from_millis(1500));
    // The next call is not delayed.
    let started = Instant::now();
    assert!(api.get(&path()).await?.get("access_token").is_some());
    assert!(started.elapsed() < Duration::from_millis(1000));
    Ok(())
}

#[tokio::test]
async fn dropped_connection_gets_no_response() -> Result<()> {
    let sim = start(seed()).await;
    sim.add_fault(FaultSpec::drop_connection("/cgi-bin/token", Some(1)))?;
    let api = Api::new(&sim);
    let r = api.http.get(format!("{}{}", api.base, path())).send().await;
    let err = r.expect_err("the connection must be closed without a response");
    assert!(!err.is_timeout() && !err.is_status(), "{err:?}");
    assert!(api.get(&path()).await?.get("access_token").is_some());
    assert_eq!(
        sim.calls(&CallFilter {
            errcode: Some(-2),
            ..Default::default()
        })
        .len(),
        1
    );
    Ok(())
}

#[tokio::test]
async fn faults_through_the_admin_api() -> Result<()> {
    let sim = start(seed()).await;
    let api = Api::new(&sim);
    let added = api
        .post(
            "/sim/faults",
            json!({"path": "/cgi-bin/token", "errcode": 40001, "errmsg": "custom text"}),
        )
        .await?;
    let id = added["id"].as_u64().unwrap_or_default();
    let r = api.get(&path()).await?;
    assert_eq!(
        (errcode(&r), r["errmsg"].as_str()),
        (40001, Some("custom text"))
    );
    let listed = api.get("/sim/faults").await?;
    assert_eq!(listed["faults"][0]["hits"], 1);
    let resp = api
        .http
        .delete(format!("{}/sim/faults/{id}", api.base))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    assert!(api.get(&path()).await?.get("access_token").is_some());
    let bad = api
        .http
        .post(format!("{}/sim/faults", api.base))
        .json(&json!({"path": "/x", "probability": 2.0, "errcode": 1}))
        .send()
        .await?;
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await?.contains("probability"));
    Ok(())
}
