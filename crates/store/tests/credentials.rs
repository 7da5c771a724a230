//! Credential and authorizer scripts against the real Redis on 127.0.0.1:6379, each test in its
//! own namespace (deleted at the end).

mod common;

use std::time::Duration;

use wxhub_domain::Secret;
use wxhub_store::authorizers::{Authorization, Listed};
use wxhub_store::credentials::TokenWrite;
use wxhub_store::{
    AuthCodes, AuthorizerStatus, Authorizers, CodeClaim, Credentials, Ledger, LedgerClaim,
    Restored, Store, TokenRecord, WriteOutcome, WriteReport,
};

fn store(test: &str) -> Store {
    Store::connect(
        &common::config(),
        &format!("t-{test}-{:08x}", rand::random::<u32>()),
    )
    .unwrap()
}

async fn cleanup(store: &Store) {
    let mut conn = store.conn();
    let keys = store
        .scan_keys(&format!("{}:*", store.namespace()))
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

fn write<'a>(value: &'a Secret, now: i64) -> TokenWrite<'a> {
    TokenWrite {
        value,
        expires_at_ms: now + 7_200_000,
        lifetime_ms: 7_200_000,
        now_ms: now,
        due_ms: now + 5_760_000,
        authorizer: None,
        refresh_token: None,
    }
}

/// A write of authorizer `wxa`'s token whose refresh used `used` and got `returned` back.
fn authorizer_write<'a>(
    value: &'a Secret,
    now: i64,
    used: &'a Secret,
    returned: &'a Secret,
) -> TokenWrite<'a> {
    TokenWrite {
        authorizer: Some("wxa"),
        refresh_token: Some((used, returned)),
        ..write(value, now)
    }
}

