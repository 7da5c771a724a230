//! The client side of token-control's configuration: `[client]`, this process's identity, and
//! the one key of `[token_control]` a client reads, `endpoint`.
//!
//! `[token_control]` belongs to token-control: its section struct there lists every key,
//! `endpoint` included, and refuses a misspelt one. A client binary (gateway, worker, CLI) reads
//! the section through [`TokenControlEndpoint`], which takes `endpoint` and leaves the server's
//! keys (`listen`, `lock_ttl_ms`, …) alone. One file thus serves every binary, and the binary
//! that owns a section is the one that checks all of it.

use serde::{Deserialize, Serialize};
use wxhub_domain::Secret;
use wxhub_domain::config::{ConfigError, http_url};

/// `[client]`: the API key this process presents to token-control (a key it does not know is
/// refused).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Empty by default; the binaries that cannot work without it say so at load.
    pub api_key: Secret,
}

/// `[token_control]` as a client reads it: where token-control's gRPC API listens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenControlEndpoint {
    /// Default `http://127.0.0.1:50051`.
    pub endpoint: String,
}

impl Default for TokenControlEndpoint {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:50051".into(),
        }
    }
}

impl TokenControlEndpoint {
    /// `endpoint` must be an absolute http(s) URL.
    pub fn validate(&self) -> Result<(), ConfigError> {
        http_url("token_control.endpoint", &self.endpoint)
    }
}
