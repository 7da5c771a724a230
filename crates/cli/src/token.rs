//! `wxhub token|authorizers|auth-url`: token-control's gRPC API for operators.
//!
//! The endpoint and API key come from the same layers as every binary: `--config FILE` (else
//! `WXHUB_CONFIG`), then `WXHUB_TOKEN_CONTROL__ENDPOINT` and `WXHUB_CLIENT__API_KEY`. Output is
//! one JSON document on stdout.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::{Value, json};
use wxhub_runtime::config::{ConfigError, Source, at_least};
use wxhub_token_client::{ClientConfig, TokenClient, TokenControlEndpoint, pb};

use crate::CliError;

/// Defaults of the CLI's own keys.
const DEFAULTS: &str = r#"
[cli]
# Public base URL of the gateway (https://wx.example.com): `auth-url` redirects to
# {public_url}/wx/{tenant}/authorized unless --redirect-uri is given.
public_url = ""
# Deadline of one call.
timeout_ms = 30000
"#;

/// What the token commands read: `[cli]`, `[client]`, and `endpoint` of `[token_control]`.
#[derive(Debug, Deserialize)]
struct CliConfig {
    #[serde(default)]
    token_control: TokenControlEndpoint,
    #[serde(default)]
    client: ClientConfig,
    cli: CliSection,
}

/// `[cli]` (a key it does not know is refused).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CliSection {
    public_url: String,
    timeout_ms: u64,
}

impl CliConfig {
    fn load(source: &Source) -> Result<Self, ConfigError> {
        let config: Self = wxhub_runtime::config::load(DEFAULTS, source)?;
        config.token_control.validate()?;
        at_least("cli.timeout_ms", config.cli.timeout_ms, 1, "")?;
        Ok(config)
    }
}

/// Where the configuration comes from.
#[derive(Debug, Args)]
pub struct Common {
    /// Config file (else WXHUB_CONFIG); WXHUB_TOKEN_CONTROL__ENDPOINT and WXHUB_CLIENT__API_KEY
    /// override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print an access token: {"access_token", "expires_at", "expires_at_ms", "appid"}.
    Get {
        tenant: String,
        /// Authorizer appid (component tenants); omit for the tenant's own token.
        appid: Option<String>,
        /// Minimum remaining lifetime in seconds (default: the service's, 300).
        #[arg(long, default_value_t = 0)]
        min_remaining: u32,
        #[command(flatten)]
        common: Common,
    },
    /// Report a token WeChat rejected; print the replacement (refreshed once if still current).
    Invalidate {
        tenant: String,
        appid: Option<String>,
        /// The rejected token.
        #[arg(long)]
        token: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuthorizersCommand {
    /// Print every authorizer of a component tenant (all pages).
    List {
        tenant: String,
        #[command(flatten)]
        common: Common,
    },
    /// Reconcile with WeChat's api_get_authorizer_list now; print what changed.
    Sync {
        tenant: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, Args)]
pub struct AuthUrlArgs {
    tenant: String,
    /// Print the mobile (bindcomponent) URL instead of the PC (componentloginpage) one.
    #[arg(long)]
    mobile: bool,
    /// Where WeChat redirects after authorization (default {cli.public_url}/wx/TENANT/authorized).
    #[arg(long)]
    redirect_uri: Option<String>,
    /// 1 Official Accounts, 2 Mini Programs, 3 both.
    #[arg(long)]
    auth_type: Option<i32>,
    /// Restrict to one account (exclusive with --auth-type).
    #[arg(long)]
    biz_appid: Option<String>,
    #[command(flatten)]
    common: Common,
}

struct Conn {
    client: TokenClient,
    public_url: String,
}

fn connect(common: &Common) -> Result<Conn, CliError> {
    let config =
        CliConfig::load(&Source::from_process(common.config.clone())).map_err(CliError::new)?;
    if config.client.api_key.is_empty() {
        return Err(CliError::new(
            "client.api_key is not set (config file or WXHUB_CLIENT__API_KEY)",
        ));
    }
    let timeout = Duration::from_millis(config.cli.timeout_ms);
    let client = TokenClient::new(
        &config.token_control.endpoint,
        &config.client.api_key,
        timeout,
    )
    .map_err(CliError::new)?;
    Ok(Conn {
        client,
        public_url: config.cli.public_url.trim_end_matches('/').to_owned(),
    })
}

fn status(e: tonic::Status) -> CliError {
    CliError::new(format_args!(
        "token-control: {:?}: {}",
        e.code(),
        e.message()
    ))
}

fn render(v: &Value) -> Result<String, CliError> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(CliError::new)
}

pub(crate) fn block_on<F: Future<Output = Result<String, CliError>>>(
    f: F,
) -> Result<String, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(format_args!("cannot start a runtime: {e}")))?
        .block_on(f)
}

fn token_json(t: &pb::AccessToken) -> Value {
    json!({
        "access_token": t.access_token,
        "expires_at": t.expires_at_ms / 1000,
        "expires_at_ms": t.expires_at_ms,
        "appid": t.appid,
    })
}

