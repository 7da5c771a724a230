//! The refresh protocol across replicas (design §9 invariant 3; reliability.md P1–P5).

use std::time::Duration;

use wxhub_proto::token::v1::{GetAccessTokenRequest, InvalidateAccessTokenRequest};
use wxhub_sim::{FaultSpec, SimConfig};

use crate::harness::*;

const AUTHORIZER_TOKEN: &str = "/cgi-bin/component/api_authorizer_token";
const COMPONENT_TOKEN: &str = "/cgi-bin/component/api_component_token";
const LIST: &str = "/cgi-bin/component/api_get_authorizer_list";

fn get(appid: &str) -> GetAccessTokenRequest {
    GetAccessTokenRequest {
        tenant: ACME.into(),
        appid: appid.into(),
        min_remaining_secs: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_for_an_expired_token_cause_one_refresh() {
    let env = Env::start(Setup::new("tc-storm", 3)).await;
    let mut c0 = env.client(0).await;
    let first = c0
        .get_access_token(req(get(AUTH1), KEY_ACME))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.access_token.is_empty());
    env.unschedule_others(AUTH1).await;
    // Let both tokens (component and authorizer) expire in virtual time.
    env.sim.advance(Duration::from_secs(7300));
    env.sim.clear_calls();

    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(env.client(i).await);
    }
    let mut tasks = Vec::new();
    for n in 0..200 {
        let mut c = clients[n % 3].clone();
        tasks.push(tokio::spawn(async move {
            c.get_access_token(req(get(AUTH1), KEY_ACME))
                .await
                .map(|r| r.into_inner())
        }));
    }
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        let reply = t.await.unwrap().expect("every request gets a token");
        tokens.insert(reply.access_token);
    }
    assert_eq!(tokens.len(), 1, "everyone got the same new token");
    assert!(!tokens.contains(&first.access_token));
    assert_eq!(
        env.calls(AUTHORIZER_TOKEN, None),
        1,
        "exactly one upstream refresh"
    );
    assert_eq!(
        env.calls(COMPONENT_TOKEN, Some(ACME_APPID)),
        1,
        "and one component token refresh"
    );
    let view = env.sim.authorizer(ACME_APPID, AUTH1).unwrap();
    assert_eq!(
        view.access_token.as_deref(),
        tokens.iter().next().map(String::as_str)
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_lease_holder_cannot_overwrite_the_newer_token() {
    let env =
        Env::start(Setup::new("tc-paused", 2).with("WXHUB_TOKEN_CONTROL__LOCK_TTL_MS", "300"))
            .await;
    let (mut a, mut b) = (env.client(0).await, env.client(1).await);
    // Warm the component token so only the authorizer call is slowed.
    a.get_access_token(req(get(""), KEY_ACME)).await.unwrap();
    env.sim
        .add_fault(FaultSpec::latency(
            AUTHORIZER_TOKEN,
            Duration::from_millis(3000),
            Some(1),
        ))
        .unwrap();
    env.sim.clear_calls();
    let paused = tokio::spawn(async move { a.get_access_token(req(get(AUTH2), KEY_ACME)).await });
    // Wait until A holds the lease, then until it expired (A is stuck in the slow call).
    let cred = format!("authorizer:{AUTH2}");
    env.wait_for(|| env.lease_held(&cred)).await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    let newer = b
        .get_access_token(req(get(AUTH2), KEY_ACME))
        .await
        .expect("B refreshes after A's lease expired")
        .into_inner();
    let stored = env
        .creds
        .token(ACME, &format!("authorizer:{AUTH2}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.value.expose(), newer.access_token);

    let late = paused.await.unwrap().expect("A answers too").into_inner();
    assert_eq!(env.calls(AUTHORIZER_TOKEN, None), 2, "both called WeChat");
    let after = env
        .creds
        .token(ACME, &format!("authorizer:{AUTH2}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        after.value.expose(),
        newer.access_token,
        "the paused holder's late write was refused"
    );
    assert_eq!(after.fence, stored.fence);
    assert_eq!(
        late.access_token, newer.access_token,
        "A serves the stored token"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_holders_lease_expires_and_the_next_refresh_succeeds() {
    let mut env =
        Env::start(Setup::new("tc-killed", 2).with("WXHUB_TOKEN_CONTROL__LOCK_TTL_MS", "500"))
            .await;
    let mut a = env.client(0).await;
    a.get_access_token(req(get(""), KEY_ACME)).await.unwrap();
    env.sim
        .add_fault(FaultSpec::latency(
            AUTHORIZER_TOKEN,
            Duration::from_secs(3),
            Some(1),
        ))
        .unwrap();
    let doomed = tokio::spawn(async move { a.get_access_token(req(get(AUTH1), KEY_ACME)).await });
    let cred = format!("authorizer:{AUTH1}");
    env.wait_for(|| env.lease_held(&cred)).await;
    env.replicas.remove(0).kill();
    assert!(
        doomed.await.unwrap().is_err(),
        "the killed replica never answered"
    );
    // The survivor waits out the dead holder's lease and refreshes.
    let mut b = env.client(0).await;
    let token = b
        .get_access_token(req(get(AUTH1), KEY_ACME))
        .await
        .expect("the next refresh succeeds")
        .into_inner();
    let view = env.sim.authorizer(ACME_APPID, AUTH1).unwrap();
    assert_eq!(
        view.access_token.as_deref(),
        Some(token.access_token.as_str())
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_of_invalidations_costs_one_refresh() {
    let env = Env::start(Setup::new("tc-invalid", 3)).await;
    let mut c0 = env.client(0).await;
    let rejected = c0
        .get_access_token(req(get(AUTH1), KEY_ACME))
        .await
        .unwrap()
        .into_inner()
        .access_token;
    env.sim.clear_calls();
    let mut tasks = Vec::new();
    for n in 0..150 {
        let mut c = env.client(n % 3).await;
        let rejected = rejected.clone();
        tasks.push(tokio::spawn(async move {
            c.invalidate_access_token(req(
                InvalidateAccessTokenRequest {
                    tenant: ACME.into(),
                    appid: AUTH1.into(),
                    rejected_token: rejected,
                },
                KEY_ACME,
            ))
            .await
            .map(|r| r.into_inner().access_token)
        }));
    }
    let mut replacements = std::collections::HashSet::new();
    for t in tasks {
        replacements.insert(t.await.unwrap().expect("invalidate answers"));
    }
    assert_eq!(replacements.len(), 1);
    assert!(!replacements.contains(&rejected));
    assert_eq!(
        env.calls(AUTHORIZER_TOKEN, None),
        1,
        "one refresh for the storm"
    );
    // A late report of the old token changes nothing.
    let late = c0
        .invalidate_access_token(req(
            InvalidateAccessTokenRequest {
                tenant: ACME.into(),
                appid: AUTH1.into(),
                rejected_token: rejected.clone(),
            },
            KEY_ACME,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(replacements.contains(&late.access_token));
    assert_eq!(env.calls(AUTHORIZER_TOKEN, None), 1);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotated_refresh_tokens_are_persisted_and_used() {
    let mut setup = Setup::new("tc-rotate", 2);
    setup.sim = SimConfig {
        auto_ticket_push: false,
        rotate_refresh_tokens: true,
        ..SimConfig::default()
    };
    let env = Env::start(setup).await;
    let mut c = env.client(0).await;
    for round in 0..3 {
        let before = env.auths.get(ACME, AUTH1).await.unwrap().unwrap();
        let token = c
            .get_access_token(req(get(AUTH1), KEY_ACME))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"))
            .into_inner();
        let view = env.sim.authorizer(ACME_APPID, AUTH1).unwrap();
        let after = env.auths.get(ACME, AUTH1).await.unwrap().unwrap();
        assert_eq!(
            view.access_token.as_deref(),
            Some(token.access_token.as_str())
        );
        assert_eq!(
            after.refresh_token.as_ref().map(|r| r.expose()),
            Some(view.refresh_token.as_str()),
            "round {round}: the rotated refresh token is stored"
        );
        assert_ne!(
            before.refresh_token, after.refresh_token,
            "round {round}: it rotated"
        );
        // Past the old refresh token's overlap and the access token's life: only the
        // persisted new refresh token works now.
        env.sim.advance(Duration::from_secs(7300));
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_refresh_token_is_recovered_from_the_authorizer_list() {
    let env = Env::start(Setup::new("tc-lost-rt", 2)).await;
    let expected = env.sim.authorizer(ACME_APPID, AUTH2).unwrap().refresh_token;
    // Lose it (a Redis restart without persistence, an operator mistake...).
    let mut conn = env.store.conn();
    let _: i64 = redis::cmd("HDEL")
        .arg(env.store.keys(ACME).authorizer(AUTH2))
        .arg("rt")
        .query_async(&mut conn)
        .await
        .unwrap();
    env.sim.clear_calls();
    let mut c = env.client(1).await;
    let token = c
        .get_access_token(req(get(AUTH2), KEY_ACME))
        .await
        .expect("served after recovery")
        .into_inner();
    assert!(!token.access_token.is_empty());
    assert!(
        env.calls(LIST, None) >= 1,
        "recovered through api_get_authorizer_list"
    );
    let rec = env.auths.get(ACME, AUTH2).await.unwrap().unwrap();
    assert_eq!(rec.refresh_token.unwrap().expose(), expected);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn error_61023_triggers_a_reconcile_and_the_refresh_succeeds() {
    let env = Env::start(Setup::new("tc-61023", 1)).await;
    // A stale refresh token in the store: WeChat answers 61023.
    let mut conn = env.store.conn();
    let _: i64 = redis::cmd("HSET")
        .arg(env.store.keys(ACME).authorizer(AUTH1))
        .arg("rt")
        .arg("refreshtoken@@@stale")
        .query_async(&mut conn)
        .await
        .unwrap();
    env.sim.clear_calls();
    let mut c = env.client(0).await;
    let token = c
        .get_access_token(req(get(AUTH1), KEY_ACME))
        .await
        .expect("recovered")
        .into_inner();
    let view = env.sim.authorizer(ACME_APPID, AUTH1).unwrap();
    assert_eq!(
        view.access_token.as_deref(),
        Some(token.access_token.as_str())
    );
    let failed = env.sim.calls(&wxhub_sim::CallFilter {
        path: Some(AUTHORIZER_TOKEN.into()),
        appid: None,
        errcode: Some(61023),
    });
    assert_eq!(failed.len(), 1, "one 61023");
    assert!(env.calls(LIST, None) >= 1, "61023 reconciled from the list");
    let rec = env.auths.get(ACME, AUTH1).await.unwrap().unwrap();
    assert_eq!(rec.refresh_token.unwrap().expose(), view.refresh_token);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_are_refreshed_proactively_before_they_expire() {
    let env = Env::start(Setup::new("tc-proactive", 3)).await;
    let mut c = env.client(0).await;
    let first = c
        .get_access_token(req(get(AUTH1), KEY_ACME))
        .await
        .unwrap()
        .into_inner();
    env.unschedule_others(AUTH1).await;
    let cred = format!("authorizer:{AUTH1}");
    let due = env
        .creds
        .due(ACME, &cred)
        .await
        .unwrap()
        .expect("scheduled");
    let now = env.sim.clock().now_ms();
    let lifetime = first.expires_at_ms - now;
    assert!(
        due > now + lifetime * 7 / 10 && due < now + lifetime * 9 / 10,
        "due at ≈ 80% of the lifetime with jitter"
    );
    env.sim.clear_calls();
    // Move virtual time past the due time (but not the expiry): a poller refreshes it.
    env.sim.advance(Duration::from_millis(
        u64::try_from(due - now + 1000).unwrap(),
    ));
    env.wait_for(|| async {
        env.creds
            .token(ACME, &cred)
            .await
            .unwrap()
            .is_some_and(|t| t.value.expose() != first.access_token)
    })
    .await;
    assert_eq!(
        env.calls(AUTHORIZER_TOKEN, None),
        1,
        "one replica refreshed it"
    );
    let served = c
        .get_access_token(req(get(AUTH1), KEY_ACME))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(served.access_token, first.access_token);
    assert!(served.expires_at_ms > first.expires_at_ms);
    env.shutdown().await;
}

/// Removes `member` from every tenant's schedule, so no poller refreshes it behind a test's
/// back (a fault on its path would hit that refresh instead of the test's).
async fn unschedule(env: &Env, member: &str) {
    let mut conn = env.store.conn();
    for tenant in [ACME, BETA] {
        let _: i64 = redis::cmd("ZREM")
            .arg(env.store.keys(tenant).schedule())
            .arg(member)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

/// Waits until the holder of `credential`'s lease is stuck in WeChat (the one-shot latency
/// fault was hit, so the lease was taken before), then until its lease expired.
async fn wait_for_an_expired_lease(env: &Env, credential: &str) {
    env.wait_for(|| async { env.sim.faults().is_empty() }).await;
    env.wait_for(|| async { !env.lease_held(credential).await })
        .await;
}

fn rotating(label: &'static str) -> Setup {
    let mut setup = Setup::new(label, 1);
    setup.sim = SimConfig {
        auto_ticket_push: false,
        rotate_refresh_tokens: true,
        ..SimConfig::default()
    };
    setup
}

fn refused_61023(env: &Env) -> usize {
    env.sim
        .calls(&wxhub_sim::CallFilter {
            path: Some(AUTHORIZER_TOKEN.into()),
            appid: None,
            errcode: Some(61023),
        })
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_token_rotated_for_a_holder_that_lost_its_lease_is_kept() {
    let env =
        Env::start(rotating("tc-rt-lost").with("WXHUB_TOKEN_CONTROL__LOCK_TTL_MS", "300")).await;
    let cred = format!("authorizer:{AUTH1}");
    env.unschedule_others("none").await;
    env.sim.advance(Duration::from_secs(7300));
    let mut c = env.client(0).await;
    c.get_access_token(req(get(""), KEY_ACME)).await.unwrap();
    // The holder's call is slow; its lease expires and another owner takes it.
    env.sim
        .add_fault(FaultSpec::latency(
            AUTHORIZER_TOKEN,
            Duration::from_millis(1500),
            Some(1),
        ))
        .unwrap();
    let holder = tokio::spawn(async move {
        let mut r = req(get(AUTH1), KEY_ACME);
        r.set_timeout(Duration::from_secs(3));
        c.get_access_token(r).await
    });
    wait_for_an_expired_lease(&env, &cred).await;
    let other = env
        .creds
        .acquire(ACME, &cred, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the expired lease is free");
    // The holder's token write is refused (lost lease); it retries until its deadline.
    assert!(holder.await.unwrap().is_err());
    let rotated = env.sim.authorizer(ACME_APPID, AUTH1).unwrap().refresh_token;
    let stored = env.auths.get(ACME, AUTH1).await.unwrap().unwrap();
    assert_eq!(
        stored.refresh_token.as_ref().map(|r| r.expose()),
        Some(rotated.as_str()),
        "the refresh token WeChat rotated for the holder is stored"
    );
    let issued = env.sim.authorizer(ACME_APPID, AUTH1).unwrap().access_token;
    let kept = env.creds.token(ACME, &cred).await.unwrap();
    assert!(
        kept.is_none_or(|t| Some(t.value.expose()) != issued.as_deref()),
        "its access token was not stored"
    );
    env.creds.release(&other).await.unwrap();
    // Past the old refresh token's overlap: only the stored one works, and does.
    env.sim.advance(Duration::from_secs(7300));
    env.sim.clear_calls();
    let mut c = env.client(0).await;
    let token = c
        .get_access_token(req(get(AUTH1), KEY_ACME))
        .await
        .expect("refreshed with the stored refresh token")
        .into_inner();
    assert_eq!(
        refused_61023(&env),
        0,
        "no 61023: the stored refresh token is current"
    );
    assert_eq!(
        env.sim.authorizer(ACME_APPID, AUTH1).unwrap().access_token,
        Some(token.access_token)
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_token_rotated_after_a_61023_reconcile_is_kept() {
    let env = Env::start(rotating("tc-rt-61023")).await;
    env.unschedule_others("none").await;
    // A stale refresh token in the store: 61023, a reconcile stores the listed one under a
    // newer fence than the lease's, and WeChat rotates that one for the retry.
    let mut conn = env.store.conn();
    let _: i64 = redis::cmd("HSET")
        .arg(env.store.keys(ACME).authorizer(AUTH1))
        .arg("rt")
        .arg("refreshtoken@@@stale")
        .query_async(&mut conn)
        .await
        .unwrap();
    env.sim.clear_calls();
    let mut c = env.client(0).await;
    c.get_access_token(req(get(AUTH1), KEY_ACME))
        .await
        .expect("healed");
    assert_eq!(refused_61023(&env), 1);
    let current = env.sim.authorizer(ACME_APPID, AUTH1).unwrap().refresh_token;
    let stored = env.auths.get(ACME, AUTH1).await.unwrap().unwrap();
    assert_eq!(
        stored.refresh_token.as_ref().map(|r| r.expose()),
        Some(current.as_str()),
        "the rotation of the listed refresh token is stored"
    );
    // Past the overlap of the listed one: the next refresh uses the stored one, no new 61023.
    env.sim.advance(Duration::from_secs(7300));
    c.get_access_token(req(get(AUTH1), KEY_ACME))
        .await
        .expect("refreshed with the stored refresh token");
    assert_eq!(refused_61023(&env), 1, "no second 61023");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_that_lost_its_lease_does_not_call_wechat() {
    let env =
        Env::start(Setup::new("tc-holds", 2).with("WXHUB_TOKEN_CONTROL__LOCK_TTL_MS", "300")).await;
    let cred = format!("authorizer:{AUTH1}");
    env.unschedule_others("none").await;
    unschedule(&env, "component").await;
    env.sim.advance(Duration::from_secs(7300));
    // A's authorizer refresh first needs the component token, whose call is slow: A's
    // authorizer lease expires meanwhile, and B refreshes both.
    env.sim
        .add_fault(FaultSpec::latency(
            COMPONENT_TOKEN,
            Duration::from_secs(2),
            Some(1),
        ))
        .unwrap();
    env.sim.clear_calls();
    let mut a = env.client(0).await;
    let slow = tokio::spawn(async move { a.get_access_token(req(get(AUTH1), KEY_ACME)).await });
    wait_for_an_expired_lease(&env, &cred).await;
    let mut b = env.client(1).await;
    let by_b = b
        .get_access_token(req(get(AUTH1), KEY_ACME))
        .await
        .expect("B refreshes")
        .into_inner();
    let by_a = slow.await.unwrap().expect("A answers").into_inner();
    assert_eq!(by_a.access_token, by_b.access_token, "A serves B's token");
    assert_eq!(
        env.calls(AUTHORIZER_TOKEN, None),
        1,
        "A saw it no longer held its lease and did not call WeChat"
    );
    assert_eq!(env.calls(COMPONENT_TOKEN, Some(ACME_APPID)), 2);
    env.shutdown().await;
}
