//! The test harness: a simulator (WeChat), a unique namespace on the real Redis and RabbitMQ,
//! and token-control replicas, each on its own runtime (so one can be killed outright).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use wxhub_bus::{Bus, Outgoing};
use wxhub_proto::events::v1::CallbackEvent;
use wxhub_proto::token::v1::token_control_client::TokenControlClient;
use wxhub_runtime::config::Source;
use wxhub_runtime::{Listeners, Service, Tenants, TenantsHandle, tenants::api_key_sha256};
use wxhub_sim::{
    AccountSeed, AgentSeed, AuthorizationSeed, ComponentSeed, CorpSeed, Seed, SimConfig, SimHandle,
};
use wxhub_store::{Authorizers, Credentials, Store};
use wxhub_testkit::Namespace;
use wxhub_token_control::{Config, Engine, FnClock, Options, TokenControl};

pub const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
pub const ACME: &str = "acme";
pub const ACME_APPID: &str = "wxc0000000000000a1";
pub const ACME_SECRET: &str = "acme-component-secret";
pub const BETA: &str = "beta";
pub const BETA_APPID: &str = "wxc0000000000000b2";
pub const OA: &str = "oa";
pub const OA_APPID: &str = "wx0a00000000000001";
pub const CORP: &str = "corp";
pub const CORP_ID: &str = "ww0c00000000000001";
/// Authorizers of acme, seeded as authorized in the sim.
pub const AUTH1: &str = "wxa1000000000000001";
pub const AUTH2: &str = "wxa1000000000000002";
/// An account that exists in the sim but has not authorized anyone yet.
pub const FRESH: &str = "wxa1000000000000009";
/// beta's authorizer.
pub const BETA_AUTH: &str = "wxb1000000000000001";

pub const KEY_ACME: &str = "key-acme";
pub const KEY_BETA: &str = "key-beta";
pub const KEY_OPS: &str = "key-ops";
pub const KEY_DIRECT: &str = "key-direct";

pub fn tenants_toml(acme_secret: &str) -> String {
    format!(
        r#"
[[tenants]]
id = "{ACME}"
kind = "component"
app_id = "{ACME_APPID}"
app_secret = "{acme_secret}"
token = "acme-token"
encoding_aes_key = "{AES_KEY}"

[[tenants]]
id = "{BETA}"
kind = "component"
app_id = "{BETA_APPID}"
app_secret = "beta-secret"
token = "beta-token"
encoding_aes_key = "{AES_KEY}"

[[tenants]]
id = "{OA}"
kind = "official_account"
app_id = "{OA_APPID}"
app_secret = "oa-secret"
token = "oa-token"
encoding_aes_key = "{AES_KEY}"

[[tenants]]
id = "{CORP}"
kind = "wecom"
app_id = "{CORP_ID}"
app_secret = "corp-secret"
token = "corp-token"
encoding_aes_key = "{AES_KEY}"
agent_id = "1000002"

[[clients]]
name = "acme-app"
api_key_sha256 = "{}"
tenants = ["{ACME}"]

[[clients]]
name = "beta-app"
api_key_sha256 = "{}"
tenants = ["{BETA}"]

[[clients]]
name = "ops"
api_key_sha256 = "{}"
tenants = ["*"]

[[clients]]
name = "direct-app"
api_key_sha256 = "{}"
tenants = ["{OA}", "{CORP}"]
"#,
        api_key_sha256(KEY_ACME),
        api_key_sha256(KEY_BETA),
        api_key_sha256(KEY_OPS),
        api_key_sha256(KEY_DIRECT),
    )
}

fn account(appid: &str, name: &str, secret: Option<&str>) -> AccountSeed {
    AccountSeed {
        appid: appid.into(),
        user_name: format!("gh_{}", &appid[appid.len() - 6..]),
        nick_name: Some(name.into()),
        secret: secret.map(Into::into),
        ..Default::default()
    }
}