fn authorizer_json(a: &pb::Authorizer) -> Value {
    json!({
        "appid": a.appid,
        "status": a.status,
        "nick_name": a.nick_name,
        "user_name": a.user_name,
        "principal_name": a.principal_name,
        "is_mini_program": a.is_mini_program,
        "func_info": a.func_info,
        "has_refresh_token": a.has_refresh_token,
        "authorized_at_ms": a.authorized_at_ms,
        "updated_at_ms": a.updated_at_ms,
        "revoked_at_ms": a.revoked_at_ms,
        "revoked_reason": a.revoked_reason,
    })
}

pub fn run_token(cmd: TokenCommand) -> Result<String, CliError> {
    block_on(async move {
        match cmd {
            TokenCommand::Get {
                tenant,
                appid,
                min_remaining,
                common,
            } => {
                let c = connect(&common)?;
                let t = c
                    .client
                    .access_token(&tenant, &appid.unwrap_or_default(), min_remaining)
                    .await
                    .map_err(status)?;
                render(&token_json(&t))
            }
            TokenCommand::Invalidate {
                tenant,
                appid,
                token,
                common,
            } => {
                let c = connect(&common)?;
                let t = c
                    .client
                    .invalidate(&tenant, &appid.unwrap_or_default(), &token)
                    .await
                    .map_err(status)?;
                render(&token_json(&t))
            }
        }
    })
}

pub fn run_authorizers(cmd: AuthorizersCommand) -> Result<String, CliError> {
    block_on(async move {
        match cmd {
            AuthorizersCommand::List { tenant, common } => {
                let c = connect(&common)?;
                let mut all = Vec::new();
                let mut token = String::new();
                let total = loop {
                    let req = c.client.request(pb::ListAuthorizersRequest {
                        tenant: tenant.clone(),
                        page_size: 500,
                        page_token: token.clone(),
                    });
                    let page = c
                        .client
                        .grpc()
                        .list_authorizers(req)
                        .await
                        .map_err(status)?
                        .into_inner();
                    all.extend(page.authorizers.iter().map(authorizer_json));
                    if page.next_page_token.is_empty() {
                        break page.total;
                    }
                    token = page.next_page_token;
                };
                render(&json!({ "total": total, "authorizers": all }))
            }
            AuthorizersCommand::Sync { tenant, common } => {
                let c = connect(&common)?;
                let req = c.client.request(pb::SyncAuthorizersRequest { tenant });
                let s = c
                    .client
                    .grpc()
                    .sync_authorizers(req)
                    .await
                    .map_err(status)?
                    .into_inner();
                render(&json!({
                    "listed": s.listed,
                    "authorized": s.authorized,
                    "refresh_tokens": s.refresh_tokens,
                }))
            }
        }
    })
}

pub fn run_auth_url(a: AuthUrlArgs) -> Result<String, CliError> {
    block_on(async move {
        let c = connect(&a.common)?;
        let redirect_uri = match a.redirect_uri {
            Some(r) => r,
            None if !c.public_url.is_empty() => {
                format!("{}/wx/{}/authorized", c.public_url, a.tenant)
            }
            None => {
                return Err(CliError::new(
                    "--redirect-uri is required (or set cli.public_url to the gateway's public URL)",
                ));
            }
        };
        let req = c.client.request(pb::CreateAuthorizationUrlRequest {
            tenant: a.tenant,
            redirect_uri,
            auth_type: a.auth_type.unwrap_or(0),
            biz_appid: a.biz_appid.unwrap_or_default(),
        });
        let u = c
            .client
            .grpc()
            .create_authorization_url(req)
            .await
            .map_err(status)?
            .into_inner();
        render(&json!({
            "url": if a.mobile { &u.mobile_url } else { &u.pc_url },
            "pc_url": u.pc_url,
            "mobile_url": u.mobile_url,
            "expires_at_ms": u.expires_at_ms,
        }))
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn source(file: &Path) -> Source {
        Source {
            file: Some(file.to_owned()),
            env: vec![],
        }
    }

    /// The CLI reads the file every binary shares (`make demo` points WXHUB_CONFIG at it).
    #[test]
    fn the_shared_demo_config_loads() {
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/demo/config.toml");
        let config = CliConfig::load(&source(&demo)).unwrap();
        assert_eq!(config.token_control.endpoint, "http://127.0.0.1:17051");
        assert_eq!(config.cli.public_url, "http://127.0.0.1:17080");
        let events = crate::events::EventsConfig::load(&source(&demo)).unwrap();
        assert_eq!(events.namespace, "wxhub-demo");
    }

    #[test]
    fn a_misspelt_key_in_a_section_it_reads_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        for (text, key) in [
            ("[cli]\npublic_uri = \"https://x\"\n", "public_uri"),
            ("[client]\napi_kye = \"k\"\n", "api_kye"),
        ] {
            std::fs::write(&file, text).unwrap();
            let err = CliConfig::load(&source(&file)).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        // `[token_control]` is token-control's: the CLI reads only `endpoint`.
        std::fs::write(&file, "[token_control]\nlisten = \"0.0.0.0:1\"\n").unwrap();
        assert!(CliConfig::load(&source(&file)).is_ok());
        std::fs::write(&file, "[amqp]\nprefech = 1\n").unwrap();
        let err = crate::events::EventsConfig::load(&source(&file))
            .unwrap_err()
            .to_string();
        assert!(err.contains("prefech"), "{err}");
    }
}
