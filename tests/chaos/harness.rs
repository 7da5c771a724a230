//! Process control shared by the scenarios: the workspace's service binaries started as child
//! processes (killed, paused, restarted by the test), the WeChat simulator seeded with the
//! world of `wxhub_tests`, and the settings every service of one scenario shares.
//!
//! Every child is stopped when its [`Service`] is dropped (SIGCONT, SIGTERM, then SIGKILL after
//! 10 s), so a failed assertion leaves no process behind; [`World`] owns the namespace, whose
//! queues and keys are deleted when it is dropped after the services.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wxhub_sim::{SimConfig, SimHandle};
use wxhub_store::{Authorizers, Credentials, RedisConfig, Store};
use wxhub_testkit::Namespace;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The binary `name` next to this test's own (cargo builds the workspace's binaries there).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built (make chaos builds it; or cargo build --bins)",
        path.display()
    );
    path
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    l.local_addr().expect("addr").port()
}

/// `host:port` of a `scheme://[user@]host:port/…` URL.
pub fn address(url: &str) -> std::net::SocketAddr {
    let rest = url.split("://").nth(1).expect("scheme");
    let authority = rest.split('/').next().expect("authority");
    authority
        .rsplit('@')
        .next()
        .expect("host")
        .replace("localhost", "127.0.0.1")
        .parse()
        .expect("host:port")
}

/// The first broker node of the suite that accepts connections (a broker-node scenario may
/// have left one down), for a proxy in front of it.
pub fn broker_address() -> std::net::SocketAddr {
    let mut urls = wxhub_testkit::cluster_urls();
    urls.push(wxhub_testkit::amqp_url());
    urls.iter()
        .map(|u| address(u))
        .find(|a| std::net::TcpStream::connect_timeout(a, Duration::from_secs(1)).is_ok())
        .expect("a broker node accepts connections")
}

/// `WXHUB_CHAOS_FULL=1` (`make chaos`): longer load.
pub fn full() -> bool {
    std::env::var("WXHUB_CHAOS_FULL").is_ok_and(|v| v == "1")
}

/// Sends `signal` (`KILL`, `STOP`, `CONT`, `TERM`) to process `pid`.
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status();
}

/// One service binary run as a child process, with the environment it was started with (so
/// that [`Service::restart`] starts the same service again, on the same ports).
pub struct Service {
    pub name: &'static str,
    /// The network namespace it runs in (`ip netns exec`), if not the test's.
    netns: Option<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// The `/readyz` it answers once started.
    ready_url: String,
}

impl Service {
    /// Starts `binary` (e.g. `wxhub-worker`) with exactly `env` (plus `PATH`); returns once
    /// `ready_url` answers 200 (at most 60 s).
    pub async fn start(name: &'static str, env: Vec<(String, String)>, ready_url: String) -> Self {
        Self::start_in(None, name, env, ready_url).await
    }

    /// [`Service::start`] inside the network namespace `netns` (`ip netns exec`, which execs
    /// the binary: the child is the service itself).
    pub async fn start_in(
        netns: Option<&str>,
        name: &'static str,
        env: Vec<(String, String)>,
        ready_url: String,
    ) -> Self {
        let mut service = Self {
            name,
            netns: netns.map(str::to_owned),
            env,
            child: None,
            ready_url,
        };
        service.spawn();
        service.wait_ready().await;
        service
    }

