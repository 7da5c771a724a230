//! Every key a tenant's commands touch is in the tenant's Redis Cluster slot.
//!
//! On a cluster a script or a transaction whose keys span slots is refused (`CROSSSLOT`), and a
//! script touching a key it did not declare in `KEYS` is refused when that key lives elsewhere
//! (and breaks atomicity guarantees when the slot later moves). WxJava's pipelined `SET NX` +
//! `GET` broke exactly this way on Redis Cluster (#3378). This test drives every store method
//! for one tenant through a recording connection on the test Redis (a cluster when
//! `WXHUB_TEST_REDIS_CLUSTER` names one) and asserts, with the CRC16 slots Redis computes:
//!
//! - every key every command touched (script `KEYS`, plain commands, pipelines) carries the
//!   tenant's hash tag and so hashes to one slot, the tenant's;
//! - every script of the crate ran at least once (counted against `Script::new(` in the
//!   sources, so a new script without coverage here fails the test);
//! - no Lua script touches a key it was not given: every `redis.call` names `KEYS[…]` or a local
//!   bound to one.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::cluster_routing::Slot;
use wxhub_domain::Secret;

use crate::authorizers::{Authorization, Listed, Profile};
use crate::connection::Sent;
use crate::credentials::TokenWrite;
use crate::dedupe::Dedupe;
use crate::nonces::Nonces;
use crate::{
    AttemptRecord, AuthCodes, Authorizers, Credentials, JobState, Jobs, Ledger, Limiter, NewJob,
    PreAuthCodes, Rate, RedisConfig, SendGate, Settle, SharedPreAuth, Store, TicketRecord,
    TokenRecord,
};

/// The store's sources, for the script count and the Lua check.
const SOURCES: &[(&str, &str)] = &[
    ("auth_codes.rs", include_str!("auth_codes.rs")),
    ("authorizers.rs", include_str!("authorizers.rs")),
    ("busy.rs", include_str!("busy.rs")),
    ("campaigns.rs", include_str!("campaigns.rs")),
    ("credentials.rs", include_str!("credentials.rs")),
    ("dedupe.rs", include_str!("dedupe.rs")),
    ("jobs.rs", include_str!("jobs.rs")),
    ("leased.rs", include_str!("leased.rs")),
    ("ledger.rs", include_str!("ledger.rs")),
    ("limiter.rs", include_str!("limiter.rs")),
    ("nonces.rs", include_str!("nonces.rs")),
    ("pre_auth.rs", include_str!("pre_auth.rs")),
    ("recovery.rs", include_str!("recovery.rs")),
    ("lib.rs", include_str!("lib.rs")),
];