pub fn seed(acme_event_url: Option<String>) -> Seed {
    let component = |appid: &str, secret: &str| ComponentSeed {
        appid: appid.into(),
        secret: secret.into(),
        token: if appid == ACME_APPID {
            "acme-token".into()
        } else {
            "beta-token".into()
        },
        aes_key: AES_KEY.into(),
        auth_event_url: (appid == ACME_APPID)
            .then(|| acme_event_url.clone())
            .flatten(),
        message_url_template: None,
        encryption: Default::default(),
        auto_ticket_push: false,
    };
    let auth = |component: &str, appid: &str| AuthorizationSeed {
        component_appid: component.into(),
        authorizer_appid: appid.into(),
        refresh_token: None,
        func_info: None,
    };
    Seed {
        components: vec![
            component(ACME_APPID, ACME_SECRET),
            component(BETA_APPID, "beta-secret"),
        ],
        accounts: vec![
            account(AUTH1, "Acme 咖啡", None),
            account(AUTH2, "Acme Tea", None),
            account(FRESH, "Fresh Bakery", None),
            account(BETA_AUTH, "Beta Shop", None),
            account(OA_APPID, "Direct OA", Some("oa-secret")),
        ],
        authorizations: vec![
            auth(ACME_APPID, AUTH1),
            auth(ACME_APPID, AUTH2),
            auth(BETA_APPID, BETA_AUTH),
        ],
        wecom: vec![CorpSeed {
            corpid: CORP_ID.into(),
            agents: vec![AgentSeed {
                agentid: 1_000_002,
                secret: "corp-secret".into(),
                token: None,
                aes_key: None,
                callback_url: None,
            }],
        }],
        quotas: Default::default(),
    }
}

/// How to build an environment.
pub struct Setup {
    pub label: &'static str,
    pub replicas: usize,
    pub sim: SimConfig,
    /// `WXHUB_*` overrides for the replicas.
    pub env: Vec<(String, String)>,
    /// Store a ticket for acme and beta before the replicas start.
    pub tickets: bool,
    /// Wait for the start-up reconcile to import the seeded authorizers.
    pub wait_reconcile: bool,
    pub tenants: String,
    /// The authorization-event URL of acme in the sim (a gateway), if any.
    pub acme_event_url: Option<String>,
    /// Token lifetimes set in the sim before the replicas start: (issuing path, owner, secs).
    pub token_ttls: Vec<(&'static str, &'static str, u64)>,
}

