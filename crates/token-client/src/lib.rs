//! A thin client of token-control for the processes that need credentials (gateway pages,
//! worker, CLI).
//!
//! It owns one lazily connected channel (it connects on first use and reconnects by itself),
//! attaches the client's API key as `authorization: Bearer <key>`, and sets a per-request
//! deadline with `Request::set_timeout` — tonic's `Endpoint::timeout` alone does not send
//! `grpc-timeout`, so the server would not know when to give up.
//!
//! [`ClientConfig`] and [`TokenControlEndpoint`] are the config sections a client reads.
//! Depends on `wxhub-domain` and the generated proto client only.

mod config;

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use wxhub_domain::Secret;
use wxhub_proto::token::v1::token_control_client::TokenControlClient;

pub use config::{ClientConfig, TokenControlEndpoint};
pub use wxhub_proto::token::v1 as pb;

/// Why a client could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// `token_control.endpoint` is not a usable URI.
    #[error("token_control.endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    /// `client.api_key` is empty or cannot be sent as a header.
    #[error("client.api_key is {0}")]
    ApiKey(&'static str),
}

/// A token-control client. Cheap to clone; clones share the channel.
#[derive(Clone)]
pub struct TokenClient {
    grpc: TokenControlClient<Channel>,
    authorization: MetadataValue<Ascii>,
    timeout: Duration,
}

impl std::fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TokenClient {
    /// A client of `endpoint` presenting `api_key`, each call bounded by `timeout`.
    pub fn new(endpoint: &str, api_key: &Secret, timeout: Duration) -> Result<Self, ClientError> {
        if api_key.is_empty() {
            return Err(ClientError::ApiKey("empty"));
        }
        let authorization = format!("Bearer {}", api_key.expose())
            .parse()
            .map_err(|_| ClientError::ApiKey("not a valid header value"))?;
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| ClientError::Endpoint {
                endpoint: endpoint.to_owned(),
                reason: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(3))
            .timeout(timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            grpc: TokenControlClient::new(channel),
            authorization,
            timeout,
        })
    }

    /// A request carrying the API key and this client's deadline.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        // The caller's trace continues in token-control.
        for (name, value) in wxhub_domain::trace::inject_current() {
            if let (Ok(name), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(name.as_bytes()),
                value.parse(),
            ) {
                request.metadata_mut().insert(name, value);
            }
        }
        request
    }

    /// The generated client, for calls without a convenience method (wrap messages with
    /// [`TokenClient::request`]).
    pub fn grpc(&self) -> TokenControlClient<Channel> {
        self.grpc.clone()
    }

    /// An access token with at least `min_remaining_secs` of life (0: the server's default).
    pub async fn access_token(
        &self,
        tenant: &str,
        appid: &str,
        min_remaining_secs: u32,
    ) -> Result<pb::AccessToken, tonic::Status> {
        let message = pb::GetAccessTokenRequest {
            tenant: tenant.to_owned(),
            appid: appid.to_owned(),
            min_remaining_secs,
        };
        Ok(self
            .grpc()
            .get_access_token(self.request(message))
            .await?
            .into_inner())
    }

    /// Reports a token WeChat rejected; returns the replacement (one refresh however many
    /// callers report the same token).
    pub async fn invalidate(
        &self,
        tenant: &str,
        appid: &str,
        rejected_token: &str,
    ) -> Result<pb::AccessToken, tonic::Status> {
        let message = pb::InvalidateAccessTokenRequest {
            tenant: tenant.to_owned(),
            appid: appid.to_owned(),
            rejected_token: rejected_token.to_owned(),
        };
        Ok(self
            .grpc()
            .invalidate_access_token(self.request(message))
            .await?
            .into_inner())
    }

    /// Exchanges an authorization code (`api_query_auth`) and returns the stored authorizer.
    pub async fn exchange_auth_code(
        &self,
        tenant: &str,
        auth_code: &str,
    ) -> Result<pb::Authorizer, tonic::Status> {
        let message = pb::ExchangeAuthCodeRequest {
            tenant: tenant.to_owned(),
            auth_code: auth_code.to_owned(),
            ..Default::default()
        };
        Ok(self
            .grpc()
            .exchange_auth_code(self.request(message))
            .await?
            .into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rejects_bad_endpoint_and_key() {
        let key = Secret::new("k");
        assert!(matches!(
            TokenClient::new("not a uri", &key, Duration::from_secs(1)),
            Err(ClientError::Endpoint { .. })
        ));
        assert_eq!(
            TokenClient::new(
                "http://127.0.0.1:1",
                &Secret::new(""),
                Duration::from_secs(1)
            )
            .err(),
            Some(ClientError::ApiKey("empty"))
        );
        assert!(
            TokenClient::new(
                "http://127.0.0.1:1",
                &Secret::new("a\nb"),
                Duration::from_secs(1)
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn requests_carry_key_and_deadline() {
        let c = TokenClient::new(
            "http://127.0.0.1:1",
            &Secret::new("k-1"),
            Duration::from_millis(1500),
        )
        .unwrap();
        let r = c.request(());
        assert_eq!(r.metadata().get("authorization").unwrap(), "Bearer k-1");
        assert_eq!(r.metadata().get("grpc-timeout").unwrap(), "1500000u");
        assert!(!format!("{c:?}").contains("k-1"));
    }

    #[tokio::test]
    async fn an_unreachable_server_is_unavailable_not_a_panic() {
        let c = TokenClient::new(
            "http://127.0.0.1:1",
            &Secret::new("k"),
            Duration::from_millis(500),
        )
        .unwrap();
        let err = c.access_token("acme", "", 0).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }
}
