//! The whole wxhub stack in one process, for cross-service tests and benchmarks: the WeChat
//! simulator, token-control, the gateway and the worker, each started through its library entry
//! on port 0, against the real Redis and RabbitMQ in a namespace of their own.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wxhub_bus::Bus;
use wxhub_gateway::Gateway;
use wxhub_runtime::config::Source;
use wxhub_runtime::tenants::api_key_sha256;
use wxhub_runtime::{Listeners, Service};
use wxhub_sim::{AccountSeed, ComponentSeed, Seed, SimConfig, SimHandle, UserSeed};
use wxhub_testkit::Namespace;
use wxhub_token_control::TokenControl;
use wxhub_worker::Worker;

/// The component tenant of the stack.
pub const TENANT: &str = "acme";
pub const COMPONENT: &str = "wx0acme0component0";
pub const SECRET: &str = "acme-component-secret";
pub const TOKEN: &str = "acme-message-token";
pub const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
/// An ordinary account that can authorize the component, with one user in the 48 h window.
pub const SHOP: &str = "wx0acme0shop0oa";
pub const SHOP_USER: &str = "o_acme_shop_alice";
/// API keys of the services (the gateway's pages and the worker ask token-control).
pub const GATEWAY_KEY: &str = "gateway-key";
pub const WORKER_KEY: &str = "worker-key";

/// A running stack. Stop it with [`Stack::stop`] (it also deletes its broker objects and keys).
pub struct Stack {
    pub ns: Namespace,
    pub sim: SimHandle,
    pub gateway_url: String,
    pub token_control: SocketAddr,
    /// A bus on the stack's namespace, for tests that publish or read queues themselves.
    pub bus: Bus,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

fn tenants_file() -> String {
    format!(
        r#"
[[tenants]]
id = "{TENANT}"
kind = "component"
app_id = "{COMPONENT}"
app_secret = "{SECRET}"
token = "{TOKEN}"
encoding_aes_key = "{AES_KEY}"

[[clients]]
name = "gateway"
api_key_sha256 = "{}"
tenants = ["{TENANT}"]

[[clients]]
name = "worker"
api_key_sha256 = "{}"
tenants = ["*"]
"#,
        api_key_sha256(GATEWAY_KEY),
        api_key_sha256(WORKER_KEY)
    )
}

fn seed() -> Seed {
    Seed {
        components: vec![ComponentSeed {
            appid: COMPONENT.into(),
            secret: SECRET.into(),
            token: TOKEN.into(),
            aes_key: AES_KEY.into(),
            auth_event_url: None,
            message_url_template: None,
            encryption: Default::default(),
            auto_ticket_push: false,
        }],
        accounts: vec![AccountSeed {
            appid: SHOP.into(),
            user_name: "gh_acme_shop".into(),
            nick_name: Some("Acme Shop".into()),
            users: vec![UserSeed {
                openid: SHOP_USER.into(),
                subscribed: true,
                last_interaction_ago_secs: Some(60),
                subscribe_allowance: Default::default(),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

impl Stack {
    /// Starts every service; returns once the gateway answers `/readyz`.
    pub async fn start(label: &str) -> anyhow::Result<Self> {
        let ns = Namespace::new(label);
        let dir = tempfile::tempdir()?;
        let tenants_path = dir.path().join("tenants.toml");
        std::fs::write(&tenants_path, tenants_file())?;
        let sim = wxhub_sim::start(SimConfig {
            seed: Some(seed()),
            auto_ticket_push: false,
            ..SimConfig::default()
        })
        .await?;

        let gateway_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let gateway_url = format!("http://{}", gateway_listener.local_addr()?);
        sim.set_component_urls(
            COMPONENT,
            Some(format!("{gateway_url}/wx/{TENANT}/component")),
            Some(format!("{gateway_url}/wx/{TENANT}/callback/$APPID$")),
        )?;
        let token_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let token_control = token_listener.local_addr()?;
        let worker_ops = tokio::net::TcpListener::bind("127.0.0.1:0").await?;

        let env = |extra: &[(&str, String)]| -> Source {
            let mut env: Vec<(String, String)> = [
                ("WXHUB_NAMESPACE", ns.name().to_owned()),
                ("WXHUB_REDIS__URL", wxhub_testkit::redis_url()),
                ("WXHUB_AMQP__URL", wxhub_testkit::amqp_url()),
                // Same limit as the testkit's topology, so both declarations agree.
                ("WXHUB_AMQP__DELIVERY_LIMIT", "5".to_owned()),
                ("WXHUB_WECHAT__API_BASE", sim.base_url()),
                ("WXHUB_WECHAT__QYAPI_BASE", sim.base_url()),
                ("WXHUB_WECHAT__MP_BASE", sim.base_url()),
                ("WXHUB_TENANTS__FILE", tenants_path.display().to_string()),
                (
                    "WXHUB_TOKEN_CONTROL__ENDPOINT",
                    format!("http://{token_control}"),
                ),
                ("WXHUB_SHUTDOWN__GRACE_MS", "3000".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
            Source { file: None, env }
        };
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();

        let tc_config = wxhub_token_control::Config::load(&env(&[]))?;
        let tc_ops = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let tc = TokenControl::build(tc_config, Default::default()).await?;
        tasks.push(tokio::spawn(tc.serve(
            Listeners::main_and_ops(token_listener, tc_ops),
            cancel.clone().cancelled_owned(),
        )));
        let gw_config = wxhub_gateway::GatewayConfig::load(&env(&[(
            "WXHUB_CLIENT__API_KEY",
            GATEWAY_KEY.to_owned(),
        )]))?;
        // The sim's clock: its pushes carry virtual time in CreateTime.
        let sim_clock = sim.clock();
        let gateway = Gateway::build(
            gw_config,
            wxhub_gateway::Options {
                clock: wxhub_runtime::FnClock::new(move || sim_clock.now_ms()),
                ..wxhub_gateway::Options::default()
            },
        )
        .await?;
        tasks.push(tokio::spawn(gateway.serve(
            Listeners::main(gateway_listener),
            cancel.clone().cancelled_owned(),
        )));
        let worker_config =
            wxhub_worker::Config::load(&env(&[("WXHUB_CLIENT__API_KEY", WORKER_KEY.to_owned())]))?;
        let worker = Worker::build(worker_config, ()).await?;
        tasks.push(tokio::spawn(worker.serve(
            Listeners::ops(worker_ops),
            cancel.clone().cancelled_owned(),
        )));

        let bus = ns.bus(&cancel).await;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let mut ready = false;
        for _ in 0..200 {
            let probe = http.get(format!("{gateway_url}/readyz")).send().await;
            if probe.is_ok_and(|r| r.status().is_success()) {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::ensure!(ready, "the gateway did not become ready");
        Ok(Self {
            ns,
            sim,
            gateway_url,
            token_control,
            bus,
            cancel,
            tasks,
            _dir: dir,
        })
    }

    /// Stops the services (bounded), deletes the namespace's queues and keys, stops the sim.
    pub async fn stop(self) {
        self.cancel.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        self.ns.cleanup(Some(&self.bus), &[]).await;
        self.sim.shutdown().await;
    }
}