impl Setup {
    pub fn new(label: &'static str, replicas: usize) -> Self {
        Self {
            label,
            replicas,
            sim: SimConfig {
                auto_ticket_push: false,
                ..SimConfig::default()
            },
            env: Vec::new(),
            tickets: true,
            wait_reconcile: true,
            tenants: tenants_toml(ACME_SECRET),
            acme_event_url: None,
            token_ttls: Vec::new(),
        }
    }

    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

pub struct Replica {
    pub addr: SocketAddr,
    pub ops: SocketAddr,
    pub engine: Arc<Engine>,
    stop: CancellationToken,
    kill: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Replica {
    /// Stops gracefully and waits.
    pub fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Kills it outright: every task of the replica is dropped where it stands (no lease
    /// release, no drain), like `kill -9`.
    pub fn kill(mut self) {
        self.kill.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill.cancel();
        // Joined, so a failed test's cleanup runs after the replica stopped writing.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub struct Env {
    pub sim: SimHandle,
    pub replicas: Vec<Replica>,
    pub store: Store,
    pub creds: Credentials,
    pub auths: Authorizers,
    pub tenants: TenantsHandle,
    pub cancel: CancellationToken,
    pub bus: Option<Bus>,
    setup_env: Vec<(String, String)>,
    /// Last: dropped (and, after a failed test, cleaned up) after the replicas, which stop
    /// (joined) first.
    pub ns: Namespace,
}

impl Env {
    pub async fn start(setup: Setup) -> Self {
        wxhub_runtime::telemetry::init_for_tests();
        let ns = Namespace::new(setup.label);
        let mut sim_config = setup.sim;
        sim_config.seed = Some(seed(setup.acme_event_url.clone()));
        let sim = wxhub_sim::start(sim_config).await.expect("sim starts");
        for (path, owner, secs) in &setup.token_ttls {
            sim.set_token_ttl(path, Some(owner), Some(Duration::from_secs(*secs)))
                .expect("token lifetime");
        }
        let tenants = TenantsHandle::fixed(Tenants::from_toml(&setup.tenants).expect("tenants"));
        let store = ns.store();
        let creds = Credentials::new(store.clone());
        let mut env = Self {
            ns,
            sim,
            replicas: Vec::new(),
            auths: Authorizers::new(store.clone()),
            store,
            creds,
            tenants,
            cancel: CancellationToken::new(),
            bus: None,
            setup_env: setup.env,
        };
        if setup.tickets {
            env.give_ticket(ACME_APPID, ACME).await;
            env.give_ticket(BETA_APPID, BETA).await;
        }
        for _ in 0..setup.replicas {
            env.add_replica().await;
        }
        if setup.wait_reconcile {
            env.wait_for(|| async {
                env.auths.count(ACME).await.unwrap_or(0) >= 2
                    && env.auths.count(BETA).await.unwrap_or(0) >= 1
            })
            .await;
        }
        env
    }

    pub fn config(&self) -> Config {
        let sim = self.sim.base_url();
        let mut vars: Vec<(String, String)> = [
            ("WXHUB_NAMESPACE", self.ns.name().to_owned()),
            ("WXHUB_WECHAT__API_BASE", sim.clone()),
            ("WXHUB_WECHAT__QYAPI_BASE", sim.clone()),
            ("WXHUB_WECHAT__MP_BASE", sim.clone()),
            ("WXHUB_WECHAT__TIMEOUT_MS", "4000".into()),
            ("WXHUB_REDIS__URL", wxhub_testkit::redis_url()),
            ("WXHUB_AMQP__URL", wxhub_testkit::amqp_url()),
            ("WXHUB_AMQP__DELIVERY_LIMIT", "5".into()),
            ("WXHUB_TOKEN_CONTROL__POLL_INTERVAL_MS", "50".into()),
            ("WXHUB_TOKEN_CONTROL__CACHE_TTL_MS", "0".into()),
            ("WXHUB_TOKEN_CONTROL__LOCK_TTL_MS", "3000".into()),
            (
                "WXHUB_TOKEN_CONTROL__TICKET_CHECK_INTERVAL_MS",
                "3600000".into(),
            ),
            (
                "WXHUB_TOKEN_CONTROL__RECONCILE_INTERVAL_MS",
                "3600000".into(),
            ),
            ("WXHUB_SHUTDOWN__GRACE_MS", "3000".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        // Every node, when the suite runs against a RabbitMQ cluster; cluster mode against a
        // Redis Cluster.
        vars.extend(wxhub_testkit::amqp_env().into_iter().skip(1));
        vars.extend(wxhub_testkit::redis_env().into_iter().skip(1));
        vars.extend(self.setup_env.iter().cloned());
        Config::load(&Source {
            file: None,
            env: vars,
        })
        .expect("test config")
    }

    /// Starts one more replica (on its own runtime and thread).
    pub async fn add_replica(&mut self) -> usize {
        let config = self.config();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ops = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        ops.set_nonblocking(true).unwrap();
        let (addr, ops_addr) = (listener.local_addr().unwrap(), ops.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (stop, kill) = (CancellationToken::new(), CancellationToken::new());
        let clock = self.sim.clock();
        let tenants = self.tenants.clone();
        let (s, k) = (stop.clone(), kill.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let options = Options {
                    clock: FnClock::new(move || clock.now_ms()),
                    tenants: Some(tenants),
                    ..Options::default()
                };
                let replica = TokenControl::build(config, options)
                    .await
                    .unwrap_or_else(|e| panic!("replica failed to build: {e:#}"));
                let _ = tx.send(Arc::clone(replica.engine()));
                let listeners = Listeners::main_and_ops(
                    tokio::net::TcpListener::from_std(listener).unwrap(),
                    tokio::net::TcpListener::from_std(ops).unwrap(),
                );
                tokio::select! {
                    r = replica.serve(listeners, s.cancelled_owned()) => {
                        if let Err(e) = r { panic!("replica failed: {e:#}"); }
                    }
                    () = k.cancelled() => {}
                }
            });
            rt.shutdown_background();
        });
        let engine = rx.await.expect("replica built its engine");
        self.replicas.push(Replica {
            addr,
            ops: ops_addr,
            engine,
            stop,
            kill,
            thread: Some(thread),
        });
        self.replicas.len() - 1
    }

    /// A gRPC client of replica `i`.
    pub async fn client(&self, i: usize) -> TokenControlClient<Channel> {
        let url = format!("http://{}", self.replicas[i].addr);
        for _ in 0..100 {
            if let Ok(c) = TokenControlClient::connect(url.clone()).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("replica {i} does not accept connections");
    }

    /// The sim's latest ticket of `component`.
    pub fn latest_ticket(&self, component: &str) -> String {
        self.sim
            .component(component)
            .and_then(|c| c.latest_ticket)
            .expect("the sim made a ticket")
    }

    /// Creates a ticket in the sim (as a push would) and returns it.
    pub async fn new_ticket(&self, component: &str) -> String {
        let _ = self.sim.push_ticket(component).await;
        self.latest_ticket(component)
    }

    /// Publishes `ticket` as a component_verify_ticket notice of `tenant` (ACME's component)
    /// with `create_time`, and waits until it is stored.
    pub async fn deliver_ticket(&mut self, ticket: &str, create_time: i64, message_id: &str) {
        let xml = ticket_xml(ACME_APPID, ticket, create_time);
        self.publish_notice(
            ACME,
            ACME_APPID,
            "component_verify_ticket",
            &xml,
            message_id,
        )
        .await;
        self.wait_for(|| async {
            self.creds
                .ticket(ACME)
                .await
                .unwrap()
                .is_some_and(|t| t.value.expose() == ticket)
        })
        .await;
    }

    /// Authorizes `appid` to `component` in the sim and publishes the notice WeChat would send
    /// (`authorized`, or `updateauthorized` for an account already authorized) to `tenant`,
    /// dated `create_time`.
    pub async fn authorize_by_notice(
        &mut self,
        (tenant, component): (&str, &str),
        appid: &str,
        create_time: i64,
        message_id: &str,
    ) -> wxhub_sim::AuthorizeOutcome {
        let outcome = self.sim.authorize(component, appid, false).await.unwrap();
        let info_type = outcome.authorized.info_type.clone();
        let xml = authorization_xml(
            &info_type,
            component,
            appid,
            &outcome.authorized.auth_code,
            create_time,
        );
        self.publish_notice(tenant, component, &info_type, &xml, message_id)
            .await;
        outcome
    }

    /// Waits until ACME's record of `appid` exists and satisfies `check`.
    pub async fn wait_authorizer(
        &self,
        appid: &str,
        check: impl Fn(&wxhub_store::AuthorizerRecord) -> bool,
    ) {
        self.wait_for(|| async {
            self.auths
                .get(ACME, appid)
                .await
                .unwrap()
                .is_some_and(|r| check(&r))
        })
        .await;
    }

    /// Creates a ticket in the sim and stores it as if its push had arrived.
    pub async fn give_ticket(&self, component: &str, tenant: &str) -> String {
        let ticket = self.new_ticket(component).await;
        let clock = self.sim.clock();
        self.creds
            .store_ticket(tenant, &ticket, clock.now_secs(), clock.now_ms())
            .await
            .unwrap();
        ticket
    }

    /// Connects the test's own bus (to publish events like the gateway does).
    pub async fn bus(&mut self) -> Bus {
        if self.bus.is_none() {
            self.bus = Some(self.ns.bus(&self.cancel).await);
        }
        self.bus.clone().unwrap()
    }

    /// Takes the namespace's dead letters (acking them); waits up to `wait` for the first.
    pub async fn dead_letters(&mut self, wait: Duration) -> Vec<lapin::message::BasicGetMessage> {
        let bus = self.bus().await;
        let dead = bus.topology().dead_queue();
        self.ns.drain_queue(&bus, &dead, wait).await
    }

    /// Publishes a component notice to the events exchange, as the gateway would.
    pub async fn publish_notice(
        &mut self,
        tenant: &str,
        component: &str,
        info_type: &str,
        xml: &str,
        message_id: &str,
    ) {
        let bus = self.bus().await;
        let now_ms = self.sim.clock().now_ms();
        publish_notice(&bus, now_ms, tenant, component, info_type, xml, message_id).await;
    }

    /// Deletes every key of the namespace, as a Redis restarted without persistence would.
    /// (Running replicas may write some back at once: that is what they are for.)
    pub async fn wipe_redis(&self) {
        self.ns.cleanup(None, &[]).await;
    }

    /// The sum of the samples of `metric` (a name with an optional `{labels}` prefix) in the
    /// replicas' `/metrics` (one recorder per test process).
    pub async fn metric(&self, metric: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.replicas[0].ops))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(metric))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Polls `check` until it holds (at most 30 s).
    pub async fn wait_for<F, Fut>(&self, check: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        for _ in 0..600 {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("condition not reached within 30 s");
    }

    /// Whether the refresh lease of acme's `credential` is held.
    pub async fn lease_held(&self, credential: &str) -> bool {
        let mut conn = self.store.conn();
        redis::cmd("EXISTS")
            .arg(self.store.keys(ACME).lock(credential))
            .query_async::<i64>(&mut conn)
            .await
            .unwrap_or(0)
            == 1
    }

    /// The Prometheus text of replica `i`.
    pub async fn metrics(&self, i: usize) -> String {
        reqwest::get(format!("http://{}/metrics", self.replicas[i].ops))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Number of sim calls of `path` (optionally for one appid).
    pub fn calls(&self, path: &str, appid: Option<&str>) -> usize {
        self.sim
            .calls(&wxhub_sim::CallFilter {
                path: Some(path.into()),
                appid: appid.map(Into::into),
                errcode: None,
            })
            .len()
    }

    /// Removes every authorizer schedule entry but `keep`'s (so counting calls of
    /// api_authorizer_token, which the sim records under the component appid, counts `keep`).
    pub async fn unschedule_others(&self, keep: &str) {
        let mut conn = self.store.conn();
        for tenant in [ACME, BETA] {
            let key = self.store.keys(tenant).schedule();
            let members: Vec<String> = redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .unwrap();
            for m in members {
                if m.starts_with("authorizer:") && m != format!("authorizer:{keep}") {
                    let _: i64 = redis::cmd("ZREM")
                        .arg(&key)
                        .arg(&m)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                }
            }
        }
    }

    /// Every key of the namespace with its type-independent dump, for "no state change".
    pub async fn snapshot(&self) -> Vec<(String, Vec<u8>)> {
        let mut conn = self.store.conn();
        let mut keys = self
            .store
            .scan_keys(&format!("{}:*", self.ns.name()))
            .await
            .unwrap();
        keys.sort();
        let mut out = Vec::new();
        for k in keys {
            let dump: Option<Vec<u8>> = redis::cmd("DUMP")
                .arg(&k)
                .query_async(&mut conn)
                .await
                .unwrap();
            out.push((k, dump.unwrap_or_default()));
        }
        out
    }

    /// [`Env::snapshot`] without the keys that only record coordination: guards, the fence
    /// counter and the store epoch. A read of an unknown authorizer re-lists (rate-limited)
    /// before it answers NotFound, which takes a guard and a fence but changes no credential.
    pub async fn durable_snapshot(&self) -> Vec<(String, Vec<u8>)> {
        self.snapshot()
            .await
            .into_iter()
            .filter(|(k, _)| {
                !k.contains(":guard:") && !k.ends_with(":fence") && !k.ends_with(":epoch")
            })
            .collect()
    }

    /// Asserts that the namespace still holds exactly `before` (a [`Env::durable_snapshot`]),
    /// naming the keys that differ.
    pub async fn assert_unchanged(&self, before: &[(String, Vec<u8>)], what: &str) {
        let after = self.durable_snapshot().await;
        let differ: Vec<&String> = after
            .iter()
            .filter(|kv| !before.contains(kv))
            .map(|(k, _)| k)
            .chain(
                before
                    .iter()
                    .filter(|kv| !after.contains(kv))
                    .map(|(k, _)| k),
            )
            .collect();
        assert!(differ.is_empty(), "{what}: changed keys {differ:?}");
    }

    pub async fn shutdown(mut self) {
        for r in self.replicas.drain(..) {
            r.stop();
        }
        let bus = self.bus.take();
        self.ns.cleanup(bus.as_ref(), &[]).await;
        if bus.is_none() {
            // The replicas declared the topology: delete it with a fresh connection.
            let cancel = CancellationToken::new();
            let bus = self.ns.bus(&cancel).await;
            self.ns.cleanup(Some(&bus), &[]).await;
        }
        self.cancel.cancel();
        self.sim.shutdown().await;
    }
}

/// Publishes a component notice to the events exchange on `bus`, as the gateway would.
pub async fn publish_notice(
    bus: &Bus,
    received_at_ms: i64,
    tenant: &str,
    component: &str,
    info_type: &str,
    xml: &str,
    message_id: &str,
) {
    let event = CallbackEvent {
        tenant: tenant.into(),
        tenant_kind: "component".into(),
        appid: component.into(),
        kind: info_type.into(),
        xml: xml.into(),
        dedupe_key: message_id.into(),
        received_at_ms,
        encrypt_mode: "safe".into(),
        info_type: info_type.into(),
        ..Default::default()
    };
    let body = prost::Message::encode_to_vec(&event);
    let exchange = bus.topology().events_exchange();
    let key = wxhub_bus::Topology::component_key(tenant, info_type);
    bus.publish(&Outgoing {
        exchange: &exchange,
        routing_key: &key,
        body: &body,
        message_id,
        message_type: "wxhub.events.v1.CallbackEvent",
        headers: &[],
    })
    .await
    .expect("published");
}

/// The XML of a component_verify_ticket notice.
pub fn ticket_xml(component: &str, ticket: &str, create_time: i64) -> String {
    format!(
        "<xml><AppId><![CDATA[{component}]]></AppId><CreateTime>{create_time}</CreateTime><InfoType><![CDATA[component_verify_ticket]]></InfoType><ComponentVerifyTicket><![CDATA[{ticket}]]></ComponentVerifyTicket></xml>"
    )
}

/// The XML of an `unauthorized` notice.
pub fn unauthorized_xml(component: &str, authorizer: &str, create_time: i64) -> String {
    format!(
        "<xml><AppId><![CDATA[{component}]]></AppId><CreateTime>{create_time}</CreateTime><InfoType><![CDATA[unauthorized]]></InfoType><AuthorizerAppid><![CDATA[{authorizer}]]></AuthorizerAppid></xml>"
    )
}

/// A request carrying `authorization: Bearer <key>`.
pub fn req<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if !key.is_empty() {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    r
}

/// The XML of an authorization notice.
pub fn authorization_xml(
    info_type: &str,
    component: &str,
    authorizer: &str,
    code: &str,
    create_time: i64,
) -> String {
    format!(
        "<xml><AppId><![CDATA[{component}]]></AppId><CreateTime>{create_time}</CreateTime><InfoType><![CDATA[{info_type}]]></InfoType><AuthorizerAppid><![CDATA[{authorizer}]]></AuthorizerAppid><AuthorizationCode><![CDATA[{code}]]></AuthorizationCode><AuthorizationCodeExpiredTime>{}</AuthorizationCodeExpiredTime><PreAuthCode><![CDATA[]]></PreAuthCode></xml>",
        create_time + 600
    )
}
