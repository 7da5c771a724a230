//! Access tokens for sends, from token-control, kept in process until near their expiry.
//!
//! A send asks [`TokenCache::get`]; a token WeChat rejected (40001/40014/42001) is reported
//! with [`TokenCache::rejected`], which returns the replacement: another job's report may
//! already have replaced it here (then token-control is not asked), else token-control's
//! compare-then-refresh does — one refresh however many jobs report the same token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use wxhub_runtime::Secret;
use wxhub_token_client::TokenClient;

/// Tokens are used until this long before their expiry.
const MARGIN: Duration = Duration::from_secs(300);

/// In-process token cache over token-control. Cheap to clone? No: share it in an `Arc`.
pub struct TokenCache {
    client: TokenClient,
    tokens: Mutex<HashMap<(String, String), (Secret, i64)>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache").finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    wxhub_runtime::unix_ms()
}

impl TokenCache {
    pub fn new(client: TokenClient) -> Self {
        Self {
            client,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// The token client (for the release check's calls).
    pub fn client(&self) -> &TokenClient {
        &self.client
    }

    fn cached(&self, key: &(String, String)) -> Option<(Secret, i64)> {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    fn put(&self, key: (String, String), token: Secret, expires_at_ms: i64) {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, (token, expires_at_ms));
    }

    /// The access token of (`tenant`, `appid`; empty appid: the tenant's own account).
    pub async fn get(&self, tenant: &str, appid: &str) -> Result<Secret, tonic::Status> {
        let key = (tenant.to_owned(), appid.to_owned());
        let margin = i64::try_from(MARGIN.as_millis()).unwrap_or(i64::MAX);
        if let Some((token, exp)) = self.cached(&key)
            && exp - margin > now_ms()
        {
            return Ok(token);
        }
        let t = self.client.access_token(tenant, appid, 0).await?;
        let token = Secret::new(t.access_token);
        self.put(key, token.clone(), t.expires_at_ms);
        Ok(token)
    }

    /// WeChat rejected `token`: the replacement.
    pub async fn rejected(
        &self,
        tenant: &str,
        appid: &str,
        token: &Secret,
    ) -> Result<Secret, tonic::Status> {
        let key = (tenant.to_owned(), appid.to_owned());
        if let Some((current, exp)) = self.cached(&key)
            && current.expose() != token.expose()
            && exp > now_ms()
        {
            return Ok(current);
        }
        metrics::counter!("wxhub_worker_token_invalidations_total").increment(1);
        let t = self
            .client
            .invalidate(tenant, appid, token.expose())
            .await?;
        let fresh = Secret::new(t.access_token);
        self.put(key, fresh.clone(), t.expires_at_ms);
        Ok(fresh)
    }
}
