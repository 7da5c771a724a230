//! The whole wxhub stack in one process, for cross-service tests: the WeChat simulator,
//! token-control, the gateway and the worker, each started through its library entry on port 0,
//! against the real Redis and RabbitMQ in a namespace of their own.
//!
//! A failed test still cleans up. The services run on a runtime of their own, on a thread that
//! [`Stack`]'s drop stops and joins before the namespace (its last field) deletes the queues and
//! keys: nothing of the stack writes to Redis or RabbitMQ after the cleanup, which is what would
//! leave keys behind. The gateways a test starts itself ([`Stack::gateway`]) run there too.

pub mod cpu;
pub mod messaging;
mod world;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;
use wxhub_bus::Bus;
use wxhub_proto::token::v1::token_control_client::TokenControlClient;
use wxhub_runtime::config::Source;
use wxhub_runtime::{Listeners, Service};
use wxhub_sim::{CallFilter, SimConfig, SimHandle};
use wxhub_store::{Authorizers, Credentials, Store};
use wxhub_testkit::Namespace;
use wxhub_token_control::TokenControl;
use wxhub_worker::Worker;

pub use world::*;

/// How a stack starts. [`Setup::new`] is the stack as WeChat sees it: the gateway is acme's
/// callback URL, and nothing happened yet (no ticket).
pub struct Setup {
    /// Names the test's namespace.
    pub label: String,
    /// Point acme's authorization-event and message URLs (in the sim) at the stack's gateway.
    pub wire_callbacks: bool,
    /// Give each component a ticket (stored as if its push had arrived) before the services
    /// start, and wait until token-control's start-up reconcile imported the seeded
    /// authorizers.
    pub tickets: bool,
    /// More `WXHUB_*` settings of the stack's worker (they win).
    pub worker_env: Vec<(String, String)>,
    /// Component tenants beyond the world's, each with one authorized account
    /// ([`extra_tenant`]; with `tickets`, their tickets too).
    pub extra_tenants: usize,
    /// Users of each extra tenant's account ([`extra_user`]).
    pub extra_users: usize,
    /// Worker threads of the services' runtime (2; benchmarks choose theirs).
    pub service_threads: usize,
    /// Pin the services' runtime threads to this CPU (each as it starts,
    /// [`cpu::pin_current_thread`]). `None` (the default): the scheduler places them. For
    /// benchmarks that keep the services off the load generator's core.
    pub services_cpu: Option<usize>,
}

impl Setup {
    pub fn new(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            wire_callbacks: true,
            tickets: false,
            worker_env: Vec::new(),
            extra_tenants: 0,
            extra_users: 0,
            service_threads: 2,
            services_cpu: None,
        }
    }
}

/// A running stack. Stop it with [`Stack::stop`] (it also deletes its broker objects and keys);
/// dropped without it (a failed test), it stops the services, then cleans up.
pub struct Stack {
    pub sim: SimHandle,
    /// The gateway started with the stack (API key [`GATEWAY_KEY`]).
    pub gateway_url: String,
    pub token_control: SocketAddr,
    /// The messaging service of the worker started with the stack.
    pub worker: SocketAddr,
    /// Stops the worker started with the stack (its SIGTERM).
    pub worker_stop: CancellationToken,
    /// A bus on the stack's namespace, for tests that publish or read queues themselves.
    pub bus: Bus,
    pub store: Store,
    pub auths: Authorizers,
    /// The gateway started with the stack.
    gateway: Option<Gateway>,
    /// Stops the test's own bus when dropped.
    bus_guard: DropGuard,
    services: Services,
    tenants_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
    /// Last: dropped (and, after a failed test, cleaned up) after the services stopped.
    pub ns: Namespace,
}

