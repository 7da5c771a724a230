//! `wxhub menu|media`: typed operations through the relay (`relay.endpoint`, with the API key
//! `client.api_key`), from the same config layers as every binary.
//!
//! - `menu get|create|delete|trymatch TENANT APPID` — an authorizer's (component tenant) or the
//!   tenant's own (`-`) Official Account menu, or a WeCom app's with `--agentid`. `create` checks
//!   the JSON first (`wxhub_wechat_api::menu::validate`, errors naming each bad button) and
//!   sends a menu with a `matchrule` to `addconditional`; `delete --menuid` removes one
//!   conditional menu.
//! - `media get TENANT APPID MEDIA_ID > file` streams the bytes to stdout; `media upload TENANT
//!   APPID --type image FILE` prints WeChat's answer.
//!
//! Output: WeChat's JSON answer on stdout. A refusal by the relay or a non-zero errcode is a
//! failure: one line on stderr, exit status 2.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::Value;
use wxhub_runtime::config::{ConfigError, Source, http_url};
use wxhub_token_client::ClientConfig;
use wxhub_wechat_api::menu::{MenuFlavour, validate};

use crate::CliError;
use crate::token::block_on;

/// `[relay]` as a client reads it.
#[derive(Debug, Deserialize)]
#[serde(default)]
struct RelayEndpoint {
    endpoint: String,
}

impl Default for RelayEndpoint {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:8090".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RelayCliConfig {
    #[serde(default)]
    relay: RelayEndpoint,
    #[serde(default)]
    client: ClientConfig,
}