#[tokio::test]
async fn lease_is_exclusive_fenced_and_released_by_owner_only() {
    let store = store("lease");
    let c = Credentials::new(store.clone());
    let a = c
        .acquire("acme", "component", Duration::from_secs(10))
        .await
        .unwrap()
        .expect("free lease");
    assert!(
        c.acquire("acme", "component", Duration::from_secs(10))
            .await
            .unwrap()
            .is_none(),
        "held"
    );
    // Another credential and another tenant are independent.
    let other = c
        .acquire("acme", "app", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert!(other.fence > a.fence, "fences increase per tenant");
    assert!(c.holds(&a).await.unwrap());
    assert!(c.release(&a).await.unwrap());
    assert!(!c.release(&a).await.unwrap(), "a second release is a no-op");
    let b = c
        .acquire("acme", "component", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert!(b.fence > other.fence);
    // The old owner can neither release nor write over the new one.
    assert!(!c.release(&a).await.unwrap());
    assert!(!c.holds(&a).await.unwrap());
    let v = Secret::new("T-a");
    assert_eq!(
        c.write_token(&a, &write(&v, 1000)).await.unwrap().outcome,
        WriteOutcome::LostLease
    );
    assert!(c.token("acme", "component").await.unwrap().is_none());
    cleanup(&store).await;
}

#[tokio::test]
async fn expired_lease_of_a_paused_holder_cannot_overwrite_a_newer_token() {
    let store = store("fence");
    let c = Credentials::new(store.clone());
    let paused = c
        .acquire("acme", "component", Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    let fresh = c
        .acquire("acme", "component", Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the expired lease is free again");
    let newer = Secret::new("T-new");
    assert_eq!(
        c.write_token(&fresh, &write(&newer, 2000)).await.unwrap(),
        WriteReport {
            outcome: WriteOutcome::Written,
            refresh_token_rotated: false
        }
    );
    c.release(&fresh).await.unwrap();
    // The lease is free now, but the paused holder's fence is older than the stored one.
    let older = Secret::new("T-old");
    assert_eq!(
        c.write_token(&paused, &write(&older, 3000))
            .await
            .unwrap()
            .outcome,
        WriteOutcome::StaleFence
    );
    let stored = c.token("acme", "component").await.unwrap().unwrap();
    assert_eq!(stored.value.expose(), "T-new");
    assert_eq!(stored.fence, fresh.fence);
    assert_eq!(
        stored.due_ms,
        2000 + 5_760_000,
        "the due time is stored with it"
    );
    assert_eq!(
        c.due("acme", "component").await.unwrap(),
        Some(2000 + 5_760_000)
    );
    cleanup(&store).await;
}

#[tokio::test]
async fn invalidate_compares_and_marks_once() {
    let store = store("invalidate");
    let c = Credentials::new(store.clone());
    let lease = c
        .acquire("acme", "app", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let v = Secret::new("T1");
    c.write_token(&lease, &write(&v, 1000)).await.unwrap();
    c.release(&lease).await.unwrap();
    assert!(!c.invalidate("acme", "app", "T0", 5000).await.unwrap());
    assert!(!c.token("acme", "app").await.unwrap().unwrap().rejected);
    assert!(c.invalidate("acme", "app", "T1", 5000).await.unwrap());
    let t = c.token("acme", "app").await.unwrap().unwrap();
    assert!(t.rejected);
    assert_eq!(c.due("acme", "app").await.unwrap(), Some(5000), "due now");
    // A new write clears the mark.
    let lease = c
        .acquire("acme", "app", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let v2 = Secret::new("T2");
    c.write_token(&lease, &write(&v2, 6000)).await.unwrap();
    assert!(!c.token("acme", "app").await.unwrap().unwrap().rejected);
    cleanup(&store).await;
}

#[tokio::test]
async fn tickets_keep_the_newest_push() {
    let store = store("ticket");
    let c = Credentials::new(store.clone());
    assert!(c.ticket("acme").await.unwrap().is_none());
    // CreateTime in s, received at in ms (a push is received about when it was created).
    assert!(
        c.store_ticket("acme", "ticket@@@2", 200, 200_100)
            .await
            .unwrap()
    );
    assert!(
        !c.store_ticket("acme", "ticket@@@1", 100, 200_200)
            .await
            .unwrap(),
        "older push"
    );
    assert!(
        c.store_ticket("acme", "ticket@@@2", 200, 200_300)
            .await
            .unwrap(),
        "replay is harmless"
    );
    let t = c.ticket("acme").await.unwrap().unwrap();
    assert_eq!((t.value.expose(), t.create_time), ("ticket@@@2", 200));
    assert!(c.ticket("other").await.unwrap().is_none(), "per tenant");
    cleanup(&store).await;
}

#[tokio::test]
async fn markers_and_guards() {
    let store = store("markers");
    let c = Credentials::new(store.clone());
    assert!(
        c.guard("acme", "push-ticket", Duration::from_secs(10))
            .await
            .unwrap()
    );
    assert!(
        !c.guard("acme", "push-ticket", Duration::from_secs(10))
            .await
            .unwrap()
    );
    assert!(
        c.mark("acme", "code:x", "pending:a", Duration::from_secs(10), true)
            .await
            .unwrap()
    );
    assert!(
        !c.mark("acme", "code:x", "pending:b", Duration::from_secs(10), true)
            .await
            .unwrap()
    );
    assert_eq!(
        c.marker("acme", "code:x").await.unwrap().as_deref(),
        Some("pending:a")
    );
    c.clear_marker("acme", "code:x", "pending:b").await.unwrap();
    assert!(
        c.marker("acme", "code:x").await.unwrap().is_some(),
        "not ours: kept"
    );
    c.clear_marker("acme", "code:x", "pending:a").await.unwrap();
    assert!(c.marker("acme", "code:x").await.unwrap().is_none());
    let ledger = Ledger::new(store.clone());
    assert!(!ledger.applied("acme", "m1").await.unwrap());
    ledger
        .record("acme", "m1", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(ledger.applied("acme", "m1").await.unwrap());
    assert!(!ledger.applied("other", "m1").await.unwrap());
    let lease = Duration::from_secs(10);
    assert_eq!(
        ledger.claim("acme", "m1", "h1", lease).await.unwrap(),
        LedgerClaim::Applied
    );
    assert_eq!(
        ledger.claim("acme", "m2", "h1", lease).await.unwrap(),
        LedgerClaim::Mine
    );
    assert!(
        !ledger.applied("acme", "m2").await.unwrap(),
        "claimed is not applied"
    );
    assert_eq!(
        ledger.claim("acme", "m2", "h2", lease).await.unwrap(),
        LedgerClaim::Busy
    );
    ledger.abandon("acme", "m2", "h2").await.unwrap();
    assert_eq!(
        ledger.claim("acme", "m2", "h2", lease).await.unwrap(),
        LedgerClaim::Busy,
        "only the holder gives it up"
    );
    ledger.abandon("acme", "m2", "h1").await.unwrap();
    assert_eq!(
        ledger.claim("acme", "m2", "h2", lease).await.unwrap(),
        LedgerClaim::Mine
    );
    ledger.record("acme", "m2", lease).await.unwrap();
    assert!(ledger.applied("acme", "m2").await.unwrap());
    assert_eq!(
        ledger
            .claim("acme", "m2", "h3", Duration::from_millis(50))
            .await
            .unwrap(),
        LedgerClaim::Applied
    );
    // A holder that died stops blocking when its lease ends.
    ledger
        .claim("acme", "m3", "dead", Duration::from_millis(100))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        ledger.claim("acme", "m3", "h1", lease).await.unwrap(),
        LedgerClaim::Mine
    );
    cleanup(&store).await;
}

#[tokio::test]
async fn an_auth_code_is_claimed_once_and_its_fate_remembered() {
    let store = store("authcodes");
    let codes = AuthCodes::new(
        store.clone(),
        Duration::from_secs(10),
        Duration::from_secs(10),
    );
    let claim = |digest: &'static str, by: &'static str| {
        let codes = codes.clone();
        async move { codes.claim("acme", digest, by).await.unwrap() }
    };
    assert_eq!(claim("c1", "redirect").await, CodeClaim::Fresh);
    assert_eq!(claim("c1", "event").await, CodeClaim::InFlight);
    codes.release("acme", "c1", "event").await.unwrap();
    assert_eq!(
        claim("c1", "event").await,
        CodeClaim::InFlight,
        "only the holder releases"
    );
    codes
        .complete("acme", "c1", "redirect", "wxfresh")
        .await
        .unwrap();
    assert_eq!(
        claim("c1", "event").await,
        CodeClaim::Done {
            by: "redirect".into(),
            appid: "wxfresh".into()
        }
    );
    assert_eq!(claim("c2", "event").await, CodeClaim::Fresh);
    codes.release("acme", "c2", "event").await.unwrap();
    assert_eq!(claim("c2", "redirect").await, CodeClaim::Fresh, "released");
    codes
        .refuse("acme", "c2", "the code is invalid (errcode 61009)")
        .await
        .unwrap();
    assert_eq!(
        claim("c2", "event").await,
        CodeClaim::Refused {
            reason: "the code is invalid (errcode 61009)".into()
        }
    );
    // The markers keep the format earlier versions wrote (a rolling upgrade reads both ways).
    let mut conn = store.conn();
    let raw: Option<String> = redis::cmd("GET")
        .arg(store.keys("acme").guard("authcode:c1"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(raw.as_deref(), Some("done:redirect:wxfresh"));
    cleanup(&store).await;
}

#[tokio::test]
async fn schedule_claims_are_exclusive_and_come_back() {
    let store = store("schedule");
    let c = Credentials::new(store.clone());
    for (cred, due) in [("a", 100), ("b", 200), ("c", 900)] {
        c.schedule("acme", cred, due, false).await.unwrap();
    }
    c.schedule("acme", "a", 50_000, true).await.unwrap();
    assert_eq!(
        c.due("acme", "a").await.unwrap(),
        Some(100),
        "NX keeps the entry"
    );
    assert_eq!(c.due_count("acme", 500).await.unwrap(), 2);
    let mut first = c.claim_due("acme", 500, 10_500, 10).await.unwrap();
    first.sort();
    assert_eq!(first, vec!["a", "b"]);
    assert!(
        c.claim_due("acme", 500, 10_500, 10)
            .await
            .unwrap()
            .is_empty(),
        "claimed"
    );
    let again = c.claim_due("acme", 11_000, 20_000, 1).await.unwrap();
    assert_eq!(
        again.len(),
        1,
        "limit honoured; unfinished claims come due again"
    );
    cleanup(&store).await;
}

#[tokio::test]
async fn refresh_token_rotation_is_persisted_by_compare_and_set() {
    let store = store("rotation");
    let c = Credentials::new(store.clone());
    let a = Authorizers::new(store.clone());
    let r1 = Secret::new("R1");
    let fence = c.next_fence("acme").await.unwrap();
    assert_eq!(
        a.authorize(
            "acme",
            &Authorization {
                appid: "wxa",
                event_ms: 1000,
                now_ms: 1000,
                fence,
                refresh_token: Some(&r1),
                func_info: &[1, 15],
            }
        )
        .await
        .unwrap(),
        (true, true)
    );
    let lease = c
        .acquire("acme", "authorizer:wxa", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let (r2, token) = (Secret::new("R2"), Secret::new("A1"));
    let w = authorizer_write(&token, 2000, &r1, &r2);
    assert_eq!(
        c.write_token(&lease, &w).await.unwrap(),
        WriteReport {
            outcome: WriteOutcome::Written,
            refresh_token_rotated: true
        }
    );
    c.release(&lease).await.unwrap();
    let rec = a.get("acme", "wxa").await.unwrap().unwrap();
    assert_eq!(rec.refresh_token.as_ref().unwrap().expose(), "R2");
    assert_eq!(rec.func_info, vec![1, 15]);

    // A writer that used R1 (older) cannot put its rotation over R2.
    let newer = c
        .acquire("acme", "authorizer:wxa", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let (r3, token2) = (Secret::new("R3"), Secret::new("A2"));
    let w = authorizer_write(&token2, 3000, &r1, &r3);
    assert_eq!(
        c.write_token(&newer, &w).await.unwrap(),
        WriteReport {
            outcome: WriteOutcome::Written,
            refresh_token_rotated: false
        }
    );
    let rec = a.get("acme", "wxa").await.unwrap().unwrap();
    assert_eq!(rec.refresh_token.unwrap().expose(), "R2");
    // An authorization exchanged with an older fence does not replace the refresh token.
    let (applied, stored) = a
        .authorize(
            "acme",
            &Authorization {
                appid: "wxa",
                event_ms: 4000,
                now_ms: 4000,
                fence,
                refresh_token: Some(&Secret::new("R-old")),
                func_info: &[1],
            },
        )
        .await
        .unwrap();
    assert!(applied && !stored);
    assert_eq!(
        a.get("acme", "wxa")
            .await
            .unwrap()
            .unwrap()
            .refresh_token
            .unwrap()
            .expose(),
        "R2"
    );
    cleanup(&store).await;
}

#[tokio::test]
async fn a_rotated_refresh_token_is_kept_when_the_token_write_is_refused() {
    let store = store("rotation-refused");
    let c = Credentials::new(store.clone());
    let a = Authorizers::new(store.clone());
    let r1 = Secret::new("R1");
    let authorize = |fence, rt| Authorization {
        appid: "wxa",
        event_ms: 1000,
        now_ms: 1000,
        fence,
        refresh_token: Some(rt),
        func_info: &[1],
    };
    let fence = c.next_fence("acme").await.unwrap();
    a.authorize("acme", &authorize(fence, &r1)).await.unwrap();
    let cred = "authorizer:wxa";

    // A holder whose lease expired and was taken over: its token is refused, the refresh
    // token WeChat rotated for it (from the stored R1) is kept.
    let lost = c
        .acquire("acme", cred, Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    let other = c
        .acquire("acme", cred, Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let (r2, late) = (Secret::new("R2"), Secret::new("A-late"));
    let w = authorizer_write(&late, 2000, &r1, &r2);
    assert_eq!(
        c.write_token(&lost, &w).await.unwrap(),
        WriteReport {
            outcome: WriteOutcome::LostLease,
            refresh_token_rotated: true
        }
    );
    assert!(c.token("acme", cred).await.unwrap().is_none(), "no token");
    let rec = a.get("acme", "wxa").await.unwrap().unwrap();
    assert_eq!(rec.refresh_token.unwrap().expose(), "R2");
    assert_eq!(rec.refresh_fence, fence.max(lost.fence));
    // The holder that took over used R1 too (it read before): its rotation is not put over
    // R2, its token is stored.
    let (r3, token) = (Secret::new("R3"), Secret::new("A-other"));
    let w = authorizer_write(&token, 2500, &r1, &r3);
    assert_eq!(
        c.write_token(&other, &w).await.unwrap(),
        WriteReport {
            outcome: WriteOutcome::Written,
            refresh_token_rotated: false
        }
    );
    c.release(&other).await.unwrap();
    assert_eq!(
        a.get("acme", "wxa")
            .await
            .unwrap()
            .unwrap()
            .refresh_token
            .unwrap()
            .expose(),
        "R2"
    );

    // 61023 under a lease: the reconcile stores the listed R4 under a fence newer than the
    // lease's, then WeChat rotates R4 for the holder.
    let holder = c
        .acquire("acme", cred, Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let r4 = Secret::new("R4");
    let reconcile_fence = c.next_fence("acme").await.unwrap();
    let listed = [Listed {
        appid: "wxa",
        refresh_token: Some(&r4),
        due_ms: 0,
    }];
    a.reconcile("acme", 1000, 1000, reconcile_fence, &listed)
        .await
        .unwrap();
    assert!(reconcile_fence > holder.fence);
    let (r5, token) = (Secret::new("R5"), Secret::new("A-after-61023"));
    let w = authorizer_write(&token, 3000, &r4, &r5);
    assert_eq!(
        c.write_token(&holder, &w).await.unwrap(),
        WriteReport {
            outcome: WriteOutcome::Written,
            refresh_token_rotated: true
        },
        "the rotation of the listed token is stored although its fence is newer"
    );
    let rec = a.get("acme", "wxa").await.unwrap().unwrap();
    assert_eq!(rec.refresh_token.unwrap().expose(), "R5");
    assert_eq!(rec.refresh_fence, reconcile_fence, "rfence never goes back");
    cleanup(&store).await;
}

#[tokio::test]
async fn records_without_a_due_time_read_as_due_at_half_their_life() {
    let store = store("legacy-due");
    let c = Credentials::new(store.clone());
    let mut conn = store.conn();
    let key = store.keys("acme").token("component");
    let _: i64 = redis::cmd("HSET")
        .arg(&key)
        .arg(&[
            "v", "T-legacy", "exp", "7201000", "lt", "7200000", "at", "1000", "fence", "3",
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    let t = c.token("acme", "component").await.unwrap().unwrap();
    assert_eq!(t.due_ms, 1000 + 3_600_000);
    let _: i64 = redis::cmd("HSET")
        .arg(&key)
        .arg(&["due", "soon"])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        c.token("acme", "component").await.is_err(),
        "a corrupt due is an error"
    );
    cleanup(&store).await;
}

#[tokio::test]
async fn revocation_drops_tokens_and_events_apply_in_time_order() {
    let store = store("revoke");
    let c = Credentials::new(store.clone());
    let a = Authorizers::new(store.clone());
    let r = Secret::new("R1");
    let auth = |event_ms| Authorization {
        appid: "wxa",
        event_ms,
        now_ms: event_ms,
        fence: 1,
        refresh_token: Some(&r),
        func_info: &[],
    };
    a.authorize("acme", &auth(1000)).await.unwrap();
    let lease = c
        .acquire("acme", "authorizer:wxa", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let token = Secret::new("A1");
    let mut w = write(&token, 1000);
    w.authorizer = Some("wxa");
    c.write_token(&lease, &w).await.unwrap();
    c.release(&lease).await.unwrap();

    assert!(
        !a.revoke("acme", "wxa", 500, 2000, "unauthorized")
            .await
            .unwrap(),
        "older event"
    );
    assert!(
        a.revoke("acme", "wxa", 2000, 2000, "unauthorized")
            .await
            .unwrap()
    );
    let rec = a.get("acme", "wxa").await.unwrap().unwrap();
    assert_eq!(rec.status, AuthorizerStatus::Revoked);
    assert!(rec.refresh_token.is_none());
    assert_eq!(rec.revoked_reason.as_deref(), Some("unauthorized"));
    assert!(c.token("acme", "authorizer:wxa").await.unwrap().is_none());
    assert_eq!(c.due("acme", "authorizer:wxa").await.unwrap(), None);
    assert!(!a.revoke("acme", "nobody", 2000, 2000, "x").await.unwrap());

    // A refresh that was in flight cannot store a token for the revoked account.
    let lease = c
        .acquire("acme", "authorizer:wxa", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let mut w = write(&token, 3000);
    w.authorizer = Some("wxa");
    let (rotated, used) = (Secret::new("R9"), Secret::new("R1"));
    w.refresh_token = Some((&used, &rotated));
    assert_eq!(
        c.write_token(&lease, &w).await.unwrap(),
        WriteReport {
            outcome: WriteOutcome::Revoked,
            refresh_token_rotated: false
        }
    );
    assert!(
        a.get("acme", "wxa")
            .await
            .unwrap()
            .unwrap()
            .refresh_token
            .is_none()
    );
    c.release(&lease).await.unwrap();
    // A late `authorized` from before the revocation does not resurrect it; a newer one does.
    assert!(!a.authorize("acme", &auth(1500)).await.unwrap().0);
    assert!(a.authorize("acme", &auth(3000)).await.unwrap().0);
    assert_eq!(
        a.get("acme", "wxa").await.unwrap().unwrap().status,
        AuthorizerStatus::Authorized
    );
    cleanup(&store).await;
}

#[tokio::test]
async fn reconcile_recovers_refresh_tokens_and_pages() {
    let store = store("reconcile");
    let c = Credentials::new(store.clone());
    let a = Authorizers::new(store.clone());
    let (ra, rb) = (Secret::new("Ra"), Secret::new("Rb"));
    // wxb was known without a refresh token (lost); wxc was revoked before the list was read.
    a.authorize(
        "acme",
        &Authorization {
            appid: "wxb",
            event_ms: 10,
            now_ms: 10,
            fence: 1,
            refresh_token: None,
            func_info: &[],
        },
    )
    .await
    .unwrap();
    a.authorize(
        "acme",
        &Authorization {
            appid: "wxc",
            event_ms: 10,
            now_ms: 10,
            fence: 1,
            refresh_token: Some(&Secret::new("Rc")),
            func_info: &[],
        },
    )
    .await
    .unwrap();
    a.revoke("acme", "wxc", 20, 20, "unauthorized")
        .await
        .unwrap();
    let fence = c.next_fence("acme").await.unwrap();
    let counts = a
        .reconcile(
            "acme",
            100,
            100,
            fence,
            &[
                Listed {
                    appid: "wxa",
                    refresh_token: Some(&ra),
                    due_ms: 500,
                },
                Listed {
                    appid: "wxb",
                    refresh_token: Some(&rb),
                    due_ms: 600,
                },
                Listed {
                    appid: "wxd",
                    refresh_token: None,
                    due_ms: 700,
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(counts.authorized, 2, "wxa and wxd are new");
    assert_eq!(counts.refresh_tokens, 2);
    assert_eq!(
        a.get("acme", "wxb")
            .await
            .unwrap()
            .unwrap()
            .refresh_token
            .unwrap()
            .expose(),
        "Rb"
    );
    assert_eq!(c.due("acme", "authorizer:wxa").await.unwrap(), Some(500));
    assert_eq!(
        c.due("acme", "authorizer:wxd").await.unwrap(),
        None,
        "nothing to refresh with"
    );
    assert_eq!(
        a.get("acme", "wxc").await.unwrap().unwrap().status,
        AuthorizerStatus::Revoked,
        "not listed: stays revoked"
    );
    // Idempotent.
    let again = a
        .reconcile(
            "acme",
            200,
            200,
            fence,
            &[Listed {
                appid: "wxa",
                refresh_token: Some(&ra),
                due_ms: 9999,
            }],
        )
        .await
        .unwrap();
    assert_eq!(again, Default::default());
    assert_eq!(c.due("acme", "authorizer:wxa").await.unwrap(), Some(500));

    assert_eq!(a.count("acme").await.unwrap(), 4);
    let (page1, next) = a.list("acme", None, 3).await.unwrap();
    assert_eq!(
        page1.iter().map(|r| r.appid.as_str()).collect::<Vec<_>>(),
        ["wxa", "wxb", "wxc"]
    );
    let (page2, end) = a.list("acme", next.as_deref(), 3).await.unwrap();
    assert_eq!(page2.len(), 1);
    assert_eq!(page2[0].appid, "wxd");
    assert!(end.is_none());
    assert!(
        a.list("other", None, 10).await.unwrap().0.is_empty(),
        "per tenant"
    );
    cleanup(&store).await;
}

#[tokio::test]
async fn far_future_event_times_are_refused_and_never_lock_out_real_ones() {
    let store = store("future");
    let c = Credentials::new(store.clone());
    let a = Authorizers::new(store.clone());
    let now: i64 = 1_700_000_000_000;
    let hour = 3_600_000;
    let mut conn = store.conn();
    let keys = store.keys("acme");

    // Tickets: a CreateTime an hour ahead is refused; one within the skew is taken.
    assert!(
        !c.store_ticket("acme", "forged", now / 1000 + 3600, now)
            .await
            .unwrap()
    );
    assert!(c.ticket("acme").await.unwrap().is_none());
    assert!(
        c.store_ticket("acme", "early", now / 1000 + 30, now)
            .await
            .unwrap()
    );
    // A ticket poisoned before this rule does not hold back a real push.
    let _: () = redis::cmd("HSET")
        .arg(keys.ticket())
        .arg("ct")
        .arg(9_999_999_999_i64)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        c.store_ticket("acme", "real", now / 1000, now)
            .await
            .unwrap()
    );
    assert_eq!(
        c.ticket("acme").await.unwrap().unwrap().value.expose(),
        "real"
    );

    // Authorizers: a far-future event is refused by every ordering script.
    let r = Secret::new("R1");
    let auth = |event_ms, now_ms| Authorization {
        appid: "wxa",
        event_ms,
        now_ms,
        fence: 1,
        refresh_token: Some(&r),
        func_info: &[],
    };
    assert!(!a.authorize("acme", &auth(now + hour, now)).await.unwrap().0);
    assert!(a.get("acme", "wxa").await.unwrap().is_none());
    assert!(a.authorize("acme", &auth(now, now)).await.unwrap().0);
    assert!(
        !a.revoke("acme", "wxa", now + hour, now, "unauthorized")
            .await
            .unwrap()
    );
    assert_eq!(
        a.get("acme", "wxa").await.unwrap().unwrap().status,
        AuthorizerStatus::Authorized
    );
    // A status poisoned with a far-future time (before this rule): a real revoke, a real
    // authorization and a reconcile all still apply.
    let poison = |conn: &mut wxhub_store::StoreConn| {
        let key = keys.authorizer("wxa");
        let mut conn = conn.clone();
        async move {
            let _: () = redis::cmd("HSET")
                .arg(key)
                .arg("status_at")
                .arg(9_999_999_999_000_i64)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    };
    poison(&mut conn).await;
    assert!(
        a.revoke("acme", "wxa", now + 1000, now + 1000, "unauthorized")
            .await
            .unwrap()
    );
    poison(&mut conn).await;
    assert!(
        a.authorize("acme", &auth(now + 2000, now + 2000))
            .await
            .unwrap()
            .0
    );
    a.revoke("acme", "wxa", now + 3000, now + 3000, "unauthorized")
        .await
        .unwrap();
    poison(&mut conn).await;
    let fence = c.next_fence("acme").await.unwrap();
    let counts = a
        .reconcile(
            "acme",
            now + 4000,
            now + 4000,
            fence,
            &[Listed {
                appid: "wxa",
                refresh_token: Some(&r),
                due_ms: now + 5000,
            }],
        )
        .await
        .unwrap();
    assert_eq!(counts.authorized, 1);
    let rec = a.get("acme", "wxa").await.unwrap().unwrap();
    assert_eq!(rec.status, AuthorizerStatus::Authorized);
    assert_eq!(rec.status_at_ms, now + 4000);

    // Within one second, the event applied last wins (notices carry whole seconds, a reconcile
    // is stamped in ms): a real `unauthorized` right after a reconcile is not lost.
    assert!(
        a.revoke(
            "acme",
            "wxa",
            (now + 4000) / 1000 * 1000,
            now + 4500,
            "unauthorized"
        )
        .await
        .unwrap()
    );
    cleanup(&store).await;
}

#[tokio::test]
async fn an_older_authorization_keeps_its_refresh_token_when_the_account_is_authorized() {
    let store = store("late-auth");
    let c = Credentials::new(store.clone());
    let a = Authorizers::new(store.clone());
    let now: i64 = 1_700_000_000_000;
    let fence = c.next_fence("acme").await.unwrap();
    // A reconcile listed an account before its code was exchanged (no refresh token there); the
    // exchange of the earlier `authorized` notice does not change the status but keeps its
    // (newer-fenced) refresh token.
    let fresh_rt = Secret::new("R-exchanged");
    let late = Authorization {
        appid: "wxn",
        event_ms: now + 3000,
        now_ms: now + 4500,
        fence: fence + 1,
        refresh_token: Some(&fresh_rt),
        func_info: &[],
    };
    a.reconcile(
        "acme",
        now + 4000,
        now + 4000,
        fence,
        &[Listed {
            appid: "wxn",
            refresh_token: None,
            due_ms: now + 5000,
        }],
    )
    .await
    .unwrap();
    assert_eq!(a.authorize("acme", &late).await.unwrap(), (false, true));
    let rec = a.get("acme", "wxn").await.unwrap().unwrap();
    assert_eq!(rec.refresh_token.unwrap().expose(), "R-exchanged");
    assert_eq!(rec.status_at_ms, now + 4000, "the newer status stays");

    // Not when the newer status is a revocation.
    a.revoke("acme", "wxn", now + 6000, now + 6000, "unauthorized")
        .await
        .unwrap();
    let later = Authorization {
        event_ms: now + 5000,
        now_ms: now + 7000,
        fence: fence + 2,
        ..late
    };
    assert_eq!(a.authorize("acme", &later).await.unwrap(), (false, false));
    assert!(
        a.get("acme", "wxn")
            .await
            .unwrap()
            .unwrap()
            .refresh_token
            .is_none()
    );
    cleanup(&store).await;
}

fn held(value: &Secret, fence: u64, now: i64) -> TokenRecord {
    TokenRecord {
        value: value.clone(),
        expires_at_ms: now + 7_000_000,
        lifetime_ms: 7_200_000,
        refreshed_at_ms: now - 200_000,
        fence,
        rejected: false,
        due_ms: now + 5_000_000,
    }
}

#[tokio::test]
async fn restored_tokens_never_replace_newer_state() {
    let store = store("restore");
    let c = Credentials::new(store.clone());
    let a = Authorizers::new(store.clone());
    let now = 1_700_000_000_000;
    let mut conn = store.conn();
    let fence_key = store.keys("acme").fence();
    let counter = |conn: &wxhub_store::StoreConn| {
        let (mut conn, key) = (conn.clone(), fence_key.clone());
        async move {
            let v: Option<u64> = redis::cmd("GET")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            v.unwrap_or(0)
        }
    };

    // An emptied store: the epoch is new, the held token is written back with its schedule
    // entry, and the lost fence counter is raised to its fence.
    let e = c.epoch("acme", now).await.unwrap();
    assert!(e.created && e.healed_at_ms.is_none() && !e.has_ticket);
    assert_eq!(c.epoch("acme", now + 1).await.unwrap().id, e.id, "stable");
    let (v40, v57) = (Secret::new("T40"), Secret::new("T57"));
    assert_eq!(
        c.restore_token("acme", "component", &held(&v40, 40, now), now + 1000, None)
            .await
            .unwrap(),
        Restored::Written
    );
    assert_eq!(counter(&conn).await, 40);
    assert_eq!(c.due("acme", "component").await.unwrap(), Some(now + 1000));
    assert!(c.epoch("acme", now).await.unwrap().has_component_token);
    // Another replica held a newer generation of it: that one wins, whatever the order; an
    // older one does not replace it.
    assert_eq!(
        c.restore_token("acme", "component", &held(&v57, 57, now), now + 2000, None)
            .await
            .unwrap(),
        Restored::Written
    );
    assert_eq!(
        c.restore_token("acme", "component", &held(&v40, 40, now), now + 500, None)
            .await
            .unwrap(),
        Restored::Kept
    );
    let stored = c.token("acme", "component").await.unwrap().unwrap();
    assert_eq!((stored.value.expose(), stored.fence), ("T57", 57));
    assert_eq!(counter(&conn).await, 57);
    assert_eq!(
        c.due("acme", "component").await.unwrap(),
        Some(now + 1000),
        "the earlier due time is kept"
    );

    // A refresh after the write-back gets a newer fence, so its write is accepted; no
    // write-back replaces what a refresh wrote, however new its fence.
    let lease = c
        .acquire("acme", "component", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.fence, 58);
    // While the refresh holds the lease, no write-back either.
    assert_eq!(
        c.restore_token("acme", "component", &held(&v57, 99, now), now, None)
            .await
            .unwrap(),
        Restored::Kept
    );
    let fresh = Secret::new("T58");
    assert!(matches!(
        c.write_token(&lease, &write(&fresh, now))
            .await
            .unwrap()
            .outcome,
        WriteOutcome::Written
    ));
    c.release(&lease).await.unwrap();
    assert_eq!(
        c.restore_token("acme", "component", &held(&v57, 99, now), now, None)
            .await
            .unwrap(),
        Restored::Kept
    );
    assert_eq!(
        c.token("acme", "component")
            .await
            .unwrap()
            .unwrap()
            .value
            .expose(),
        "T58"
    );

    // Authorizer tokens: only for an account stored as authorized — never for an unknown or
    // revoked one.
    let at = Secret::new("A1");
    let restore_wxa = || async {
        c.restore_token(
            "acme",
            "authorizer:wxa",
            &held(&at, 10, now),
            now,
            Some("wxa"),
        )
        .await
        .unwrap()
    };
    assert_eq!(restore_wxa().await, Restored::NotAuthorized);
    let r = Secret::new("R1");
    let auth = Authorization {
        appid: "wxa",
        event_ms: now,
        now_ms: now,
        fence: 59,
        refresh_token: Some(&r),
        func_info: &[],
    };
    a.authorize("acme", &auth).await.unwrap();
    a.revoke("acme", "wxa", now + 1000, now + 1000, "unauthorized")
        .await
        .unwrap();
    assert_eq!(restore_wxa().await, Restored::NotAuthorized);
    assert!(c.token("acme", "authorizer:wxa").await.unwrap().is_none());
    a.authorize(
        "acme",
        &Authorization {
            event_ms: now + 2000,
            ..auth
        },
    )
    .await
    .unwrap();
    assert_eq!(restore_wxa().await, Restored::Written);

    // Tickets come back by CreateTime order: a push stored meanwhile is newer and stays.
    let ticket = |v: &str, ct| wxhub_store::TicketRecord {
        value: Secret::new(v),
        create_time: ct,
        received_at_ms: ct * 1000,
    };
    assert!(
        c.store_ticket("acme", "pushed", now / 1000, now)
            .await
            .unwrap()
    );
    assert!(
        !c.restore_ticket("acme", &ticket("held", now / 1000 - 600), now)
            .await
            .unwrap()
    );
    assert_eq!(
        c.ticket("acme").await.unwrap().unwrap().value.expose(),
        "pushed"
    );

    // The counter is raised to the highest fence a replica took, never lowered.
    c.raise_fence("acme", 10).await.unwrap();
    assert_eq!(counter(&conn).await, 58);
    c.raise_fence("acme", 100).await.unwrap();
    assert_eq!(counter(&conn).await, 100);

    // The epoch is healed once, and only the epoch it was observed as.
    assert!(!c.mark_healed("acme", "another", now).await.unwrap());
    assert!(c.mark_healed("acme", &e.id, now + 5).await.unwrap());
    assert!(!c.mark_healed("acme", &e.id, now + 6).await.unwrap());
    assert_eq!(
        c.epoch("acme", now).await.unwrap().healed_at_ms,
        Some(now + 5)
    );
    let _: i64 = redis::cmd("DEL")
        .arg(store.keys("acme").epoch())
        .query_async(&mut conn)
        .await
        .unwrap();
    let again = c.epoch("acme", now + 10).await.unwrap();
    assert!(again.created && again.id != e.id && again.healed_at_ms.is_none());
    cleanup(&store).await;
}
