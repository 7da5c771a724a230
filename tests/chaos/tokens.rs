//! Token reads during a fault, shared by the scenarios that hurt token-control or its Redis:
//! readers asking replicas for acme's tokens until stopped (counting what failed, when, and the
//! slowest read), and the check that every stored credential is WeChat's latest afterwards (no
//! stale overwrite) and every refresh token WeChat's current one (none lost).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use wxhub_proto::token::v1::GetAccessTokenRequest;
use wxhub_proto::token::v1::token_control_client::TokenControlClient;
use wxhub_tests::{AUTH1, AUTH2, COMPONENT, OPS_KEY, TENANT, req};

use crate::harness::World;

/// acme's component token ("") and two authorizers'.
pub const CREDENTIALS: [&str; 3] = ["", AUTH1, AUTH2];

/// One `GetAccessToken` of acme's `appid` ("" = the component token) from the replica at `url`,
/// with `timeout` as its gRPC deadline; a read that still has no answer after twice that (a
/// connection stuck in a fault) counts as failed too.
pub async fn read(url: &str, appid: &str, timeout: Duration) -> Result<String, String> {
    let once = async {
        let mut client = TokenControlClient::connect(url.to_owned())
            .await
            .map_err(|e| e.to_string())?;
        let mut request = req(
            GetAccessTokenRequest {
                tenant: TENANT.into(),
                appid: appid.into(),
                min_remaining_secs: 0,
            },
            OPS_KEY,
        );
        request.set_timeout(timeout);
        client
            .get_access_token(request)
            .await
            .map(|r| r.into_inner().access_token)
            .map_err(|e| format!("{:?} {}", e.code(), e.message()))
    };
    tokio::time::timeout(timeout * 2, once)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", timeout * 2)))
}

/// What readers saw.
#[derive(Default, Debug)]
pub struct Reads {
    pub ok: u64,
    pub failed: u64,
    pub first_failure: Option<String>,
    /// When the last failed read ended.
    pub last_failure: Option<Instant>,
    pub slowest: Duration,
}

impl Reads {
    fn add(&mut self, other: Reads) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.slowest = self.slowest.max(other.slowest);
        self.last_failure = self.last_failure.max(other.last_failure);
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
    }
}

/// One reader per replica URL, each reading every credential, then sleeping `pause`.
pub struct Readers {
    reading: Arc<AtomicBool>,
    tasks: JoinSet<Reads>,
}

impl Readers {
    pub fn start(urls: &[String], pause: Duration, timeout: Duration) -> Self {
        let reading = Arc::new(AtomicBool::new(true));
        let mut tasks = JoinSet::new();
        for url in urls {
            let (url, reading) = (url.clone(), reading.clone());
            tasks.spawn(async move {
                let mut reads = Reads::default();
                while reading.load(Ordering::SeqCst) {
                    for appid in CREDENTIALS {
                        let started = Instant::now();
                        match read(&url, appid, timeout).await {
                            Ok(_) => reads.ok += 1,
                            Err(e) => {
                                reads.failed += 1;
                                reads.last_failure = Some(Instant::now());
                                reads.first_failure.get_or_insert(e);
                            }
                        }
                        reads.slowest = reads.slowest.max(started.elapsed());
                    }
                    tokio::time::sleep(pause).await;
                }
                reads
            });
        }
        Self { reading, tasks }
    }

    /// Stops every reader; what they saw together.
    pub async fn stop(mut self) -> Reads {
        self.reading.store(false, Ordering::SeqCst);
        let mut all = Reads::default();
        while let Some(r) = self.tasks.join_next().await {
            all.add(r.expect("reader"));
        }
        all
    }
}

/// What is stored wrong now (empty: every token is WeChat's latest and, with `refresh_tokens`,
/// every refresh token WeChat's current one).
pub async fn not_wechats(world: &World, refresh_tokens: bool) -> Vec<String> {
    let mut wrong = Vec::new();
    for appid in CREDENTIALS {
        let (credential, latest) = if appid.is_empty() {
            (
                "component".to_owned(),
                world.sim.component(COMPONENT).and_then(|c| c.access_token),
            )
        } else {
            (
                format!("authorizer:{appid}"),
                world
                    .sim
                    .authorizer(COMPONENT, appid)
                    .and_then(|a| a.access_token),
            )
        };
        let stored = world.creds.token(TENANT, &credential).await.ok().flatten();
        if stored.map(|t| t.value.expose().to_owned()) != latest {
            wrong.push(format!("{credential} token"));
        }
        if refresh_tokens && !appid.is_empty() {
            let record = world.auths.get(TENANT, appid).await.ok().flatten();
            let current = world
                .sim
                .authorizer(COMPONENT, appid)
                .map(|a| a.refresh_token);
            if record
                .and_then(|r| r.refresh_token)
                .map(|r| r.expose().to_owned())
                != current
            {
                wrong.push(format!("{appid} refresh token"));
            }
        }
    }
    wrong
}