/// Where the configuration comes from.
#[derive(Debug, Args)]
pub struct Common {
    /// Config file (else WXHUB_CONFIG); WXHUB_RELAY__ENDPOINT and WXHUB_CLIENT__API_KEY
    /// override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

/// Which account: a tenant and an appid (`-` for the tenant's own account).
#[derive(Debug, Args)]
pub struct Account {
    tenant: String,
    /// Authorizer appid (component tenants) or `-` (the tenant's own OA or WeCom app).
    appid: String,
    /// The WeCom application (WeCom tenants).
    #[arg(long)]
    agentid: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum MenuCommand {
    /// Print the menus (default and conditional).
    Get {
        #[command(flatten)]
        account: Account,
        #[command(flatten)]
        common: Common,
    },
    /// Create the menu in FILE (a `matchrule` makes it a conditional menu); checked first.
    Create {
        #[command(flatten)]
        account: Account,
        /// The menu JSON (`{"button": [...]}`), `-` for stdin.
        #[arg(long = "json", value_name = "FILE")]
        json: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Delete every menu, or with --menuid one conditional menu.
    Delete {
        #[command(flatten)]
        account: Account,
        #[arg(long)]
        menuid: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// The menu a user sees (openid or WeChat id).
    Trymatch {
        #[command(flatten)]
        account: Account,
        #[arg(long)]
        user: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, Subcommand)]
pub enum MediaCommand {
    /// Write temporary media to stdout (`> file`).
    Get {
        #[command(flatten)]
        account: Account,
        media_id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Upload FILE as temporary media; prints {"type", "media_id", "created_at"}.
    Upload {
        #[command(flatten)]
        account: Account,
        /// image, voice, video, thumb (WeCom: file instead of thumb).
        #[arg(long = "type")]
        kind: String,
        file: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

struct Relay {
    http: reqwest::Client,
    endpoint: String,
    key: String,
}

fn connect(common: &Common) -> Result<Relay, CliError> {
    let source = Source::from_process(common.config.clone());
    let config: RelayCliConfig =
        wxhub_runtime::config::load("", &source).map_err(|e: ConfigError| CliError::new(e))?;
    http_url("relay.endpoint", &config.relay.endpoint).map_err(CliError::new)?;
    if config.client.api_key.is_empty() {
        return Err(CliError::new(
            "client.api_key is required (set WXHUB_CLIENT__API_KEY)",
        ));
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| CliError::new(format_args!("cannot build an HTTP client: {e}")))?;
    Ok(Relay {
        http,
        endpoint: config.relay.endpoint.trim_end_matches('/').to_owned(),
        key: config.client.api_key.expose().to_owned(),
    })
}

impl Relay {
    fn url(
        &self,
        account: &Account,
        path: &str,
        extra: &[(&str, &str)],
    ) -> Result<url::Url, CliError> {
        let mut url = url::Url::parse(&format!(
            "{}/v1/{}/{}{path}",
            self.endpoint, account.tenant, account.appid
        ))
        .map_err(|e| CliError::new(format_args!("bad relay URL: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(a) = account.agentid {
                q.append_pair("agentid", &a.to_string());
            }
            for (k, v) in extra {
                q.append_pair(k, v);
            }
        }
        Ok(url)
    }

    /// Sends and returns WeChat's JSON answer; the relay's refusals and non-zero errcodes are
    /// failures.
    async fn json(&self, request: reqwest::RequestBuilder) -> Result<Value, CliError> {
        let response = request
            .bearer_auth(&self.key)
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .map_err(|e| CliError::new(format_args!("relay unreachable: {}", e.without_url())))?;
        let status = response.status();
        let v: Value = response.json().await.map_err(|e| {
            CliError::new(format_args!(
                "the relay's answer is not JSON: {}",
                e.without_url()
            ))
        })?;
        check(status, &v)?;
        Ok(v)
    }
}

fn check(status: reqwest::StatusCode, v: &Value) -> Result<(), CliError> {
    if !status.is_success() {
        return Err(CliError::new(format_args!(
            "relay refused ({}): {}",
            status.as_u16(),
            v.get("message")
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
        )));
    }
    match v.get("errcode").and_then(Value::as_i64) {
        Some(code) if code != 0 => Err(CliError::new(format_args!(
            "WeChat errcode {code}: {}",
            v.get("errmsg").and_then(Value::as_str).unwrap_or_default()
        ))),
        _ => Ok(()),
    }
}

fn render(v: &Value) -> Result<String, CliError> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(CliError::new)
}

fn flavour(account: &Account) -> MenuFlavour {
    if account.agentid.is_some() {
        MenuFlavour::Wecom
    } else {
        MenuFlavour::OfficialAccount
    }
}

fn read_menu(path: &PathBuf, stdin: &mut dyn std::io::Read) -> Result<Value, CliError> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        stdin
            .read_to_string(&mut s)
            .map_err(|e| CliError::new(format_args!("cannot read stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| CliError::new(format_args!("cannot read {}: {e}", path.display())))?
    };
    serde_json::from_str(&text)
        .map_err(|e| CliError::new(format_args!("{} is not JSON: {e}", path.display())))
}

pub(crate) fn run_menu(
    cmd: MenuCommand,
    stdin: &mut dyn std::io::Read,
) -> Result<String, CliError> {
    match cmd {
        MenuCommand::Get { account, common } => {
            let relay = connect(&common)?;
            block_on(async {
                let url = relay.url(&account, "/cgi-bin/menu/get", &[])?;
                render(&relay.json(relay.http.get(url)).await?)
            })
        }
        MenuCommand::Create {
            account,
            json,
            common,
        } => {
            let menu = read_menu(&json, stdin)?;
            validate(&menu, flavour(&account)).map_err(CliError::new)?;
            let path = if menu.get("matchrule").is_some() {
                "/cgi-bin/menu/addconditional"
            } else {
                "/cgi-bin/menu/create"
            };
            let relay = connect(&common)?;
            block_on(async {
                let url = relay.url(&account, path, &[])?;
                render(&relay.json(relay.http.post(url).json(&menu)).await?)
            })
        }
        MenuCommand::Delete {
            account,
            menuid,
            common,
        } => {
            let relay = connect(&common)?;
            block_on(async {
                let request = match &menuid {
                    Some(id) => relay
                        .http
                        .post(relay.url(&account, "/cgi-bin/menu/delconditional", &[])?)
                        .json(&serde_json::json!({"menuid": id})),
                    None => relay
                        .http
                        .get(relay.url(&account, "/cgi-bin/menu/delete", &[])?),
                };
                render(&relay.json(request).await?)
            })
        }
        MenuCommand::Trymatch {
            account,
            user,
            common,
        } => {
            let relay = connect(&common)?;
            block_on(async {
                let url = relay.url(&account, "/cgi-bin/menu/trymatch", &[])?;
                let body = serde_json::json!({"user_id": user});
                render(&relay.json(relay.http.post(url).json(&body)).await?)
            })
        }
    }
}

/// `media get` writes the bytes to `stdout` as they arrive; the returned text is empty.
pub(crate) fn run_media(cmd: MediaCommand, stdout: &mut dyn Write) -> Result<String, CliError> {
    match cmd {
        MediaCommand::Get {
            account,
            media_id,
            common,
        } => {
            let relay = connect(&common)?;
            block_on(async {
                let url = relay.url(&account, "/cgi-bin/media/get", &[("media_id", &media_id)])?;
                let mut response = relay
                    .http
                    .get(url)
                    .bearer_auth(&relay.key)
                    .timeout(Duration::from_secs(600))
                    .send()
                    .await
                    .map_err(|e| {
                        CliError::new(format_args!("relay unreachable: {}", e.without_url()))
                    })?;
                let status = response.status();
                let json = response
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|ct| {
                        ct.starts_with("application/json") || ct.starts_with("text/")
                    });
                if !status.is_success() || json {
                    let v: Value = response.json().await.unwrap_or(Value::Null);
                    check(status, &v)?;
                    // A JSON success is a video's URL: print it.
                    return render(&v);
                }
                while let Some(chunk) = response.chunk().await.map_err(|e| {
                    CliError::new(format_args!("download failed: {}", e.without_url()))
                })? {
                    stdout
                        .write_all(&chunk)
                        .map_err(|e| CliError::new(format_args!("cannot write: {e}")))?;
                }
                stdout
                    .flush()
                    .map_err(|e| CliError::new(format_args!("cannot write: {e}")))?;
                Ok(String::new())
            })
        }
        MediaCommand::Upload {
            account,
            kind,
            file,
            common,
        } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| CliError::new(format_args!("cannot read {}: {e}", file.display())))?;
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("media")
                .replace('"', "");
            let boundary = format!("wxhub{}", wxhub_crypto::random_nonce(24));
            let mut body = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .into_bytes();
            body.extend_from_slice(&bytes);
            body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
            let relay = connect(&common)?;
            block_on(async {
                let url = relay.url(&account, "/cgi-bin/media/upload", &[("type", &kind)])?;
                let request = relay
                    .http
                    .post(url)
                    .header(
                        "content-type",
                        format!("multipart/form-data; boundary={boundary}"),
                    )
                    .body(body);
                render(&relay.json(request).await?)
            })
        }
    }
}
