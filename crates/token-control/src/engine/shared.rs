//! What every room of the engine works with: the handles on Redis and WeChat, the tenants, the
//! configuration and the clock, and what this replica holds in memory (the read cache and
//! recovery's memory), with the one read of a stored token that keeps both current.

use std::sync::Arc;

use wxhub_runtime::TenantsHandle;
use wxhub_store::{Credentials, TokenRecord};
use wxhub_wechat_api::WechatApi;

use super::cache::Cache;
use super::credential::Credential;
use super::memory::Memory;
use crate::clock::Clock;
use crate::config::TokenControlConfig;
use crate::error::Error;

/// The engine's handles and memory, shared by its rooms.
pub(crate) struct Shared {
    pub(crate) creds: Credentials,
    pub(crate) auths: wxhub_store::Authorizers,
    pub(crate) api: WechatApi,
    pub(crate) tenants: TenantsHandle,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) cfg: TokenControlConfig,
    pub(crate) cache: Cache,
    pub(crate) memory: Memory,
}

impl Shared {
    /// The service's clock (ms).
    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The stored token of `cred`, remembered for a write-back after a loss and cached for the
    /// next readers (or dropped from the cache when there is none).
    pub(crate) async fn read_token(
        &self,
        tenant: &str,
        cred: &Credential,
    ) -> Result<Option<TokenRecord>, Error> {
        let name = cred.name();
        let record = self.creds.token(tenant, &name).await?;
        match &record {
            Some(r) => {
                self.memory.hold_token(tenant, &name, r);
                self.cache.put(tenant, cred, r);
            }
            None => self.cache.evict(tenant, cred),
        }
        Ok(record)
    }

    /// Forgets the cached and held tokens of an authorizer (revoked, or authorized anew).
    pub(crate) fn forget_authorizer(&self, tenant: &str, appid: &str) {
        self.cache
            .evict(tenant, &Credential::Authorizer(appid.to_owned()));
        self.cache
            .evict(tenant, &Credential::Jsapi(Some(appid.to_owned())));
        self.memory.forget_authorizer(tenant, appid);
    }
}