/// The test Redis: the rule of `wxhub_testkit::redis_config` (which depends on this crate).
fn config() -> RedisConfig {
    let nodes: Vec<String> = std::env::var("WXHUB_TEST_REDIS_CLUSTER")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    if nodes.is_empty() {
        RedisConfig::new(
            std::env::var("WXHUB_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        )
    } else {
        RedisConfig::cluster(nodes)
    }
}

/// The keys a command names, by the command's key positions (the commands the store sends).
fn keys_of(args: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let Some(name) = args.first().map(|n| n.to_ascii_uppercase()) else {
        return Vec::new();
    };
    match name.as_slice() {
        b"EVAL" | b"EVALSHA" => {
            let n: usize = std::str::from_utf8(&args[2]).unwrap().parse().unwrap();
            args[3..3 + n].to_vec()
        }
        b"DEL" | b"UNLINK" | b"EXISTS" | b"MGET" => args[1..].to_vec(),
        b"SCRIPT" | b"PING" | b"SCAN" | b"TIME" | b"MULTI" | b"EXEC" => Vec::new(),
        _ => args.get(1).cloned().into_iter().collect(),
    }
}

/// The script's hash: EVALSHA names it, EVAL carries the source.
fn script_of(args: &[Vec<u8>]) -> Option<String> {
    match args.first()?.to_ascii_uppercase().as_slice() {
        b"EVALSHA" => Some(String::from_utf8_lossy(&args[1]).into_owned()),
        b"EVAL" => Some(
            redis::Script::new(std::str::from_utf8(&args[1]).ok()?)
                .get_hash()
                .to_owned(),
        ),
        _ => None,
    }
}

#[tokio::test]
async fn every_key_of_a_tenant_is_in_the_tenants_slot() {
    let tenant = "acme";
    let namespace = format!("t-slots-{:08x}", rand::random::<u32>());
    let base = Store::connect(&config(), &namespace).unwrap();
    let log: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let store = base.recording(log.clone());

    let now = 1_700_000_000_000i64;
    let rt_old = Secret::new("rt-1");
    let rt_new = Secret::new("rt-2");
    let token = Secret::new("tok-1");
    let creds = Credentials::new(store.clone());
    let authorizers = Authorizers::new(store.clone());

    // Authorizers: the record, the index, the reconcile, the profile.
    authorizers
        .authorize(
            tenant,
            &Authorization {
                appid: "wxa1",
                event_ms: now,
                now_ms: now,
                fence: 1,
                refresh_token: Some(&rt_old),
                func_info: &[1, 2],
            },
        )
        .await
        .unwrap();
    authorizers
        .reconcile(
            tenant,
            now,
            now,
            2,
            &[
                Listed {
                    appid: "wxa1",
                    refresh_token: Some(&rt_old),
                    due_ms: now,
                },
                Listed {
                    appid: "wxa2",
                    refresh_token: Some(&rt_old),
                    due_ms: now,
                },
            ],
        )
        .await
        .unwrap();
    authorizers
        .set_profile(
            tenant,
            "wxa1",
            &Profile {
                nick_name: "n".into(),
                ..Profile::default()
            },
        )
        .await
        .unwrap();
    authorizers.get(tenant, "wxa1").await.unwrap();
    authorizers.list(tenant, None, 10).await.unwrap();
    authorizers.count(tenant).await.unwrap();

    // Credentials: lease, fenced write, invalidation, ticket, schedule, guards, markers.
    let lease = creds
        .acquire(tenant, "authorizer:wxa1", Duration::from_secs(5))
        .await
        .unwrap()
        .expect("a fresh lease");
    creds.holds(&lease).await.unwrap();
    creds
        .write_token(
            &lease,
            &TokenWrite {
                value: &token,
                expires_at_ms: now + 7_200_000,
                lifetime_ms: 7_200_000,
                now_ms: now,
                due_ms: now + 5_760_000,
                authorizer: Some("wxa1"),
                refresh_token: Some((&rt_old, &rt_new)),
            },
        )
        .await
        .unwrap();
    creds.release(&lease).await.unwrap();
    creds.token(tenant, "authorizer:wxa1").await.unwrap();
    creds
        .invalidate(tenant, "authorizer:wxa1", "tok-1", now)
        .await
        .unwrap();
    creds
        .store_ticket(tenant, "ticket", now / 1000, now)
        .await
        .unwrap();
    creds.ticket(tenant).await.unwrap();
    creds
        .schedule(tenant, "component", now, false)
        .await
        .unwrap();
    creds.due(tenant, "component").await.unwrap();
    creds.claim_due(tenant, now, now + 1000, 10).await.unwrap();
    creds.due_count(tenant, now).await.unwrap();
    creds.next_fence(tenant).await.unwrap();
    creds
        .guard(tenant, "push-ticket", Duration::from_secs(5))
        .await
        .unwrap();
    creds
        .mark(tenant, "m", "v", Duration::from_secs(5), true)
        .await
        .unwrap();
    creds.marker(tenant, "m").await.unwrap();
    creds.clear_marker(tenant, "m", "v").await.unwrap();
    creds.drop_tokens(tenant, &["jsapi", "app"]).await.unwrap();

    // Recovery: the epoch, the write-back of a token and a ticket, the fence.
    let epoch = creds.epoch(tenant, now).await.unwrap();
    creds.mark_healed(tenant, &epoch.id, now).await.unwrap();
    let record = TokenRecord {
        value: Secret::new("tok-2"),
        expires_at_ms: now + 7_200_000,
        lifetime_ms: 7_200_000,
        refreshed_at_ms: now,
        fence: 10,
        rejected: false,
        due_ms: now + 5_760_000,
    };
    creds
        .restore_token(
            tenant,
            "authorizer:wxa2",
            &record,
            now + 5_760_000,
            Some("wxa2"),
        )
        .await
        .unwrap();
    creds
        .restore_token(tenant, "component", &record, now + 5_760_000, None)
        .await
        .unwrap();
    creds.raise_fence(tenant, 20).await.unwrap();
    creds
        .restore_ticket(
            tenant,
            &TicketRecord {
                value: Secret::new("ticket-2"),
                create_time: now / 1000 + 1,
                received_at_ms: now,
            },
            now,
        )
        .await
        .unwrap();
    authorizers
        .revoke(tenant, "wxa2", now + 1000, now + 1000, "test")
        .await
        .unwrap();

    // Dedupe: a claim completed directly, one through the completer, one released.
    let dedupe = Dedupe::new(
        store.clone(),
        Duration::from_secs(5),
        Duration::from_secs(60),
    );
    dedupe.claim(tenant, "wxa1", "msg:1", "o1").await.unwrap();
    dedupe
        .complete(tenant, "wxa1", "msg:1", "o1")
        .await
        .unwrap();
    dedupe.claim(tenant, "wxa1", "msg:2", "o2").await.unwrap();
    dedupe.release(tenant, "wxa1", "msg:2", "o2").await.unwrap();
    dedupe.claim(tenant, "wxa1", "msg:3", "o3").await.unwrap();
    let completer = dedupe.spawn_completer();
    completer.complete(tenant, "wxa1", "msg:3", "o3");
    completer.flush().await;

    // Authorization codes, the ledger, the limiters, nonces, the shared pre-auth code.
    let codes = AuthCodes::new(
        store.clone(),
        Duration::from_secs(5),
        Duration::from_secs(60),
    );
    codes.claim(tenant, "d1", "me").await.unwrap();
    codes.complete(tenant, "d1", "me", "wxa1").await.unwrap();
    codes.claim(tenant, "d2", "me").await.unwrap();
    codes.release(tenant, "d2", "me").await.unwrap();
    codes.refuse(tenant, "d3", "61010").await.unwrap();
    let ledger = Ledger::new(store.clone());
    ledger
        .record(tenant, "m1", Duration::from_secs(60))
        .await
        .unwrap();
    ledger.applied(tenant, "m1").await.unwrap();
    ledger
        .claim(tenant, "m2", "h1", Duration::from_secs(5))
        .await
        .unwrap();
    ledger.abandon(tenant, "m2", "h1").await.unwrap();
    Limiter::new(store.clone())
        .acquire(
            tenant,
            &[
                ("page:addr:10.0.0.1", Rate::per_minute(10, 5)),
                ("page:tenant", Rate::per_minute(100, 50)),
            ],
            1,
        )
        .await
        .unwrap();
    // Leases of up to 8 units (a quarter of the burst is more): `Limiter::take_up_to`.
    crate::LeasedLimiter::new(store.clone(), 8)
        .acquire(
            tenant,
            "relay:wxa1:/cgi-bin/menu/get",
            Rate::per_minute(600, 100),
        )
        .await
        .unwrap();
    Nonces::new(store.clone())
        .bind(
            tenant,
            "1700000000",
            "n1",
            "digest",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let pre_auth = PreAuthCodes::new(store.clone());
    pre_auth
        .share(
            tenant,
            &SharedPreAuth {
                code: Secret::new("pac"),
                marker: "mk".into(),
                expires_at_ms: now + 600_000,
            },
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    pre_auth.shared(tenant).await.unwrap();
    pre_auth.retire(tenant, "mk").await.unwrap();

    // Messaging jobs: create (with an idempotency key), claim, settle, delivery reports,
    // replay, lists, parking; a second job abandoned.
    let jobs = Jobs::new(
        store.clone(),
        Duration::from_secs(600),
        Duration::from_secs(600),
    );
    let id = crate::jobs::new_id(tenant, now);
    let new_job = |id: &str, idem: Option<&str>| NewJob {
        id: id.to_owned(),
        appid: "wxa1".into(),
        kind: "custom".into(),
        api: "custom".into(),
        touser: "o1".into(),
        body: "{}".into(),
        idempotency_key: idem.map(str::to_owned),
        campaign: None,
        now_ms: now,
    };
    jobs.create(tenant, &new_job(&id, Some("k1")))
        .await
        .unwrap();
    jobs.claim_to_send(
        tenant,
        &id,
        "",
        SendGate {
            park: Some(("wxa1", "custom")),
            buckets: &[("send:wxa1:custom", Rate::per_minute(60, 5))],
        },
        "w1",
        now,
        now + 10_000,
    )
    .await
    .unwrap();
    jobs.settle(
        tenant,
        &id,
        "wxa1",
        "w1",
        &Settle {
            state: JobState::Sent,
            errcode: 0,
            reason: String::new(),
            msgid: 42,
            next_at_ms: 0,
            attempt: Some(AttemptRecord {
                at_ms: now,
                errcode: 0,
                errmsg: "ok".into(),
            }),
            count_attempt: true,
            now_ms: now,
            campaign: String::new(),
        },
    )
    .await
    .unwrap();
    jobs.by_msgid(tenant, "wxa1", 42).await.unwrap();
    jobs.delivered(tenant, &id, true, "success", now)
        .await
        .unwrap();
    jobs.hold_report(tenant, "wxa1", 43, true, "success", Duration::from_secs(60))
        .await
        .unwrap();
    jobs.replay(tenant, &id, now).await.unwrap();
    jobs.get(tenant, &id).await.unwrap();
    jobs.list(tenant, Some(JobState::Delivered), 10)
        .await
        .unwrap();
    jobs.list(tenant, None, 10).await.unwrap();
    jobs.park(tenant, "wxa1", "custom", Duration::from_secs(5))
        .await
        .unwrap();
    jobs.parked(tenant, "wxa1", "custom").await.unwrap();
    let other = crate::jobs::new_id(tenant, now + 1);
    jobs.create(tenant, &new_job(&other, Some("k2")))
        .await
        .unwrap();
    jobs.abandon(tenant, &other, Some("k2")).await.unwrap();
    // The tenant window: one announced, one held, fed; the authorizer checked on create.
    let windowed = jobs.clone().with_tenant_window(1);
    let mut ids = Vec::new();
    for n in 3..5 {
        let id = crate::jobs::new_id(tenant, now + n);
        windowed.create(tenant, &new_job(&id, None)).await.unwrap();
        ids.push(id);
    }
    let unknown = crate::jobs::new_id(tenant, now + 5);
    windowed
        .create_as(tenant, &new_job(&unknown, None), true)
        .await
        .unwrap();
    windowed
        .claim_feed(tenant, Duration::from_millis(100))
        .await
        .unwrap();
    let fed = windowed.take_held(tenant, now).await.unwrap();
    windowed.routes(tenant, &fed).await.unwrap();
    windowed.fed(tenant, &ids).await.unwrap();
    windowed.window_counts(tenant).await.unwrap();

    let campaigns = crate::Campaigns::new(store.clone(), Duration::from_secs(600));
    let campaign = crate::jobs::new_id(tenant, now + 2);
    campaigns
        .create(
            tenant,
            &crate::NewCampaign {
                id: campaign.clone(),
                appid: "wxa1".into(),
                kind: "template".into(),
                api: "template".into(),
                body: "{}".into(),
                recipients: vec![
                    crate::CampaignRecipient {
                        touser: "o1".into(),
                        data: Default::default(),
                    },
                    crate::CampaignRecipient {
                        touser: "o2".into(),
                        data: Default::default(),
                    },
                ],
                now_ms: now,
            },
        )
        .await
        .unwrap();
    campaigns.active(tenant).await.unwrap();
    campaigns
        .claim_tick(tenant, &campaign, Duration::from_millis(100))
        .await
        .unwrap();
    let (first, _) = campaigns
        .take(tenant, &campaign, 1, now, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("a slice");
    campaigns.fed(tenant, &campaign, first).await.unwrap();
    campaigns
        .set_state(tenant, &campaign, "paused", &["running"])
        .await
        .unwrap();
    campaigns.get(tenant, &campaign).await.unwrap();

    let sent = log.lock().unwrap().clone();
    // Clean up before asserting (a failed assertion must not leave keys behind).
    let leftover = base.scan_keys(&format!("{namespace}:*")).await.unwrap();
    if !leftover.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(&leftover)
            .query_async(&mut base.conn())
            .await
            .unwrap();
    }

    let tenant_slot = Slot::for_key(tenant);
    // The one key of the namespace rather than of a tenant (the feeder's set of busy tenants):
    // only ever named alone by a plain set command, never in a script with a tenant's keys.
    let busy = crate::BusyTenants::new(base.clone()).key();
    let mut keyed = 0;
    for s in &sent {
        let name = String::from_utf8_lossy(&s.args[0]).to_uppercase();
        if s.args.get(1).is_some_and(|k| *k == busy.as_bytes()) {
            assert!(
                matches!(name.as_str(), "SADD" | "SREM" | "SMEMBERS") && s.args.len() <= 3,
                "{name} named the namespace's busy-tenants set"
            );
            continue;
        }
        for key in keys_of(&s.args) {
            let key_text = String::from_utf8_lossy(&key);
            assert!(
                key_text.starts_with(&format!("{namespace}:{{{tenant}}}:")),
                "{name} touched {key_text}, outside the tenant's hash tag"
            );
            assert_eq!(
                Slot::for_key(&key),
                tenant_slot,
                "{name} touched {key_text}, outside the tenant's slot"
            );
            keyed += 1;
        }
    }
    assert!(keyed > 50, "the scenario touched only {keyed} keys");

    let ran: BTreeSet<String> = sent.iter().filter_map(|s| script_of(&s.args)).collect();
    let defined = scripts();
    assert_eq!(
        defined.len(),
        SOURCES
            .iter()
            .map(|(_, src)| src.matches("Script::new(").count())
            .sum::<usize>(),
        "every script's source is a raw string literal in one of SOURCES"
    );
    let missing: Vec<String> = defined
        .iter()
        .filter(|(_, lua)| !ran.contains(redis::Script::new(lua).get_hash()))
        .map(|(file, lua)| format!("{file}: {}", lua.trim().lines().next().unwrap_or_default()))
        .collect();
    assert!(
        missing.is_empty(),
        "scripts that never ran in this scenario (add them): {missing:?}"
    );
}

/// Marks the limiter's GCRA function (`gcra_lua!`), a piece of scripts and not one itself.
const FRAGMENT: &str = "-- gcra fragment";
/// Marks the rest of a script that starts with that function (`concat!(gcra_lua!(), r"…")`).
const AFTER_FRAGMENT: &str = "-- after gcra";

/// Every piece of Lua of the crate (a raw string literal calling Redis, the GCRA fragment
/// included, or the rest of a script that starts with it), with its file.
fn lua_sources() -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    for (file, src) in SOURCES {
        for lua in src.split("r\"").skip(1).filter_map(|s| s.split('"').next()) {
            if lua.contains("redis.call") || lua.contains(AFTER_FRAGMENT) {
                out.push((*file, lua));
            }
        }
    }
    out
}

/// Every script of the crate as Redis runs it: each literal of [`lua_sources`] but the
/// fragment, with the fragment in front of those that start with it.
fn scripts() -> Vec<(&'static str, String)> {
    let pieces = lua_sources();
    let fragment = pieces
        .iter()
        .find(|(_, lua)| lua.contains(FRAGMENT))
        .map(|(_, lua)| *lua)
        .expect("the GCRA fragment");
    pieces
        .iter()
        .filter(|(_, lua)| !lua.contains(FRAGMENT))
        .map(|(file, lua)| {
            if lua.contains(AFTER_FRAGMENT) {
                (*file, format!("{fragment}{lua}"))
            } else {
                (*file, (*lua).to_owned())
            }
        })
        .collect()
}

/// The Lua source of every script (the raw strings passed to `Script::new` or kept in a
/// `const` that is), and every `redis.call`'s key argument in them.
#[test]
fn scripts_touch_only_the_keys_they_are_given() {
    let mut checked = 0;
    for (file, lua) in lua_sources() {
        {
            // Names bound to a key: `local k = KEYS[i]`, `for i, key in ipairs(KEYS) do`.
            let locals: Vec<&str> = lua
                .lines()
                .filter_map(|l| {
                    let l = l.trim();
                    if let Some(head) = l
                        .strip_prefix("for ")
                        .and_then(|l| l.strip_suffix(" in ipairs(KEYS) do"))
                    {
                        return head.split(',').nth(1).map(str::trim);
                    }
                    let (name, value) = l.strip_prefix("local ")?.split_once('=')?;
                    value.trim().starts_with("KEYS[").then_some(name.trim())
                })
                .collect();
            for call in lua.split("redis.call(").skip(1) {
                let args: Vec<&str> = call.splitn(3, ',').map(str::trim).collect();
                let command = args[0]
                    .split(')')
                    .next()
                    .unwrap_or_default()
                    .trim_matches(|c| c == '\'' || c == '"');
                if matches!(command.to_ascii_uppercase().as_str(), "TIME" | "PING") {
                    continue;
                }
                let key = args.get(1).copied().unwrap_or_default();
                let key = key.split(')').next().unwrap_or_default();
                assert!(
                    key.starts_with("KEYS[") || locals.contains(&key),
                    "{file}: redis.call('{command}', {key}…) names a key not given in KEYS"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 40, "only {checked} redis.call sites found");
}

/// Every module of the crate is in `SOURCES` (so its scripts are counted and checked), but
/// the ones that hold no script: this file, the connection and the key builder.
#[test]
fn every_module_is_checked() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let listed = SOURCES.iter().any(|(file, _)| *file == name);
        if name.ends_with(".rs")
            && !listed
            && !matches!(name.as_str(), "slots.rs" | "connection.rs" | "keys.rs")
        {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "add to SOURCES and to the scenario: {missing:?}"
    );
}

/// Every key builder puts the tenant, and only the tenant, in the hash tag.
#[test]
fn every_key_builder_hashes_to_the_tenants_slot() {
    for tenant in ["acme", "t-1", "a", &"z".repeat(32)] {
        let k = crate::Keys::new("wxhub", tenant);
        let slot = Slot::for_key(tenant);
        let keys = [
            k.dedupe("wx1", "msg:{42}"),
            k.nonce("1700000000", "1"),
            k.ticket(),
            k.token("authorizer:wx1"),
            k.lock("component"),
            k.fence(),
            k.schedule(),
            k.authorizer("wx1"),
            k.authorizers(),
            k.consumed("m"),
            k.epoch(),
            k.guard("push-ticket"),
            k.auth_code("0123"),
            k.limit("page:addr:10.0.0.1"),
            k.pre_auth(),
            k.job("acme.0001"),
            k.job_attempts("acme.0001"),
            k.jobs("queued"),
            k.idempotency("0123"),
            k.msgid("wx1", 42),
            k.report("wx1", 42),
            k.park("wx1", "custom"),
            k.oauth_state("st"),
            k.campaign("acme.0002"),
            k.campaign_recipients("acme.0002"),
            k.campaigns(),
            k.in_broker(),
            k.held(),
            k.feeding(),
        ];
        // Every builder is here: `new` and `prefix` build no key.
        let builders = include_str!("keys.rs").matches("    pub fn ").count() - 2;
        assert_eq!(
            keys.len(),
            builders,
            "a key builder is missing from this list"
        );
        for key in keys {
            assert_eq!(Slot::for_key(&key), slot, "{key}");
        }
    }
    // Tenants spread over the slots (they are not all pinned to one node).
    let slots: BTreeSet<_> = (0..64)
        .map(|i| format!("{:?}", Slot::for_key(format!("tenant-{i}"))))
        .collect();
    assert!(slots.len() > 60);
}