    fn spawn(&mut self) {
        let mut cmd = match &self.netns {
            Some(netns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", netns]).arg(binary(self.name));
                cmd
            }
            None => Command::new(binary(self.name)),
        };
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "error")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("{}: {e}", self.name)));
    }

    /// Polls `/readyz` until 200; the time it took.
    pub async fn wait_ready(&self) -> Duration {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if http
                .get(&self.ready_url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{} did not become ready at {}", self.name, self.ready_url);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process holds its sockets and leases but runs nothing.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }

    /// Starts the same service again (after [`Service::kill`]); the time until it was ready.
    pub async fn restart(&mut self) -> Duration {
        self.kill();
        self.spawn();
        self.wait_ready().await
    }

    /// Its `/metrics` (Prometheus text) from `ops` (`http://127.0.0.1:PORT`).
    pub async fn metric(ops: &str, name: &str) -> f64 {
        let text = reqwest::get(format!("{ops}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), "CONT");
        signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The simulator as WeChat (the world of `wxhub_tests`: acme and beta with their accounts), a
/// tenants file, and a namespace on the test Redis and broker.
pub struct World {
    /// Shared with the scenario's own tasks (a reader checking served tokens).
    pub sim: Arc<SimHandle>,
    pub auths: Authorizers,
    pub creds: Credentials,
    tenants: PathBuf,
    _dir: tempfile::TempDir,
    /// Last: its drop (after a failed test) deletes the queues and keys.
    pub ns: Namespace,
}

impl World {
    /// The sim with `config` (its seed is the world's) and a namespace labelled `label`, on
    /// the test Redis.
    pub async fn start(label: &str, config: SimConfig) -> Self {
        Self::start_on(label, config, wxhub_testkit::redis_config()).await
    }

    /// [`World::start`] with the test's own view of the store on `redis`.
    pub async fn start_on(label: &str, config: SimConfig, redis: RedisConfig) -> Self {
        wxhub_runtime::telemetry::init_for_tests();
        let ns = Namespace::new(label);
        let dir = tempfile::tempdir().expect("tempdir");
        let tenants = dir.path().join("tenants.toml");
        std::fs::write(&tenants, wxhub_tests::tenants_file()).expect("tenants file");
        let sim = wxhub_sim::start(SimConfig {
            seed: Some(wxhub_tests::seed()),
            auto_ticket_push: false,
            ..config
        })
        .await
        .expect("sim");
        let sim = Arc::new(sim);
        let store = Store::connect(&redis, ns.name()).expect("redis config");
        Self {
            sim,
            auths: Authorizers::new(store.clone()),
            creds: Credentials::new(store),
            tenants,
            _dir: dir,
            ns,
        }
    }

    /// The settings every service of the world shares: namespace, Redis, broker, WeChat (the
    /// sim), tenants; then `extra` (which win).
    pub fn env(&self, extra: &[(&str, String)]) -> Vec<(String, String)> {
        self.env_with_redis(wxhub_testkit::redis_env(), extra)
    }

    /// [`World::env`] on another Redis (`redis` are its `WXHUB_REDIS__*` settings).
    pub fn env_with_redis(
        &self,
        redis: Vec<(String, String)>,
        extra: &[(&str, String)],
    ) -> Vec<(String, String)> {
        let sim = self.sim.base_url();
        let mut env: Vec<(String, String)> = [
            ("WXHUB_NAMESPACE", self.ns.name().to_owned()),
            ("WXHUB_AMQP__DELIVERY_LIMIT", "5".to_owned()),
            ("WXHUB_WECHAT__API_BASE", sim.clone()),
            ("WXHUB_WECHAT__QYAPI_BASE", sim.clone()),
            ("WXHUB_WECHAT__MP_BASE", sim),
            ("WXHUB_TENANTS__FILE", self.tenants.display().to_string()),
            ("WXHUB_SHUTDOWN__GRACE_MS", "3000".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(redis);
        env.extend(wxhub_testkit::amqp_env());
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        env
    }

    /// Creates a ticket in the sim for acme's component and stores it as if its push had
    /// arrived (before token-control starts, so that its start-up reconcile can run).
    pub async fn give_ticket(&self) {
        let _ = self.sim.push_ticket(wxhub_tests::COMPONENT).await;
        let ticket = self
            .sim
            .component(wxhub_tests::COMPONENT)
            .and_then(|c| c.latest_ticket)
            .expect("the sim made a ticket");
        let clock = self.sim.clock();
        self.creds
            .store_ticket(
                wxhub_tests::TENANT,
                &ticket,
                clock.now_secs(),
                clock.now_ms(),
            )
            .await
            .expect("ticket stored");
    }

    /// A token-control replica (`WXHUB_TOKEN_CONTROL__*` in `extra`); its gRPC and ops URLs.
    pub async fn token_control(
        &self,
        redis: Vec<(String, String)>,
        extra: &[(&str, String)],
    ) -> (Service, String, String) {
        let (port, ops) = (free_port(), free_port());
        let mut settings = vec![
            ("WXHUB_TOKEN_CONTROL__LISTEN", format!("127.0.0.1:{port}")),
            (
                "WXHUB_TOKEN_CONTROL__OPS_LISTEN",
                format!("127.0.0.1:{ops}"),
            ),
        ];
        settings.extend(extra.iter().cloned());
        let ops_url = format!("http://127.0.0.1:{ops}");
        let service = Service::start(
            "wxhub-token-control",
            self.env_with_redis(redis, &settings),
            format!("{ops_url}/readyz"),
        )
        .await;
        (service, format!("http://127.0.0.1:{port}"), ops_url)
    }

    /// Waits (at most 30 s) until token-control's start-up reconcile imported acme's two
    /// seeded authorizers.
    pub async fn wait_for_authorizers(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.auths.count(wxhub_tests::TENANT).await.unwrap_or(0) < 2 {
            assert!(
                Instant::now() < deadline,
                "token-control imported no authorizers"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the sim and deletes the namespace's queues (plus `extra`) and keys.
    pub async fn stop(self, extra_queues: &[String]) {
        let Self { sim, ns, .. } = self;
        ns.cleanup(None, extra_queues).await;
        if let Ok(sim) = Arc::try_unwrap(sim) {
            sim.shutdown().await;
        }
    }
}

/// A `redis-server` of the test's own on a free port, without persistence (never the
/// machine's 6379): restarted, it comes back empty. Killed when dropped.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        let mut server = Self {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its `WXHUB_REDIS__*` settings.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("WXHUB_REDIS__URL".to_owned(), self.url())]
    }

    /// SIGKILL, then the same port again, empty.
    pub fn restart_empty(&mut self) {
        self.kill();
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The chaos tenant of the gateway scenarios: one component tenant whose callbacks the load
/// generator signs and encrypts (the gateway alone: callbacks need no token-control).
/// How long after `since` the service at `url` answers `/readyz` again (at most 30 s, or the
/// test fails naming `what` healed).
pub async fn ready_again(url: &str, since: Instant, what: &str) -> Duration {
    let http = reqwest::Client::new();
    loop {
        if http
            .get(format!("{url}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "{url} is not ready 30 s after {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub mod callbacks {
    use std::collections::HashMap;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;
    use wxhub_bus::AmqpConfig;
    use wxhub_loadgen::{LoadConfig, LoadReport};
    use wxhub_testkit::Namespace;

    use super::{Service, free_port};

    pub const TENANT: &str = "chaos";
    const COMPONENT: &str = "wx0chaos0component";
    const AUTHORIZER: &str = "wx0chaos0account";
    const TOKEN: &str = "chaos-message-token";
    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    /// The `wxhub-gateway` binary for the chaos tenant on a free port, on the test Redis; its
    /// URL.
    pub async fn gateway(ns: &Namespace, dir: &std::path::Path) -> (Service, String) {
        gateway_on(ns, dir, wxhub_testkit::redis_env()).await
    }

    /// [`gateway`] on the Redis of `redis` (its `WXHUB_REDIS__*` settings).
    pub async fn gateway_on(
        ns: &Namespace,
        dir: &std::path::Path,
        redis: Vec<(String, String)>,
    ) -> (Service, String) {
        gateway_with(ns, dir, redis, wxhub_testkit::amqp_env()).await
    }

    /// [`gateway`] on the Redis of `redis` and the broker of `amqp` (`WXHUB_AMQP__*`).
    pub async fn gateway_with(
        ns: &Namespace,
        dir: &std::path::Path,
        redis: Vec<(String, String)>,
        amqp: Vec<(String, String)>,
    ) -> (Service, String) {
        gateway_in(None, "127.0.0.1", ns, dir, redis, amqp).await
    }

    /// [`gateway_with`] in the network namespace `netns`, listening on `host`.
    pub async fn gateway_in(
        netns: Option<&str>,
        host: &str,
        ns: &Namespace,
        dir: &std::path::Path,
        redis: Vec<(String, String)>,
        amqp: Vec<(String, String)>,
    ) -> (Service, String) {
        let tenants = dir.join("chaos-tenants.toml");
        std::fs::write(
            &tenants,
            format!(
                "[[tenants]]\nid = \"{TENANT}\"\nkind = \"component\"\napp_id = \"{COMPONENT}\"\napp_secret = \"chaos-secret\"\ntoken = \"{TOKEN}\"\nencoding_aes_key = \"{KEY}\"\n"
            ),
        )
        .expect("tenants file");
        let url = format!("http://{host}:{}", free_port());
        let mut env: Vec<(String, String)> = [
            ("WXHUB_NAMESPACE", ns.name().to_owned()),
            ("WXHUB_TENANTS__FILE", tenants.display().to_string()),
            (
                "WXHUB_GATEWAY__LISTEN",
                url.trim_start_matches("http://").to_owned(),
            ),
            ("WXHUB_AMQP__HEARTBEAT_SECS", "5".to_owned()),
            // The queues' arguments as the test's own connection declares them (testkit's
            // topology).
            ("WXHUB_AMQP__DELIVERY_LIMIT", "5".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(redis);
        env.extend(amqp);
        // The gateway declares the queue of callbacks no route takes (all of this load's).
        ns.track_queue(ns.topology().unrouted_queue());
        let service = Service::start_in(netns, "wxhub-gateway", env, format!("{url}/readyz")).await;
        (service, url)
    }

    /// Signed, encrypted callbacks to `url` at `rate` per second for `secs` over 32
    /// connections, on a thread of its own (the test's runtime stays free to inject faults).
    /// A load running on a thread of its own; [`Load::report`] waits for its end.
    pub struct Load(std::thread::JoinHandle<LoadReport>);

    impl Load {
        /// Waits (without blocking the test's runtime) for the load to end; its report.
        pub async fn report(self) -> LoadReport {
            tokio::task::spawn_blocking(move || self.0.join().expect("load"))
                .await
                .expect("join")
        }
    }

    pub fn load(url: &str, secs: u64, rate: f64) -> Load {
        let mut cfg = LoadConfig::new(url, TENANT, AUTHORIZER, TOKEN, KEY, COMPONENT);
        cfg.to_user_name = "gh_chaos".into();
        cfg.concurrency = 32;
        cfg.duration = Duration::from_secs(secs);
        cfg.rate = Some(rate);
        cfg.timeout = Duration::from_secs(10);
        Load(std::thread::spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("load runtime")
                .block_on(wxhub_loadgen::run(cfg))
                .expect("load run")
        }))
    }

    /// Every callback the broker holds in the namespace's unrouted queue, read through
    /// `config`'s nodes: messages in total and copies by `message_id`.
    pub async fn in_broker(ns: &Namespace, config: AmqpConfig) -> (usize, HashMap<String, u32>) {
        let unrouted = ns.topology().unrouted_queue();
        let cancel = CancellationToken::new();
        let bus = ns.bus_with(config, &cancel).await;
        let messages = tokio::time::timeout(
            Duration::from_secs(120),
            ns.drain_queue(&bus, &unrouted, Duration::from_secs(30)),
        )
        .await
        .expect("the broker answers within 2 minutes");
        let mut ids: HashMap<String, u32> = HashMap::new();
        for m in &messages {
            let id = m
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .expect("every message has a message_id");
            *ids.entry(id).or_default() += 1;
        }
        ns.cleanup(Some(&bus), &[]).await;
        (messages.len(), ids)
    }

    /// Asserts the gateway's promise: every callback answered 200 is in the broker, and no
    /// more distinct callbacks than were sent.
    pub fn assert_acknowledged_stored(report: &LoadReport, ids: &HashMap<String, u32>) {
        let ok = report.status.get("200").copied().unwrap_or(0);
        assert!(ok > 0, "nothing was accepted: {report}");
        assert!(
            ids.len() as u64 >= ok,
            "{ok} callbacks answered 200 but only {} distinct ones are in RabbitMQ: acknowledged callbacks were lost",
            ids.len()
        );
        assert!(
            ids.len() as u64 <= report.sent,
            "more distinct callbacks than were sent"
        );
    }
}
