//! The job store against the real Redis, each test in its own namespace (deleted on drop).

use std::time::Duration;

use futures::StreamExt as _;

use wxhub_store::jobs::{new_id, tenant_of};
use wxhub_store::{
    AttemptRecord, Claim, Created, JobState, Jobs, NewJob, Rate, RedisConfig, SendGate, Settle,
    Settled, Store,
};

fn redis_url() -> String {
    std::env::var("WXHUB_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

struct Ns(Store);

impl Ns {
    fn new(test: &str) -> Self {
        let ns = format!("t-{test}-{:08x}", rand::random::<u32>());
        Self(Store::connect(&RedisConfig::new(redis_url()), &ns).unwrap())
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let Ok(mut conn) = redis::Client::open(redis_url()).and_then(|c| c.get_connection()) else {
            return;
        };
        let pattern = format!("{}:*", self.0.namespace());
        let keys: Vec<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(10_000)
            .clone()
            .iter(&mut conn)
            .map(|it| it.filter_map(Result::ok).collect())
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query(&mut conn);
        }
    }
}

const T: &str = "acme";

fn jobs(ns: &Ns) -> Jobs {
    Jobs::new(
        ns.0.clone(),
        Duration::from_secs(3600),
        Duration::from_secs(86_400),
    )
}

fn new_job(id: &str, key: Option<&str>) -> NewJob {
    NewJob {
        id: id.to_owned(),
        appid: "wx1".into(),
        kind: "template".into(),
        api: "/cgi-bin/message/template/send".into(),
        touser: "o_user_1".into(),
        body: "{}".into(),
        idempotency_key: key.map(str::to_owned),
        campaign: None,
        now_ms: 1000,
    }
}

fn sent(msgid: i64) -> Settle {
    Settle {
        state: JobState::Sent,
        errcode: 0,
        reason: String::new(),
        msgid,
        next_at_ms: 0,
        attempt: Some(AttemptRecord {
            at_ms: 2000,
            errcode: 0,
            errmsg: "ok".into(),
        }),
        count_attempt: true,
        now_ms: 2000,
        campaign: String::new(),
    }
}

#[tokio::test]
async fn a_job_moves_through_its_states_and_is_never_claimed_after_sent() {
    let ns = Ns::new("jobs-states");
    let jobs = jobs(&ns);
    let id = new_id(T, 1000);
    assert_eq!(tenant_of(&id), Some(T));
    assert_eq!(
        jobs.create(T, &new_job(&id, None)).await.unwrap(),
        Created::New
    );
    let job = jobs.get(T, &id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(
        jobs.claim(T, &id, "", "w1", 1500, 60_000).await.unwrap(),
        Claim::Claimed { attempts_made: 0 }
    );
    // A second claim while the lease lives: busy.
    assert_eq!(
        jobs.claim(T, &id, "", "w2", 1600, 60_000).await.unwrap(),
        Claim::Busy
    );
    // Another owner cannot settle it.
    assert_eq!(
        jobs.settle(T, &id, "wx1", "w2", &sent(7)).await.unwrap(),
        Settled::Lost
    );
    assert_eq!(
        jobs.settle(T, &id, "wx1", "w1", &sent(7)).await.unwrap(),
        Settled::Ok
    );
    let job = jobs.get(T, &id).await.unwrap().unwrap();
    assert_eq!(
        (job.state, job.msgid, job.attempts_made, job.attempts.len()),
        (JobState::Sent, 7, 1, 1)
    );
    // Redelivered: never claimed again.
    assert_eq!(
        jobs.claim(T, &id, "", "w3", 99_999_999, 99_999_999)
            .await
            .unwrap(),
        Claim::Done(JobState::Sent)
    );
    assert_eq!(
        jobs.by_msgid(T, "wx1", 7).await.unwrap().as_deref(),
        Some(id.as_str())
    );
    assert!(jobs.delivered(T, &id, true, "success", 3000).await.unwrap());
    assert!(!jobs.delivered(T, &id, false, "x", 3001).await.unwrap());
    let listed = jobs.list(T, Some(JobState::Delivered), 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].delivery, "success");
    assert!(
        jobs.list(T, Some(JobState::Sent), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(jobs.list(T, None, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_expired_lease_is_stale_and_dead_jobs_replay() {
    let ns = Ns::new("jobs-stale");
    let jobs = jobs(&ns);
    let id = new_id(T, 1000);
    jobs.create(T, &new_job(&id, None)).await.unwrap();
    jobs.claim(T, &id, "", "w1", 1000, 2000).await.unwrap();
    // w1 "crashed": after its lease, the next claimer learns the send's outcome is unknown.
    assert_eq!(
        jobs.claim(T, &id, "", "w2", 2500, 9000).await.unwrap(),
        Claim::Stale { attempts_made: 0 }
    );
    let dead = Settle {
        state: JobState::Dead,
        errcode: -1,
        reason: "too many attempts".into(),
        attempt: None,
        msgid: 0,
        ..sent(0)
    };
    assert_eq!(
        jobs.settle(T, &id, "wx1", "w2", &dead).await.unwrap(),
        Settled::Ok
    );
    assert_eq!(
        jobs.list(T, Some(JobState::Dead), 10).await.unwrap().len(),
        1
    );
    assert_eq!(jobs.replay(T, &id, 3000).await.unwrap(), None);
    let job = jobs.get(T, &id).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts_made), (JobState::Queued, 0));
    // Queued stays queued (announced again).
    assert_eq!(jobs.replay(T, &id, 3000).await.unwrap(), None);
    jobs.claim(T, &id, "", "w3", 3000, 9000).await.unwrap();
    assert_eq!(
        jobs.replay(T, &id, 3000).await.unwrap(),
        Some(Some(JobState::Sending))
    );
    assert_eq!(jobs.replay(T, "acme.00", 3000).await.unwrap(), Some(None));
}

#[tokio::test]
async fn passing_states_are_listed_from_the_newest_jobs_and_attempts_accumulate_in_the_record() {
    let ns = Ns::new("jobs-passing");
    let jobs = jobs(&ns);
    let ids: Vec<String> = (0..3).map(|i| format!("{T}.{:020x}", i + 1)).collect();
    for id in &ids {
        jobs.create(T, &new_job(id, None)).await.unwrap();
    }
    jobs.claim(T, &ids[2], "", "w1", 1500, 60_000)
        .await
        .unwrap();
    let listed = |state, limit| {
        let jobs = jobs.clone();
        async move {
            jobs.list(T, Some(state), limit)
                .await
                .unwrap()
                .into_iter()
                .map(|j| j.id)
                .collect::<Vec<_>>()
        }
    };
    // Newest first, each in its state, though neither state has a list of its own.
    assert_eq!(
        listed(JobState::Queued, 10).await,
        [ids[1].clone(), ids[0].clone()]
    );
    assert_eq!(listed(JobState::Queued, 1).await, [ids[1].clone()]);
    assert_eq!(listed(JobState::Sending, 10).await, [ids[2].clone()]);
    let keys = ns.0.keys(T);
    let mut conn = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for state in ["queued", "sending"] {
        let exists: bool = redis::cmd("EXISTS")
            .arg(keys.jobs(state))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!exists, "{state} has a list");
    }

    // A retry and then a send: both attempts, in order, in the record.
    let retry = Settle {
        state: JobState::Retrying,
        errcode: -1,
        reason: "system busy".into(),
        attempt: Some(AttemptRecord {
            at_ms: 1600,
            errcode: -1,
            errmsg: "system busy".into(),
        }),
        next_at_ms: 1700,
        msgid: 0,
        ..sent(0)
    };
    assert_eq!(
        jobs.settle(T, &ids[2], "wx1", "w1", &retry).await.unwrap(),
        Settled::Ok
    );
    assert_eq!(listed(JobState::Retrying, 10).await, [ids[2].clone()]);
    jobs.claim(T, &ids[2], "", "w2", 1700, 60_000)
        .await
        .unwrap();
    assert!(listed(JobState::Retrying, 10).await.is_empty());
    jobs.settle(T, &ids[2], "wx1", "w2", &sent(9))
        .await
        .unwrap();
    let job = jobs.get(T, &ids[2]).await.unwrap().unwrap();
    assert_eq!(
        job.attempts
            .iter()
            .map(|a| (a.errcode, a.errmsg.as_str()))
            .collect::<Vec<_>>(),
        [(-1, "system busy"), (0, "ok")]
    );
    assert_eq!(job.attempts_made, 2);
    let attempts_key: bool = redis::cmd("EXISTS")
        .arg(keys.job_attempts(&ids[2]))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!attempts_key, "attempts written to a list of their own");

    // A record from before keeps its attempts in the list: read with the record's own.
    let old = AttemptRecord {
        at_ms: 10,
        errcode: 45011,
        errmsg: "api freq out of limit".into(),
    };
    let _: () = redis::cmd("RPUSH")
        .arg(keys.job_attempts(&ids[2]))
        .arg(serde_json::to_string(&old).unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();
    let job = jobs.get(T, &ids[2]).await.unwrap().unwrap();
    assert_eq!(job.attempts.len(), 3);
    assert_eq!(job.attempts[0], old);
}

#[tokio::test]
async fn a_recent_list_is_trimmed_by_the_writes_of_one_job_in_16() {
    let ns = Ns::new("jobs-trim");
    let jobs = jobs(&ns);
    // Ids whose last hex digit counts 0..15: every 16th write trims.
    let n = wxhub_store::jobs::RECENT + 192;
    let create = |i: usize| {
        let jobs = jobs.clone();
        async move {
            jobs.create(T, &new_job(&format!("{T}.{i:020x}"), None))
                .await
                .unwrap()
        }
    };
    futures::stream::iter(0..n)
        .map(create)
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    // In order from here: write 10,192 trims to RECENT, then 7 more.
    for i in n..n + 8 {
        create(i).await;
    }
    let mut conn = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let count: usize = redis::cmd("ZCARD")
        .arg(ns.0.keys(T).jobs("all"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(count, wxhub_store::jobs::RECENT + 7);
}

#[tokio::test]
async fn an_idempotency_key_names_one_job_and_an_abandoned_job_frees_it() {
    let ns = Ns::new("jobs-idem");
    let jobs = jobs(&ns);
    let (a, b) = (new_id(T, 1), new_id(T, 2));
    let creates = futures_like(&jobs, &a, &b).await;
    let winners = creates.iter().filter(|c| matches!(c, Created::New)).count();
    assert_eq!(winners, 1, "{creates:?}");
    let winner = if creates[0] == Created::New { &a } else { &b };
    let again = jobs.create(T, &new_job(&new_id(T, 3), Some("k1"))).await;
    assert_eq!(again.unwrap(), Created::Existing(winner.clone()));
    jobs.abandon(T, winner, Some("k1")).await.unwrap();
    assert!(jobs.get(T, winner).await.unwrap().is_none());
    let c = new_id(T, 4);
    assert_eq!(
        jobs.create(T, &new_job(&c, Some("k1"))).await.unwrap(),
        Created::New
    );
}

/// Two simultaneous first creates with one key.
async fn futures_like(jobs: &Jobs, a: &str, b: &str) -> Vec<Created> {
    let (ja, jb) = (new_job(a, Some("k1")), new_job(b, Some("k1")));
    let (ra, rb) = tokio::join!(jobs.create(T, &ja), jobs.create(T, &jb));
    vec![ra.unwrap(), rb.unwrap()]
}

fn park(api: &'static str) -> SendGate<'static> {
    SendGate {
        park: Some(("wx1", api)),
        buckets: &[],
    }
}

#[tokio::test]
async fn a_send_claim_takes_its_limiter_units_with_the_lease_or_nothing() {
    let ns = Ns::new("jobs-limited");
    let jobs = jobs(&ns);
    let buckets = [
        ("send:wx1:template", Rate::per_minute(60, 2)),
        ("openid:wx1:o_user_1", Rate::per_minute(1, 1)),
    ];
    let gate = SendGate {
        park: None,
        buckets: &buckets,
    };
    let ids: Vec<String> = (0..3).map(|n| new_id(T, n)).collect();
    for id in &ids {
        jobs.create(T, &new_job(id, None)).await.unwrap();
    }
    let (claim, record) = jobs
        .claim_to_send(T, &ids[0], "", gate, "w1", 1500, 60_000)
        .await
        .unwrap();
    assert!(matches!(claim, Claim::Claimed { .. }), "{claim:?}");
    // The claim brings the stored record a send needs (no read before it).
    let record = record.expect("the claimed job's record");
    assert_eq!(
        (
            record.appid.as_str(),
            record.kind.as_str(),
            record.touser.as_str(),
            record.body.as_str(),
            record.state
        ),
        ("wx1", "template", "o_user_1", "{}", JobState::Sending)
    );
    // A busy job takes no unit: the buckets would refuse the next anyway, so check the send
    // bucket alone afterwards.
    assert_eq!(
        jobs.claim_to_send(T, &ids[0], "", gate, "w2", 1500, 60_000)
            .await
            .unwrap()
            .0,
        Claim::Busy
    );
    // The per-openid bucket (1 a minute) refuses the second job: nothing taken, still queued.
    let limited = jobs
        .claim_to_send(T, &ids[1], "", gate, "w1", 1500, 60_000)
        .await
        .unwrap()
        .0;
    assert!(
        matches!(limited, Claim::Limited(wait) if wait > Duration::from_secs(50)),
        "{limited:?}"
    );
    assert_eq!(
        jobs.get(T, &ids[1]).await.unwrap().unwrap().state,
        JobState::Queued
    );
    // The refusal took nothing from the send bucket (burst 2): one unit is left for another
    // recipient, then it refuses too.
    let send_only = [buckets[0]];
    let gate = SendGate {
        park: None,
        buckets: &send_only,
    };
    assert!(matches!(
        jobs.claim_to_send(T, &ids[1], "", gate, "w1", 1500, 60_000)
            .await
            .unwrap()
            .0,
        Claim::Claimed { .. }
    ));
    assert!(matches!(
        jobs.claim_to_send(T, &ids[2], "", gate, "w1", 1500, 60_000)
            .await
            .unwrap()
            .0,
        Claim::Limited(_)
    ));
}

#[tokio::test]
async fn a_parked_pair_reports_its_remaining_time_and_refuses_the_claim_until_it_ends() {
    let ns = Ns::new("jobs-park");
    let jobs = jobs(&ns);
    let api = "/cgi-bin/message/template/send";
    let id = new_id(T, 1);
    jobs.create(T, &new_job(&id, None)).await.unwrap();
    assert_eq!(jobs.parked(T, "wx1", api).await.unwrap(), None);
    jobs.park(T, "wx1", api, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(jobs.parked(T, "wx1", api).await.unwrap().is_some());
    assert_eq!(jobs.parked(T, "wx2", api).await.unwrap(), None);
    // Parked: the claim is refused with the time left, and the job stays queued.
    let claim = jobs
        .claim_to_send(T, &id, "", park(api), "w1", 1500, 60_000)
        .await
        .unwrap()
        .0;
    assert!(
        matches!(claim, Claim::Parked(left) if left > Duration::ZERO && left <= Duration::from_millis(300)),
        "{claim:?}"
    );
    assert_eq!(
        jobs.get(T, &id).await.unwrap().unwrap().state,
        JobState::Queued
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(jobs.parked(T, "wx1", api).await.unwrap(), None);
    assert_eq!(
        jobs.claim_to_send(T, &id, "", park(api), "w1", 1500, 60_000)
            .await
            .unwrap()
            .0,
        Claim::Claimed { attempts_made: 0 }
    );
}

#[tokio::test]
async fn a_report_that_came_before_the_record_is_taken_by_it() {
    let ns = Ns::new("jobs-held");
    let jobs = jobs(&ns);
    let id = new_id(T, 1000);
    jobs.create(T, &new_job(&id, None)).await.unwrap();
    jobs.claim(T, &id, "", "w1", 1500, 60_000).await.unwrap();
    assert_eq!(jobs.by_msgid(T, "wx1", 9).await.unwrap(), None);
    jobs.hold_report(
        T,
        "wx1",
        9,
        false,
        "failed:user block",
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(
        jobs.settle(T, &id, "wx1", "w1", &sent(9)).await.unwrap(),
        Settled::Ok
    );
    let job = jobs.get(T, &id).await.unwrap().unwrap();
    assert_eq!(
        (job.state, job.delivery.as_str()),
        (JobState::DeliveryFailed, "failed:user block")
    );
    assert_eq!(
        jobs.list(T, Some(JobState::DeliveryFailed), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

fn settle_as(state: JobState) -> Settle {
    Settle {
        state,
        msgid: 0,
        attempt: None,
        ..sent(0)
    }
}

/// The tenant window: at most W announced and not final; the excess held in order, fed as
/// the window frees, never lost by a feeder that stops before its publishes are confirmed.
#[tokio::test]
async fn a_create_over_the_held_cap_stores_nothing() {
    let ns = Ns::new("jobs-held-cap");
    let jobs = jobs(&ns).with_tenant_window(1).with_most_held(2);
    let id = |n: u32| format!("{T}.{:012x}{n:08x}", 1000);
    let expected = [
        Created::New,
        Created::Held,
        Created::Held,
        Created::OverHeld,
    ];
    for (n, want) in (0..).zip(expected) {
        assert_eq!(
            jobs.create(T, &new_job(&id(n), Some(&format!("k{n}"))))
                .await
                .unwrap(),
            want,
            "job {n}"
        );
    }
    // Neither the job nor its idempotency key: the same key stores once there is room.
    assert!(jobs.get(T, &id(3)).await.unwrap().is_none());
    assert_eq!(jobs.window_counts(T).await.unwrap().0, 2);
    let fed = jobs.take_held(T, 1000).await.unwrap();
    assert!(fed.is_empty(), "the window is full: {fed:?}");
    // Campaign jobs are outside the window and its cap.
    let campaign = NewJob {
        campaign: Some("c1".into()),
        ..new_job(&id(8), None)
    };
    assert_eq!(jobs.create(T, &campaign).await.unwrap(), Created::New);
    let once_held = jobs
        .clone()
        .with_most_held(3)
        .create(T, &new_job(&id(4), Some("k3")))
        .await
        .unwrap();
    assert_eq!(once_held, Created::Held);
}

#[tokio::test]
async fn a_tenants_window_holds_the_excess_and_feeds_it_in_order_without_losing_any() {
    let ns = Ns::new("jobs-window");
    let jobs = jobs(&ns).with_tenant_window(2);
    let id = |n: u32| format!("{T}.{:012x}{n:08x}", 1000);
    for n in 0..2 {
        assert_eq!(
            jobs.create(T, &new_job(&id(n), None)).await.unwrap(),
            Created::New
        );
    }
    for n in 2..4 {
        assert_eq!(
            jobs.create(T, &new_job(&id(n), None)).await.unwrap(),
            Created::Held
        );
        assert_eq!(
            jobs.get(T, &id(n)).await.unwrap().unwrap().state,
            JobState::Queued
        );
    }
    // Campaign jobs and other tenants are outside this tenant's window.
    let campaign = NewJob {
        campaign: Some("c1".into()),
        ..new_job(&id(9), None)
    };
    assert_eq!(jobs.create(T, &campaign).await.unwrap(), Created::New);
    let other = new_id("beta", 1000);
    assert_eq!(
        jobs.create("beta", &new_job(&other, None)).await.unwrap(),
        Created::New
    );
    assert_eq!(jobs.window_counts(T).await.unwrap(), (2, 2, 0));
    assert!(jobs.take_held(T, 1500).await.unwrap().is_empty(), "no room");

    // A final state frees a place: the oldest held job takes it.
    assert!(matches!(
        jobs.claim(T, &id(0), "", "w", 1500, 60_000).await.unwrap(),
        Claim::Claimed { .. }
    ));
    assert_eq!(
        jobs.settle(T, &id(0), "wx1", "w", &sent(5)).await.unwrap(),
        Settled::Ok
    );
    assert_eq!(jobs.take_held(T, 1600).await.unwrap(), vec![id(2)]);
    // The feeder announces it with its route, read for the batch in one round trip.
    let routes = jobs.routes(T, &[id(2), id(99)]).await.unwrap();
    let route = routes[0].as_ref().expect("a held job's route");
    assert_eq!(
        (
            route.appid.as_str(),
            route.kind.as_str(),
            route.api.as_str(),
            route.touser.as_str(),
            route.campaign.as_str()
        ),
        (
            "wx1",
            "template",
            "/cgi-bin/message/template/send",
            "o_user_1",
            ""
        )
    );
    assert_eq!(routes[1], None, "no such job");
    // The feeder stopped before confirming: the next take hands it out again, and nothing more
    // (the window is full again).
    assert_eq!(jobs.take_held(T, 1700).await.unwrap(), vec![id(2)]);
    jobs.fed(T, &[id(2)]).await.unwrap();
    assert!(jobs.take_held(T, 1800).await.unwrap().is_empty());
    assert_eq!(jobs.window_counts(T).await.unwrap(), (1, 2, 0));

    // A retrying job keeps its place; a failed one leaves it; a new job queues behind the
    // held one even when there is room.
    for (n, state) in [(1, JobState::Retrying), (2, JobState::Failed)] {
        assert!(matches!(
            jobs.claim(T, &id(n), "", "w", 1900, 60_000).await.unwrap(),
            Claim::Claimed { .. }
        ));
        assert_eq!(
            jobs.settle(T, &id(n), "wx1", "w", &settle_as(state))
                .await
                .unwrap(),
            Settled::Ok
        );
    }
    assert_eq!(jobs.window_counts(T).await.unwrap(), (1, 1, 0));
    assert_eq!(
        jobs.create(T, &new_job(&id(4), None)).await.unwrap(),
        Created::Held
    );
    assert_eq!(jobs.take_held(T, 2000).await.unwrap(), vec![id(3)]);
    jobs.fed(T, &[id(3)]).await.unwrap();
    // An abandoned job (its publish failed) leaves the window.
    jobs.abandon(T, &id(3), None).await.unwrap();
    assert_eq!(jobs.take_held(T, 2100).await.unwrap(), vec![id(4)]);
    jobs.fed(T, &[id(4)]).await.unwrap();

    // Places whose jobs outlived the job TTL (a creator that died before publishing) heal.
    assert_eq!(
        jobs.create(T, &new_job(&id(5), None)).await.unwrap(),
        Created::Held
    );
    assert_eq!(
        jobs.take_held(T, 1000 + 3_600_001).await.unwrap(),
        vec![id(5)]
    );
}

/// Enqueue's create checks the authorizer in the same script: unknown or revoked, nothing is
/// stored.
#[tokio::test]
async fn create_as_refuses_an_unknown_or_revoked_authorizer_and_stores_nothing() {
    let ns = Ns::new("jobs-account");
    let jobs = jobs(&ns).with_tenant_window(5);
    let id = new_id(T, 1000);
    assert_eq!(
        jobs.create_as(T, &new_job(&id, Some("k")), true)
            .await
            .unwrap(),
        Created::UnknownAccount
    );
    let mut conn = ns.0.conn();
    let authorizer = ns.0.keys(T).authorizer("wx1");
    for (status, answer) in [
        ("revoked", Created::RevokedAccount),
        ("authorized", Created::New),
    ] {
        let _: () = redis::cmd("HSET")
            .arg(&authorizer)
            .arg("status")
            .arg(status)
            .query_async(&mut conn)
            .await
            .unwrap();
        if answer != Created::New {
            assert_eq!(
                jobs.get(T, &id).await.unwrap(),
                None,
                "nothing stored before"
            );
        }
        assert_eq!(
            jobs.create_as(T, &new_job(&id, Some("k")), true)
                .await
                .unwrap(),
            answer
        );
    }
    // The refusals claimed neither the idempotency key nor a place in the window.
    assert_eq!(jobs.window_counts(T).await.unwrap(), (0, 1, 0));
    assert_eq!(
        jobs.get(T, &id).await.unwrap().unwrap(),
        new_job(&id, Some("k")).record(T)
    );
}

/// A cancelled campaign's jobs that were fed but not claimed are withdrawn by the claim: they
/// become `cancelled`, counted in the campaign, and are never sent.
#[tokio::test]
async fn a_cancelled_campaigns_fed_jobs_are_withdrawn_at_their_claim() {
    let ns = Ns::new("jobs-cancel");
    let jobs = jobs(&ns);
    let campaign = ns.0.keys(T).campaign("c1");
    let mut conn = ns.0.conn();
    let set_state = |state: &'static str| {
        let (campaign, mut conn) = (campaign.clone(), conn.clone());
        async move {
            let _: () = redis::cmd("HSET")
                .arg(&campaign)
                .arg("state")
                .arg(state)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    };
    let of_campaign = |id: &str| NewJob {
        campaign: Some("c1".into()),
        ..new_job(id, None)
    };
    let (a, b) = (new_id(T, 1000), new_id(T, 1001));
    for id in [&a, &b] {
        jobs.create(T, &of_campaign(id)).await.unwrap();
    }
    set_state("running").await;
    assert!(matches!(
        jobs.claim(T, &a, "c1", "w", 1500, 60_000).await.unwrap(),
        Claim::Claimed { .. }
    ));
    set_state("cancelled").await;
    assert_eq!(
        jobs.claim(T, &b, "c1", "w", 1600, 60_000).await.unwrap(),
        Claim::Done(JobState::Cancelled)
    );
    let job = jobs.get(T, &b).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    assert!(job.state.is_final());
    let cancelled: i64 = redis::cmd("HGET")
        .arg(&campaign)
        .arg("cancelled")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(cancelled, 1);
    assert_eq!(
        jobs.list(T, Some(JobState::Cancelled), 10).await.unwrap()[0].id,
        b
    );
    // Claimed before the cancel: its send goes on and is recorded.
    assert_eq!(
        jobs.settle(T, &a, "wx1", "w", &sent(9)).await.unwrap(),
        Settled::Ok
    );
}

#[tokio::test]
async fn a_campaign_slice_not_reported_fed_is_handed_out_again_when_its_lease_runs_out() {
    use wxhub_store::{CampaignRecipient, Campaigns, NewCampaign};
    let ns = Ns::new("campaign-lease");
    let campaigns = Campaigns::new(ns.0.clone(), Duration::from_secs(600));
    let now = 1_000_000;
    let id = new_id(T, now);
    let recipients: Vec<_> = (0..5)
        .map(|i| CampaignRecipient {
            touser: format!("o_user_{i}"),
            data: Default::default(),
        })
        .collect();
    campaigns
        .create(
            T,
            &NewCampaign {
                id: id.clone(),
                appid: "wx1".into(),
                kind: "template".into(),
                api: "/cgi-bin/message/template/send".into(),
                body: "{}".into(),
                recipients,
                now_ms: now,
            },
        )
        .await
        .unwrap();
    let lease = Duration::from_secs(10);
    let names = |s: &[CampaignRecipient]| s.iter().map(|r| r.touser.clone()).collect::<Vec<_>>();
    let (first, slice) = campaigns
        .take(T, &id, 2, now, lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first, names(&slice)),
        (0, vec!["o_user_0".into(), "o_user_1".into()])
    );
    // Its feeder fails (or dies) before reporting it fed: nobody takes another slice meanwhile…
    assert_eq!(
        campaigns.take(T, &id, 2, now + 9_999, lease).await.unwrap(),
        None
    );
    // …and when the lease runs out, the same slice is handed out again, not the next one.
    let (again, slice) = campaigns
        .take(T, &id, 2, now + 10_000, lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (again, names(&slice)),
        (0, vec!["o_user_0".into(), "o_user_1".into()])
    );
    campaigns.fed(T, &id, again).await.unwrap();
    let (next, slice) = campaigns
        .take(T, &id, 2, now + 10_001, lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (next, names(&slice)),
        (2, vec!["o_user_2".into(), "o_user_3".into()])
    );
    campaigns.fed(T, &id, next).await.unwrap();
    let (last, slice) = campaigns
        .take(T, &id, 2, now + 10_002, lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((last, names(&slice)), (4, vec!["o_user_4".into()]));
    // Not reported fed: the campaign is not finished until its last slice is.
    assert_eq!(
        campaigns
            .take(T, &id, 2, now + 10_003, lease)
            .await
            .unwrap(),
        None
    );
    let (last_again, _) = campaigns
        .take(T, &id, 2, now + 30_000, lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last_again, 4);
    campaigns.fed(T, &id, 4).await.unwrap();
    assert_eq!(
        campaigns
            .take(T, &id, 2, now + 30_001, lease)
            .await
            .unwrap(),
        None
    );
    let c = campaigns.get(T, &id).await.unwrap().unwrap();
    assert_eq!(c.fed, 5);
}

/// Jobs created together (more than one script call's `CREATE_AT_ONCE`) end as each would
/// alone, in order: the window fills, then holds; a repeated idempotency key finds the first
/// job and stores nothing; an account that must exist and does not refuses its job only.
#[tokio::test]
async fn jobs_created_together_end_as_each_would_alone() {
    let ns = Ns::new("jobs-create-all");
    let jobs = jobs(&ns).with_tenant_window(120);
    let ids: Vec<String> = (0..150).map(|i| format!("{T}.{i:020x}")).collect();
    let mut batch: Vec<NewJob> = ids.iter().map(|id| new_job(id, None)).collect();
    batch[0].idempotency_key = Some("k-first".into());
    batch[130].idempotency_key = Some("k-first".into());
    let created = jobs.create_all(T, &batch, false).await.unwrap();
    assert_eq!(created.len(), 150);
    assert!(
        created[..120].iter().all(|c| *c == Created::New),
        "{created:?}"
    );
    assert!(created[120..130].iter().all(|c| *c == Created::Held));
    assert_eq!(created[130], Created::Existing(ids[0].clone()));
    assert!(created[131..].iter().all(|c| *c == Created::Held));
    assert_eq!(jobs.window_counts(T).await.unwrap(), (29, 120, 0));
    assert!(jobs.get(T, &ids[130]).await.unwrap().is_none());
    assert_eq!(
        jobs.get(T, &ids[149]).await.unwrap().map(|j| j.state),
        Some(JobState::Queued)
    );

    // "wx1" has no authorizer record in this namespace.
    let lone = format!("{T}.{:020x}", 999);
    let refused = jobs
        .create_all(T, &[new_job(&lone, None)], true)
        .await
        .unwrap();
    assert_eq!(refused, vec![Created::UnknownAccount]);
    assert!(jobs.get(T, &lone).await.unwrap().is_none());
}
