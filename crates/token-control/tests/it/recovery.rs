//! Recovery from an emptied Redis (every key of the namespace deleted, as a Redis restarted
//! without persistence leaves it), measured under read load: failed reads and time to recovery,
//! with replicas that kept running and with every replica restarted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tonic::Code;
use wxhub_proto::token::v1::{GetAccessTokenRequest, InvalidateAccessTokenRequest};

use crate::harness::*;

const AUTHORIZER_TOKEN: &str = "/cgi-bin/component/api_authorizer_token";
const COMPONENT_TOKEN: &str = "/cgi-bin/component/api_component_token";
const LIST: &str = "/cgi-bin/component/api_get_authorizer_list";
const START_PUSH: &str = "/cgi-bin/component/api_start_push_ticket";

fn get(appid: &str) -> tonic::Request<GetAccessTokenRequest> {
    let mut r = req(
        GetAccessTokenRequest {
            tenant: ACME.into(),
            appid: appid.into(),
            min_remaining_secs: 0,
        },
        KEY_ACME,
    );
    r.set_timeout(Duration::from_secs(2));
    r
}

/// One read of the load.
#[derive(Debug, Clone)]
struct Sample {
    replica: usize,
    /// "component" or "authorizer".
    kind: &'static str,
    /// When it completed, since the wipe.
    at: Duration,
    /// How long it took.
    took: Duration,
    ok: bool,
    error: String,
    /// The token served (empty on failure).
    token: String,
}

/// Readers on every replica, each reading the component token and AUTH1's token every 20 ms.
struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(env: &Env, since: Instant) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        for replica in 0..env.replicas.len() {
            for (kind, appid) in [("component", ""), ("authorizer", AUTH1)] {
                let mut client = env.client(replica).await;
                let (samples, stop) = (Arc::clone(&samples), stop.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.is_cancelled() {
                        let started = Instant::now();
                        let result = client.get_access_token(get(appid)).await;
                        let (ok, error, token) = match result {
                            Ok(r) => (true, String::new(), r.into_inner().access_token),
                            Err(s) => (false, s.to_string(), String::new()),
                        };
                        let sample = Sample {
                            replica,
                            kind,
                            at: since.elapsed(),
                            took: started.elapsed(),
                            ok,
                            error,
                            token,
                        };
                        samples.lock().unwrap().push(sample);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }));
            }
        }
        Self {
            samples,
            stop,
            tasks,
        }
    }

    /// Every reader succeeded on each of its reads of the last second (and made some).
    fn recovered(&self, since: Instant, readers: usize) -> bool {
        let now = since.elapsed();
        let Some(window) = now.checked_sub(Duration::from_secs(1)) else {
            return false;
        };
        let samples = self.samples.lock().unwrap();
        let recent: Vec<&Sample> = samples.iter().filter(|s| s.at >= window).collect();
        let mut readers_seen = std::collections::HashSet::new();
        for s in &recent {
            readers_seen.insert((s.replica, s.kind));
        }
        readers_seen.len() == readers && recent.iter().all(|s| s.ok)
    }

    async fn stop(self) -> Vec<Sample> {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        Arc::try_unwrap(self.samples)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_else(|a| a.lock().unwrap().clone())
    }
}

/// What a run measured.
struct Figures {
    reads: usize,
    failed_component: usize,
    failed_authorizer: usize,
    /// The first success after the last failed read, since the wipe (zero when none failed).
    recovered_component: Duration,
    recovered_authorizer: Duration,
    /// The slowest read after the wipe (reads wait for the write-back rather than fail).
    slowest: Duration,
    ticket_pushes: usize,
    lists: usize,
    component_fetches: usize,
    authorizer_fetches: usize,
}

