//! A gateway in-process in front of the environment's token-control, for the authorization
//! pages, and helpers to read those pages like a browser.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wxhub_runtime::Service as _;
use wxhub_runtime::config::Source;

use crate::harness::Env;

/// A running gateway; stopped on drop (or by [`Gateway::stop`], which waits).
pub struct Gateway {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    stop: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Gateway {
    /// Starts a gateway on the environment's namespace, tenants and first replica, calling
    /// token-control with `api_key`, its own address as `gateway.public_base_url`; `extra` are
    /// more `WXHUB_*` settings (they win). Returns once it is ready (RabbitMQ connected).
    pub async fn start(env: &Env, api_key: &str, extra: &[(&str, &str)]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut vars: Vec<(String, String)> = [
            ("WXHUB_NAMESPACE", env.ns.name().to_owned()),
            ("WXHUB_REDIS__URL", wxhub_testkit::redis_url()),
            ("WXHUB_AMQP__URL", wxhub_testkit::amqp_url()),
            ("WXHUB_AMQP__DELIVERY_LIMIT", "5".to_owned()),
            (
                "WXHUB_TOKEN_CONTROL__ENDPOINT",
                format!("http://{}", env.replicas[0].addr),
            ),
            ("WXHUB_CLIENT__API_KEY", api_key.to_owned()),
            ("WXHUB_SHUTDOWN__GRACE_MS", "2000".to_owned()),
            ("WXHUB_GATEWAY__PUBLIC_BASE_URL", url.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        vars.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let config = wxhub_gateway::GatewayConfig::load(&Source {
            file: None,
            env: vars,
        })
        .expect("gateway config");
        // The sim's clock: its pushes carry virtual time in CreateTime.
        let sim_clock = env.sim.clock();
        let gateway = wxhub_gateway::Gateway::build(
            config,
            wxhub_gateway::Options {
                tenants: Some(env.tenants.clone()),
                clock: wxhub_runtime::FnClock::new(move || sim_clock.now_ms()),
            },
        )
        .await
        .unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(gateway.serve(
            wxhub_runtime::Listeners::main(listener),
            stop.clone().cancelled_owned(),
        ));
        let http = reqwest::Client::new();
        let ready = format!("{url}/readyz");
        env.wait_for(|| async {
            http.get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        Self {
            url,
            stop,
            task: Some(task),
        }
    }

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

/// The `href` of the element with `id`, unescaped.
pub fn href(html: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\" href=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} link in {html}"))
        + marker.len();
    let end = start + html[start..].find('"').unwrap();
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
