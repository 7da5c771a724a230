//! One config file serves every binary (the demo's `deploy/demo/config.toml`, the Helm chart's
//! config map): each binary reads the sections it needs and leaves the others alone, but a
//! misspelt key inside a section it reads is refused, naming the key — never a setting that
//! silently keeps its default.

use std::path::{Path, PathBuf};

use wxhub_runtime::config::Source;

/// The configuration files the repository ships.
fn shipped() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    [
        "deploy/demo/config.toml",
        "deploy/config/gateway.toml",
        "deploy/config/token-control.toml",
        "deploy/config/relay.toml",
    ]
    .into_iter()
    .map(|p| root.join(p))
    .collect()
}

/// `file` with the environment the demo gives every binary (`scripts/demo.sh`).
fn source(file: &Path) -> Source {
    Source {
        file: Some(file.to_owned()),
        env: vec![("WXHUB_CLIENT__API_KEY".into(), "demo-key".into())],
    }
}

/// Why each binary refuses `source`, or `None` where it loads.
fn refusals(source: &Source) -> [(&'static str, Option<String>); 4] {
    [
        (
            "gateway",
            wxhub_gateway::GatewayConfig::load(source)
                .err()
                .map(|e| e.to_string()),
        ),
        (
            "token-control",
            wxhub_token_control::Config::load(source)
                .err()
                .map(|e| e.to_string()),
        ),
        (
            "worker",
            wxhub_worker::Config::load(source)
                .err()
                .map(|e| e.to_string()),
        ),
        (
            "relay",
            wxhub_relay::Config::load(source)
                .err()
                .map(|e| e.to_string()),
        ),
    ]
}

#[test]
fn every_shipped_config_loads_in_every_binary() {
    for file in shipped() {
        for (binary, refused) in refusals(&source(&file)) {
            assert_eq!(refused, None, "{binary} refuses {}", file.display());
        }
    }
}

/// For every section a binary reads, a misspelt key in it is refused by that binary with a
/// message naming the key; the binaries that do not read the section load the same file.
#[test]
fn a_misspelt_key_in_a_section_a_binary_reads_is_refused_naming_it() {
    // (section and misspelt key, the binaries that read the section)
    let cases: &[(&str, &[&str])] = &[
        (
            "[redis]\ncluster_nodes = [\"10.0.0.1:6379\"]",
            &["gateway", "token-control", "worker", "relay"],
        ),
        (
            "[amqp]\nprefecth = 10",
            &["gateway", "token-control", "worker"],
        ),
        (
            "[telemetry]\nformt = \"json\"",
            &["gateway", "token-control", "worker", "relay"],
        ),
        (
            "[shutdown]\ngrace_secs = 10",
            &["gateway", "token-control", "worker", "relay"],
        ),
        (
            "[tenants]\nreload_interval = 100",
            &["gateway", "token-control", "worker", "relay"],
        ),
        (
            "[wechat]\napi_bse = \"http://127.0.0.1:1\"",
            &["token-control", "worker", "relay"],
        ),
        ("[client]\napikey = \"k\"", &["gateway", "worker", "relay"]),
        ("[gateway]\ndedupe_done_ttl_sec = 600", &["gateway"]),
        (
            "[gateway.authorize_limit_per_tenant]\ncount = 5\nperiod_ms = 1000\nburts = 5",
            &["gateway"],
        ),
        ("[token_control]\nlock_ttl = 5000", &["token-control"]),
        ("[worker]\nsent_ttl_sec = 60", &["worker"]),
        ("[relay]\nmax_body = 1024", &["relay"]),
        (
            "[worker.limits]\ncustom = { count = 1, period_ms = 1000, burts = 1 }",
            &["worker"],
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (section, readers) in cases {
        let key = section
            .lines()
            .last()
            .and_then(|line| line.split(" =").next())
            .unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, format!("namespace = \"cfg-test\"\n{section}\n")).unwrap();
        for (binary, refused) in refusals(&source(&file)) {
            if readers.contains(&binary) {
                let refused = refused.unwrap_or_else(|| panic!("{binary} accepts {section:?}"));
                assert!(refused.contains(key), "{binary}, {section:?}: {refused}");
            } else {
                assert_eq!(refused, None, "{binary} does not read {section:?}");
            }
        }
    }
}

/// `[token_control]` has a server part (`listen`, `lock_ttl_ms`, …) and a client part
/// (`endpoint`). token-control owns it and checks every key, `endpoint` included; the gateway
/// and the worker read only `endpoint` and leave the server's keys to token-control.
#[test]
fn token_control_owns_its_section_and_clients_read_only_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(
        &file,
        "[token_control]\nlisten = \"127.0.0.1:50051\"\nlock_ttl_ms = 5000\nendpoint = \"http://tc:50051\"\n",
    )
    .unwrap();
    let source = source(&file);
    for (binary, refused) in refusals(&source) {
        assert_eq!(refused, None, "{binary}");
    }
    let gateway = wxhub_gateway::GatewayConfig::load(&source).unwrap();
    assert_eq!(gateway.token_control.endpoint, "http://tc:50051");
    let worker = wxhub_worker::Config::load(&source).unwrap();
    assert_eq!(worker.token_control.endpoint, "http://tc:50051");
    let relay = wxhub_relay::Config::load(&source).unwrap();
    assert_eq!(relay.token_control.endpoint, "http://tc:50051");
    let token_control = wxhub_token_control::Config::load(&source).unwrap();
    assert_eq!(token_control.token_control.lock_ttl_ms, 5000);
}