// The figures are what docs/token-control.md quotes: printed (shown with `--no-capture`).
#[allow(clippy::print_stderr)]
fn figures(env: &Env, samples: &[Sample]) -> Figures {
    let failed = |kind: &'static str| samples.iter().filter(move |s| s.kind == kind && !s.ok);
    // Served again: the first success after the last failure (zero when none failed).
    let last = |kind: &'static str| {
        let Some(failure) = failed(kind).map(|s| s.at).max() else {
            return Duration::ZERO;
        };
        samples
            .iter()
            .filter(|s| s.kind == kind && s.ok && s.at > failure)
            .map(|s| s.at)
            .min()
            .unwrap_or(Duration::MAX)
    };
    let f = Figures {
        reads: samples.len(),
        failed_component: failed("component").count(),
        failed_authorizer: failed("authorizer").count(),
        recovered_component: last("component"),
        recovered_authorizer: last("authorizer"),
        slowest: samples.iter().map(|s| s.took).max().unwrap_or_default(),
        ticket_pushes: env.calls(START_PUSH, Some(ACME_APPID)),
        lists: env.calls(LIST, Some(ACME_APPID)),
        component_fetches: env.calls(COMPONENT_TOKEN, Some(ACME_APPID)),
        // The sim records an authorizer refresh under the authorizer's appid.
        authorizer_fetches: env.calls(AUTHORIZER_TOKEN, Some(AUTH1)),
    };
    let errors: std::collections::BTreeSet<&str> = samples
        .iter()
        .filter(|s| !s.ok)
        .map(|s| s.error.as_str())
        .collect();
    eprintln!("recovery figures: {}\nerrors seen: {errors:#?}", f.line());
    f
}

impl Figures {
    /// One line for the log and the docs.
    fn line(&self) -> String {
        format!(
            "{} reads, failed: {} component / {} authorizer; served again after {:?} / {:?}; slowest read {:?}; upstream: {} ticket push(es), {} list(s), {} component and {} authorizer token fetch(es)",
            self.reads,
            self.failed_component,
            self.failed_authorizer,
            self.recovered_component,
            self.recovered_authorizer,
            self.slowest,
            self.ticket_pushes,
            self.lists,
            self.component_fetches,
            self.authorizer_fetches
        )
    }
}

/// Reads AUTH1 and the component token on every replica; returns the two values.
async fn warm(env: &Env) -> (String, String) {
    let mut values = std::collections::HashSet::new();
    for i in 0..env.replicas.len() {
        let mut c = env.client(i).await;
        let component = c.get_access_token(get("")).await.unwrap().into_inner();
        let auth = c.get_access_token(get(AUTH1)).await.unwrap().into_inner();
        values.insert((component.access_token, auth.access_token));
    }
    assert_eq!(values.len(), 1, "every replica serves the same tokens");
    values.into_iter().next().unwrap()
}

