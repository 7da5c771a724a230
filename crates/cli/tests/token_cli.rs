//! `wxhub token|authorizers|auth-url` against a real token-control (in-process, on the real
//! Redis and RabbitMQ, the simulator as WeChat), run through the binary.

use std::process::{Command, Output};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wxhub_runtime::config::Source;
use wxhub_runtime::tenants::api_key_sha256;
use wxhub_runtime::{Listeners, Service, Tenants, TenantsHandle};
use wxhub_sim::{AccountSeed, AuthorizationSeed, ComponentSeed, Seed, SimConfig};
use wxhub_store::{Authorizers, Credentials};
use wxhub_testkit::Namespace;
use wxhub_token_control::{Config, FnClock, Options, TokenControl};

const COMPONENT: &str = "wxc00000000000c11";
const AUTHORIZER: &str = "wxa00000000000c11";
const KEY: &str = "cli-key";
const AES: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

fn wxhub(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wxhub"));
    cmd.args(args).env_remove("WXHUB_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("spawn wxhub")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

fn fails_naming(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains(needle), "{stderr:?} should name {needle:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_authorizers_and_auth_url_commands() {
    let ns = Namespace::new("cli-token");
    let sim = wxhub_sim::start(SimConfig {
        auto_ticket_push: false,
        seed: Some(Seed {
            components: vec![ComponentSeed {
                appid: COMPONENT.into(),
                secret: "cs".into(),
                token: "tok".into(),
                aes_key: AES.into(),
                auth_event_url: None,
                message_url_template: None,
                encryption: Default::default(),
                auto_ticket_push: false,
            }],
            accounts: vec![AccountSeed {
                appid: AUTHORIZER.into(),
                user_name: "gh_cli".into(),
                nick_name: Some("CLI Shop".into()),
                ..Default::default()
            }],
            authorizations: vec![AuthorizationSeed {
                component_appid: COMPONENT.into(),
                authorizer_appid: AUTHORIZER.into(),
                refresh_token: None,
                func_info: None,
            }],
            ..Default::default()
        }),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let tenants = TenantsHandle::fixed(
        Tenants::from_toml(&format!(
            "[[tenants]]\nid = \"acme\"\nkind = \"component\"\napp_id = \"{COMPONENT}\"\napp_secret = \"cs\"\ntoken = \"tok\"\nencoding_aes_key = \"{AES}\"\n\n[[clients]]\nname = \"cli\"\napi_key_sha256 = \"{}\"\ntenants = [\"acme\"]\n",
            api_key_sha256(KEY)
        ))
        .unwrap(),
    );
    // A ticket, as if WeChat had pushed it.
    let _ = sim.push_ticket(COMPONENT).await;
    let ticket = sim.component(COMPONENT).unwrap().latest_ticket.unwrap();
    let store = ns.store();
    let clock = sim.clock();
    Credentials::new(store.clone())
        .store_ticket("acme", &ticket, clock.now_secs(), clock.now_ms())
        .await
        .unwrap();

    let base = sim.base_url();
    let config = Config::load(&Source {
        file: None,
        env: [
            ("WXHUB_NAMESPACE", ns.name()),
            ("WXHUB_WECHAT__API_BASE", base.as_str()),
            ("WXHUB_WECHAT__MP_BASE", base.as_str()),
            ("WXHUB_AMQP__DELIVERY_LIMIT", "5"),
            ("WXHUB_AMQP__URL", &wxhub_testkit::amqp_url()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .chain(wxhub_testkit::redis_env())
        .collect(),
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let token_control = TokenControl::build(
        config,
        Options {
            clock: FnClock::new(move || clock.now_ms()),
            tenants: Some(tenants),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = tokio::spawn(token_control.serve(
        Listeners::main_and_ops(listener, ops),
        stop.clone().cancelled_owned(),
    ));
    let auths = Authorizers::new(store.clone());
    for _ in 0..300 {
        if auths.count("acme").await.unwrap_or(0) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wxhub.toml");
    std::fs::write(
        &file,
        format!("[token_control]\nendpoint = \"{endpoint}\"\n\n[client]\napi_key = \"{KEY}\"\n\n[cli]\npublic_url = \"https://wx.example.com\"\n"),
    )
    .unwrap();
    let cfg = file.to_str().unwrap();

    let out = tokio::task::spawn_blocking({
        let cfg = cfg.to_owned();
        move || {
            let get = wxhub(&["token", "get", "acme", AUTHORIZER, "--config", &cfg], &[]);
            let list = wxhub(&["authorizers", "list", "acme", "--config", &cfg], &[]);
            let sync = wxhub(&["authorizers", "sync", "acme", "--config", &cfg], &[]);
            let pc = wxhub(&["auth-url", "acme", "--config", &cfg], &[]);
            let mobile = wxhub(&["auth-url", "acme", "--mobile", "--config", &cfg], &[]);
            // The environment overrides the file.
            let env_key = wxhub(
                &["token", "get", "acme", "--config", &cfg],
                &[("WXHUB_CLIENT__API_KEY", "wrong-key")],
            );
            let unknown = wxhub(&["token", "get", "nobody", "--config", &cfg], &[]);
            let no_key = wxhub(
                &["token", "get", "acme"],
                &[("WXHUB_TOKEN_CONTROL__ENDPOINT", &endpoint)],
            );
            (get, list, sync, pc, mobile, env_key, unknown, no_key)
        }
    })
    .await
    .unwrap();
    let (get, list, sync, pc, mobile, env_key, unknown, no_key) = out;

    let token = json(&get);
    let view = sim.authorizer(COMPONENT, AUTHORIZER).unwrap();
    assert_eq!(token["access_token"].as_str(), view.access_token.as_deref());
    assert!(token["expires_at"].as_i64().unwrap() > clock_secs(&sim));
    assert_eq!(token["appid"], AUTHORIZER);

    let rejected = token["access_token"].as_str().unwrap().to_owned();
    let cfg2 = cfg.to_owned();
    let invalidated = tokio::task::spawn_blocking(move || {
        wxhub(
            &[
                "token",
                "invalidate",
                "acme",
                AUTHORIZER,
                "--token",
                &rejected,
                "--config",
                &cfg2,
            ],
            &[],
        )
    })
    .await
    .unwrap();
    let replaced = json(&invalidated);
    assert_ne!(replaced["access_token"], token["access_token"]);

    let list = json(&list);
    assert_eq!(list["total"], 1);
    assert_eq!(list["authorizers"][0]["appid"], AUTHORIZER);
    assert_eq!(list["authorizers"][0]["status"], "authorized");
    assert_eq!(json(&sync)["listed"], 1);
    let pc = json(&pc);
    assert!(
        pc["url"]
            .as_str()
            .unwrap()
            .contains("/cgi-bin/componentloginpage?")
    );
    assert!(
        pc["url"]
            .as_str()
            .unwrap()
            .contains("redirect_uri=https%3A%2F%2Fwx.example.com%2Fwx%2Facme%2Fauthorized")
    );
    assert!(
        json(&mobile)["url"]
            .as_str()
            .unwrap()
            .contains("/safe/bindcomponent?")
    );
    fails_naming(&env_key, "Unauthenticated");
    fails_naming(&unknown, "PermissionDenied");
    fails_naming(&no_key, "client.api_key");

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    let cancel = CancellationToken::new();
    let bus = ns.bus(&cancel).await;
    ns.cleanup(Some(&bus), &[]).await;
    sim.shutdown().await;
}

fn clock_secs(sim: &wxhub_sim::SimHandle) -> i64 {
    sim.clock().now_secs()
}