/// A gateway in front of the stack's token-control; stopped on drop (or by
/// [`Gateway::stop`], which waits).
pub struct Gateway {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    stop: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Gateway {
    /// Stops serving and waits (bounded) for the drain.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A relay in front of the stack's token-control; stopped on drop.
pub struct RelayHandle {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// Its state (held bytes).
    pub shared: std::sync::Arc<wxhub_relay::Shared>,
    /// Stops it on drop (the same stop-and-wait as a gateway's).
    _gateway: Gateway,
}

/// The services' runtime, on a thread of its own: cancelling `stop` ends every service
/// (bounded by 10 s), then the runtime; dropping it waits for that.
struct Services {
    runtime: tokio::runtime::Handle,
    tasks: TaskTracker,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Services {
    /// `cpu`: pin every thread of the runtime (and the one that waits for the stop) to it.
    fn start(threads: usize, cpu: Option<usize>) -> anyhow::Result<Self> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder
            .worker_threads(threads.max(1))
            .thread_name("stack-services")
            .enable_all();
        let pin = move || {
            if let Some(cpu) = cpu {
                cpu::pin_current_thread(cpu)
                    .unwrap_or_else(|e| panic!("pin a services thread to CPU {cpu}: {e}"));
            }
        };
        builder.on_thread_start(pin);
        let runtime = builder.build()?;
        let (handle, tasks, stop) = (
            runtime.handle().clone(),
            TaskTracker::new(),
            CancellationToken::new(),
        );
        let thread = std::thread::spawn({
            let (tasks, stop) = (tasks.clone(), stop.clone());
            move || {
                pin();
                runtime.block_on(async {
                    stop.cancelled().await;
                    tasks.close();
                    let _ = tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await;
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            }
        });
        Ok(Self {
            runtime: handle,
            tasks,
            stop,
            thread: Some(thread),
        })
    }

    /// Runs `serve` (given the std listener made a tokio one, and the shutdown future) on the
    /// services' runtime; `stop` ends it (a child of the services' own token).
    fn spawn<F, Fut>(
        &self,
        listener: std::net::TcpListener,
        stop: &CancellationToken,
        serve: F,
    ) -> JoinHandle<anyhow::Result<()>>
    where
        F: FnOnce(tokio::net::TcpListener, tokio_util::sync::WaitForCancellationFutureOwned) -> Fut
            + Send
            + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let stop = stop.clone();
        self.tasks.spawn_on(
            async move {
                listener.set_nonblocking(true)?;
                let listener = tokio::net::TcpListener::from_std(listener)?;
                serve(listener, stop.cancelled_owned()).await
            },
            &self.runtime,
        )
    }

    /// Stops every service and waits, without blocking the caller's runtime.
    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop.cancel();
        // Joined, so that the namespace is cleaned up only after the services stopped writing.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn bind() -> anyhow::Result<(std::net::TcpListener, SocketAddr)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

impl Stack {
    /// Starts every service ([`Setup::new`]); returns once the gateway answers `/readyz`.
    pub async fn start(label: &str) -> anyhow::Result<Self> {
        Self::start_with(Setup::new(label)).await
    }

    /// Starts every service as `setup` says; returns once the gateway answers `/readyz`.
    pub async fn start_with(setup: Setup) -> anyhow::Result<Self> {
        let ns = Namespace::new(&setup.label);
        let dir = tempfile::tempdir()?;
        let tenants_path = dir.path().join("tenants.toml");
        std::fs::write(&tenants_path, tenants_file_with(setup.extra_tenants))?;
        let sim = wxhub_sim::start(SimConfig {
            seed: Some(seed_with(setup.extra_tenants, setup.extra_users)),
            auto_ticket_push: false,
            // Template and subscribe sends are reported back, as WeChat does (messaging).
            delivery_report_delay: Some(Duration::from_millis(100)),
            failed_delivery_openids: vec![user(BLOCKED_USER)],
            ..SimConfig::default()
        })
        .await?;
        let store = ns.store();
        let (token_listener, token_control) = bind()?;
        let cancel = CancellationToken::new();
        let mut stack = Self {
            services: Services::start(setup.service_threads, setup.services_cpu)?,
            gateway: None,
            gateway_url: String::new(),
            token_control,
            worker: token_control,
            worker_stop: CancellationToken::new(),
            bus: ns.bus(&cancel).await,
            bus_guard: cancel.drop_guard(),
            auths: Authorizers::new(store.clone()),
            store,
            tenants_path,
            _dir: dir,
            sim,
            ns,
        };

        if setup.tickets {
            // Before token-control starts, so that its start-up reconcile can run.
            stack.give_ticket(COMPONENT, TENANT).await?;
            stack.give_ticket(BETA_COMPONENT, BETA).await?;
            for i in 0..setup.extra_tenants {
                let (id, component, _) = extra_tenant(i);
                stack.give_ticket(&component, &id).await?;
            }
        }
        let tc_config = wxhub_token_control::Config::load(
            &stack.source(&[("WXHUB_TOKEN_CONTROL__OPS_LISTEN", "127.0.0.1:0".to_owned())]),
        )?;
        let stop = stack.services.stop.clone();
        let (tc_ops, _) = bind()?;
        stack.services.spawn(
            token_listener,
            &stop,
            move |listener, shutdown| async move {
                tc_ops.set_nonblocking(true)?;
                let ops = tokio::net::TcpListener::from_std(tc_ops)?;
                TokenControl::build(tc_config, Default::default())
                    .await?
                    .serve(Listeners::main_and_ops(listener, ops), shutdown)
                    .await
            },
        );
        let worker_env: Vec<(&str, &str)> = setup
            .worker_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        (stack.worker, stack.worker_stop) = stack.start_worker(&worker_env)?;
        if setup.tickets {
            let auths = &stack.auths;
            stack
                .wait_for(|| async {
                    auths.count(TENANT).await.unwrap_or(0) >= 2
                        && auths.count(BETA).await.unwrap_or(0) >= 1
                })
                .await;
            for i in 0..setup.extra_tenants {
                let id = extra_tenant(i).0;
                stack
                    .wait_for(|| async { auths.count(&id).await.unwrap_or(0) >= 1 })
                    .await;
            }
        }

        let gateway = stack.gateway(GATEWAY_KEY, &[]).await?;
        stack.gateway_url = gateway.url.clone();
        stack.gateway = Some(gateway);
        if setup.wire_callbacks {
            let url = &stack.gateway_url;
            stack.sim.set_component_urls(
                COMPONENT,
                Some(format!("{url}/wx/{TENANT}/component")),
                Some(format!("{url}/wx/{TENANT}/callback/$APPID$")),
            )?;
        }
        Ok(stack)
    }

    /// The settings every service of the stack shares, plus `extra` (which win).
    fn source(&self, extra: &[(&str, String)]) -> Source {
        let sim = self.sim.base_url();
        let mut env: Vec<(String, String)> = [
            ("WXHUB_NAMESPACE", self.ns.name().to_owned()),
            ("WXHUB_REDIS__URL", wxhub_testkit::redis_url()),
            ("WXHUB_AMQP__URL", wxhub_testkit::amqp_url()),
            // Same limit as the testkit's topology, so both declarations agree.
            ("WXHUB_AMQP__DELIVERY_LIMIT", "5".to_owned()),
            ("WXHUB_WECHAT__API_BASE", sim.clone()),
            ("WXHUB_WECHAT__QYAPI_BASE", sim.clone()),
            ("WXHUB_WECHAT__MP_BASE", sim),
            (
                "WXHUB_TENANTS__FILE",
                self.tenants_path.display().to_string(),
            ),
            (
                "WXHUB_TOKEN_CONTROL__ENDPOINT",
                format!("http://{}", self.token_control),
            ),
            ("WXHUB_SHUTDOWN__GRACE_MS", "3000".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        // Every node, when the suite runs against a RabbitMQ cluster; cluster mode against a
        // Redis Cluster.
        env.extend(wxhub_testkit::amqp_env().into_iter().skip(1));
        env.extend(wxhub_testkit::redis_env().into_iter().skip(1));
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        Source { file: None, env }
    }

    /// Starts a gateway calling token-control with `api_key`, its own address as
    /// `gateway.public_base_url`; `extra` are more `WXHUB_*` settings (they win). Returns once
    /// it answers `/readyz`.
    pub async fn gateway(&self, api_key: &str, extra: &[(&str, &str)]) -> anyhow::Result<Gateway> {
        let (listener, addr) = bind()?;
        let url = format!("http://{addr}");
        let mut settings = vec![
            ("WXHUB_CLIENT__API_KEY", api_key.to_owned()),
            ("WXHUB_GATEWAY__PUBLIC_BASE_URL", url.clone()),
        ];
        settings.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let config = wxhub_gateway::GatewayConfig::load(&self.source(&settings))?;
        // The sim's clock: its pushes carry virtual time in CreateTime.
        let sim_clock = self.sim.clock();
        let stop = self.services.stop.child_token();
        let task = self
            .services
            .spawn(listener, &stop, move |listener, shutdown| async move {
                let options = wxhub_gateway::Options {
                    clock: wxhub_runtime::FnClock::new(move || sim_clock.now_ms()),
                    ..wxhub_gateway::Options::default()
                };
                wxhub_gateway::Gateway::build(config, options)
                    .await?
                    .serve(Listeners::main(listener), shutdown)
                    .await
            });
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let ready = format!("{url}/readyz");
        self.wait_for(|| async {
            http.get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        Ok(Gateway {
            url,
            stop,
            task: Some(task),
        })
    }

    /// Starts a relay calling token-control with [`RELAY_KEY`]; `extra` are more `WXHUB_*`
    /// settings (they win). Returns once it answers `/readyz`.
    pub async fn relay(&self, extra: &[(&str, &str)]) -> anyhow::Result<RelayHandle> {
        let (listener, addr) = bind()?;
        let url = format!("http://{addr}");
        let mut settings = vec![
            ("WXHUB_CLIENT__API_KEY", RELAY_KEY.to_owned()),
            ("WXHUB_RELAY__ENDPOINT", url.clone()),
        ];
        settings.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let config = wxhub_relay::Config::load(&self.source(&settings))?;
        // Built on the services' runtime, as the other services are: what it spawns while
        // building (its Redis connection's driver, the token client's channel) runs there too,
        // not on the caller's runtime (a benchmark's load generator).
        let relay = self
            .services
            .runtime
            .spawn(wxhub_relay::Relay::build(config, Default::default()))
            .await??;
        let shared = relay.shared();
        let stop = self.services.stop.child_token();
        let task = self
            .services
            .spawn(listener, &stop, move |listener, shutdown| async move {
                relay.serve(Listeners::main(listener), shutdown).await
            });
        let http = reqwest::Client::new();
        let ready = format!("{url}/readyz");
        self.wait_for(|| async {
            http.get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        Ok(RelayHandle {
            url,
            shared,
            _gateway: Gateway {
                url: String::new(),
                stop,
                task: Some(task),
            },
        })
    }

    /// Starts a worker (API key [`WORKER_KEY`]); `extra` are more `WXHUB_*` settings (they
    /// win). Returns its messaging address and the token that stops it (its drain is the one
    /// of SIGTERM). Its delay queues are deleted with the namespace.
    pub fn start_worker(
        &self,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<(SocketAddr, CancellationToken)> {
        let mut settings = vec![("WXHUB_CLIENT__API_KEY", WORKER_KEY.to_owned())];
        settings.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let config = wxhub_worker::Config::load(&self.source(&settings))?;
        let topology = self.ns.topology();
        for q in wxhub_worker::delay_queues(&config, &topology) {
            self.ns.track_queue(q);
        }
        let (listener, addr) = bind()?;
        let (ops, _) = bind()?;
        let stop = self.services.stop.child_token();
        self.services
            .spawn(listener, &stop, move |listener, shutdown| async move {
                ops.set_nonblocking(true)?;
                let ops = tokio::net::TcpListener::from_std(ops)?;
                Worker::build(config, Default::default())
                    .await?
                    .serve(Listeners::main_and_ops(listener, ops), shutdown)
                    .await
            });
        Ok((addr, stop))
    }

    /// Creates a ticket in the sim and stores it for `tenant` as if its push had arrived.
    pub async fn give_ticket(&self, component: &str, tenant: &str) -> anyhow::Result<String> {
        // Without a callback URL the push fails; the sim keeps the ticket it made either way.
        let _ = self.sim.push_ticket(component).await;
        let ticket = self
            .sim
            .component(component)
            .and_then(|c| c.latest_ticket)
            .ok_or_else(|| anyhow::anyhow!("the sim made no ticket for {component}"))?;
        let clock = self.sim.clock();
        Credentials::new(self.store.clone())
            .store_ticket(tenant, &ticket, clock.now_secs(), clock.now_ms())
            .await?;
        Ok(ticket)
    }

    /// A gRPC client of token-control (retried for up to 30 s until it accepts connections).
    pub async fn token_client(&self) -> TokenControlClient<Channel> {
        let url = format!("http://{}", self.token_control);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match TokenControlClient::connect(url.clone()).await {
                Ok(client) => return client,
                Err(e) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "token-control does not accept connections: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Number of sim calls of `path` (optionally for one appid).
    pub fn calls(&self, path: &str, appid: Option<&str>) -> usize {
        self.sim
            .calls(&CallFilter {
                path: Some(path.into()),
                appid: appid.map(Into::into),
                errcode: None,
            })
            .len()
    }

    /// Polls `check` until it holds (at most 30 s).
    pub async fn wait_for<F, Fut>(&self, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !check().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not reached within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the services (bounded), deletes the namespace's queues and keys, stops the sim.
    pub async fn stop(self) {
        let Self {
            sim,
            bus,
            bus_guard,
            services,
            ns,
            ..
        } = self;
        services.stop().await;
        ns.cleanup(Some(&bus), &[]).await;
        drop(bus_guard);
        sim.shutdown().await;
    }
}

/// A request carrying `authorization: Bearer <key>`.
pub fn req<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("ascii key"),
    );
    r
}

/// The `href` of the element with `id` in a page, unescaped.
pub fn href(html: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\" href=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} link in {html}"))
        + marker.len();
    let end = start + html[start..].find('"').expect("closing quote");
    html[start..end].replace("&amp;", "&")
}

/// The query parameter `name` of `url`.
pub fn param(url: &str, name: &str) -> String {
    url::Url::parse(url)
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .query_pairs()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no {name} in {url}"))
        .1
        .into_owned()
}