/// Waits until the load recovered (at most 30 s), then stops it. With `gateway`, plays the
/// gateway for ticket pushes meanwhile: once token-control asked WeChat for a push, the sim's
/// new ticket is published to the token-control queue.
async fn until_recovered(
    env: &Env,
    load: Load,
    since: Instant,
    gateway: Option<&wxhub_bus::Bus>,
) -> Vec<Sample> {
    let readers = env.replicas.len() * 2;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut forwarded = 0;
    // At least 3 s of load after the wipe, so a late relapse would be seen.
    while since.elapsed() < Duration::from_secs(3) || !load.recovered(since, readers) {
        assert!(
            Instant::now() < deadline,
            "reads did not recover within 30 s of the wipe"
        );
        if let Some(bus) = gateway
            && env.calls(START_PUSH, Some(ACME_APPID)) > forwarded
        {
            forwarded += 1;
            let ticket = env.latest_ticket(ACME_APPID);
            let clock = env.sim.clock();
            let xml = ticket_xml(ACME_APPID, &ticket, clock.now_secs());
            let id = format!("ticket-{forwarded}");
            publish_notice(
                bus,
                clock.now_ms(),
                ACME,
                ACME_APPID,
                "component_verify_ticket",
                &xml,
                &id,
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    load.stop().await
}

async fn wipe_with_running_replicas(label: &'static str, replicas: usize) {
    let env = Env::start(Setup::new(label, replicas)).await;
    let (component, auth1) = warm(&env).await;
    // AUTH2's token is held too, then the account de-authorizes while the store is empty (its
    // notice lost): the write-back must not bring it back.
    let mut c = env.client(0).await;
    c.get_access_token(get(AUTH2)).await.unwrap();
    let fence_before: u64 = {
        let mut conn = env.store.conn();
        redis::cmd("GET")
            .arg(env.store.keys(ACME).fence())
            .query_async(&mut conn)
            .await
            .unwrap()
    };
    env.sim.clear_calls();
    let since = Instant::now();
    let load = Load::start(&env, since).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.wipe_redis().await;
    env.sim.revoke(ACME_APPID, AUTH2).await.unwrap();
    let wiped = since.elapsed();
    let samples = until_recovered(&env, load, since, None).await;
    let samples: Vec<Sample> = samples
        .into_iter()
        .filter(|s| s.at >= wiped)
        .map(|s| Sample {
            at: s.at - wiped,
            ..s
        })
        .collect();
    let f = figures(&env, &samples);
    assert!(f.reads > 0 && f.failed_component + f.failed_authorizer < f.reads);
    assert!(
        f.recovered_component <= Duration::from_secs(5)
            && f.recovered_authorizer <= Duration::from_secs(5),
        "reads recovered within 5 s: {}",
        f.line()
    );
    assert_eq!(f.ticket_pushes, 0, "no ticket push: a replica had one");
    assert_eq!(f.lists, 1, "one re-list across {replicas} replica(s)");
    assert_eq!(
        (f.component_fetches, f.authorizer_fetches),
        (0, 0),
        "the tokens were written back, not fetched again"
    );
    let after = warm(&env).await;
    assert_eq!(
        after,
        (component, auth1.clone()),
        "the same tokens are served"
    );

    // Fencing survived the loss: a refresh after the write-back is stored (its fence is newer
    // than the restored token's), replacing the invalidated token.
    let fresh = c
        .invalidate_access_token(req(
            InvalidateAccessTokenRequest {
                tenant: ACME.into(),
                appid: AUTH1.into(),
                rejected_token: auth1.clone(),
            },
            KEY_ACME,
        ))
        .await
        .expect("a refresh after the write-back is stored")
        .into_inner();
    assert_ne!(fresh.access_token, auth1);
    let stored = env
        .creds
        .token(ACME, &format!("authorizer:{AUTH1}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.value.expose(), fresh.access_token);
    assert!(
        stored.fence > fence_before,
        "{} > {fence_before}",
        stored.fence
    );

    // The account revoked meanwhile was not brought back by any replica's write-back.
    assert!(env.auths.get(ACME, AUTH2).await.unwrap().is_none());
    assert!(
        env.creds
            .token(ACME, &format!("authorizer:{AUTH2}"))
            .await
            .unwrap()
            .is_none()
    );
    let err = c.get_access_token(get(AUTH2)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_emptied_redis_heals_from_the_one_running_replica() {
    wipe_with_running_replicas("tc-wipe1", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_emptied_redis_heals_from_three_running_replicas() {
    wipe_with_running_replicas("tc-wipe3", 3).await;
}

async fn wipe_and_restart_every_replica(label: &'static str, replicas: usize) {
    let mut env = Env::start(Setup::new(label, replicas)).await;
    let (component, auth1) = warm(&env).await;
    let bus = env.bus().await;
    for r in env.replicas.drain(..) {
        r.stop();
    }
    env.sim.clear_calls();
    env.wipe_redis().await;
    let since = Instant::now();
    for _ in 0..replicas {
        env.add_replica().await;
    }
    let load = Load::start(&env, since).await;
    let samples = until_recovered(&env, load, since, Some(&bus)).await;
    let f = figures(&env, &samples);
    // No replica held anything: whatever was served was fetched after the pushed ticket (reads
    // either waited for it or failed, depending on timing; never an old token).
    assert!(f.reads > 0);
    let stale = samples
        .iter()
        .filter(|s| s.ok && (s.token == component || s.token == auth1))
        .count();
    assert_eq!(stale, 0, "a token from before the wipe was served");
    assert_eq!(
        f.ticket_pushes, 1,
        "nobody held a ticket: exactly one push, across {replicas} replica(s)"
    );
    assert_eq!(f.lists, 1, "one re-list");
    assert!(
        f.recovered_component <= Duration::from_secs(10)
            && f.recovered_authorizer <= Duration::from_secs(10),
        "reads recovered within 10 s: {}",
        f.line()
    );
    let after = warm(&env).await;
    assert_ne!(
        after.0, component,
        "a new component token, from the pushed ticket"
    );
    assert_ne!(
        after.1, auth1,
        "a new authorizer token, from the listed refresh token"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_emptied_redis_and_a_restarted_replica_need_one_ticket_push() {
    wipe_and_restart_every_replica("tc-wipe-restart1", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_emptied_redis_and_three_restarted_replicas_need_one_ticket_push() {
    wipe_and_restart_every_replica("tc-wipe-restart3", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_authorizer_is_relisted_before_not_found_at_most_once_per_interval() {
    let env = Env::start(Setup::new("tc-unknown", 1)).await;
    let mut c = env.client(0).await;
    c.get_access_token(get(AUTH2)).await.unwrap();
    // The store lost this one account (its record, index entry and token), not its epoch.
    let mut conn = env.store.conn();
    let keys = env.store.keys(ACME);
    let _: i64 = redis::cmd("DEL")
        .arg(keys.authorizer(AUTH2))
        .arg(keys.token(&format!("authorizer:{AUTH2}")))
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("ZREM")
        .arg(keys.authorizers())
        .arg(AUTH2)
        .query_async(&mut conn)
        .await
        .unwrap();
    env.sim.clear_calls();
    let token = c
        .get_access_token(get(AUTH2))
        .await
        .expect("re-listed, then served")
        .into_inner();
    assert!(!token.access_token.is_empty());
    assert_eq!(env.calls(LIST, Some(ACME_APPID)), 1);
    assert!(env.auths.get(ACME, AUTH2).await.unwrap().is_some());
    // An appid WeChat does not list either: NotFound, without another re-list this interval.
    for _ in 0..5 {
        let err = c
            .get_access_token(get("wxa1000000000000077"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err}");
    }
    assert_eq!(env.calls(LIST, Some(ACME_APPID)), 1, "rate-limited");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_token_that_came_with_an_authorization_code_is_written_back_after_a_loss() {
    let env = Env::start(Setup::new("tc-wipe-exchanged", 1)).await;
    let mut c = env.client(0).await;
    let fresh = env.sim.authorize(ACME_APPID, FRESH, false).await.unwrap();
    c.exchange_auth_code(req(
        wxhub_proto::token::v1::ExchangeAuthCodeRequest {
            tenant: ACME.into(),
            auth_code: fresh.authorized.auth_code.clone(),
            ..Default::default()
        },
        KEY_ACME,
    ))
    .await
    .unwrap();
    // The token stored by the exchange itself: nothing has read it since.
    let exchanged = env
        .creds
        .token(ACME, &format!("authorizer:{FRESH}"))
        .await
        .unwrap()
        .expect("the exchange stored the token that came with the code");
    env.sim.clear_calls();
    env.wipe_redis().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let served = loop {
        match c.get_access_token(get(FRESH)).await {
            Ok(r) => break r.into_inner().access_token,
            Err(e) => assert!(Instant::now() < deadline, "never served again: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (served.as_str(), env.calls(AUTHORIZER_TOKEN, Some(FRESH))),
        (exchanged.value.expose(), 0),
        "the exchanged token was written back, not fetched again"
    );
    env.shutdown().await;
}
