//! Who may open the authorization pages, and where their links point: the pages' rate limits
//! (per client address and per tenant, in Redis across replicas), the public base URL and the
//! trusted proxies. `authorize` renders the pages; this room decides, so the shared state can
//! hold it without knowing about pages.

use std::net::IpAddr;
use std::time::Duration;

use axum::http::HeaderMap;
use wxhub_store::{Decision, Limiter, Rate, Store};

use crate::config::GatewaySection;
use crate::forwarded::{self, Proxies};

/// Whether a page view may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Allowed,
    /// Over a limit (`by` is `address` or `tenant`); admitted again after `retry_after`.
    Limited {
        retry_after: Duration,
        by: &'static str,
    },
    /// The limiter cannot be asked (Redis): the pages never run unmetered.
    Unavailable,
}

/// What the pages need besides token-control: their rate limits, the public base URL and the
/// trusted proxies.
#[derive(Debug)]
pub(crate) struct Pages {
    limiter: Limiter,
    per_address: Rate,
    per_tenant: Rate,
    public_base: Option<String>,
    proxies: Proxies,
}

impl Pages {
    /// From a validated `[gateway]` section.
    pub(crate) fn new(g: &GatewaySection, store: Store) -> anyhow::Result<Self> {
        Ok(Self {
            limiter: Limiter::new(store),
            per_address: g.authorize_limit_per_address,
            per_tenant: g.authorize_limit_per_tenant,
            public_base: g.public_base()?,
            proxies: Proxies::parse(&g.trusted_proxies).map_err(anyhow::Error::msg)?,
        })
    }

    /// Takes one request of the client from both buckets, or says why not.
    pub(crate) async fn admit(
        &self,
        tenant: &str,
        page: &'static str,
        peer: Option<IpAddr>,
        headers: &HeaderMap,
    ) -> Admission {
        let client = self.proxies.client(peer, headers);
        let address = format!(
            "pages:addr:{}",
            client.map_or_else(|| "unknown".to_owned(), forwarded::subject)
        );
        let buckets = [
            (address.as_str(), self.per_address),
            ("pages:tenant", self.per_tenant),
        ];
        match self.limiter.acquire(tenant, &buckets, 1).await {
            Ok(Decision::Allowed { .. }) => Admission::Allowed,
            Ok(Decision::Limited {
                bucket,
                retry_after,
            }) => {
                let by = if bucket == 0 { "address" } else { "tenant" };
                // Debug, not info: under a flood one line per refusal would be the next drain.
                tracing::debug!(tenant, page, by, client = ?client, retry_after_ms = retry_after.as_millis() as u64, "authorization page rate-limited");
                metrics::counter!("wxhub_gateway_authorize_pages_total", "page" => page, "result" => "limited")
                    .increment(1);
                metrics::counter!("wxhub_gateway_authorize_limited_total", "page" => page, "by" => by)
                    .increment(1);
                Admission::Limited { retry_after, by }
            }
            Err(e) => {
                tracing::warn!(tenant, page, error = %e, "authorization page limiter unavailable; refusing");
                metrics::counter!("wxhub_gateway_authorize_pages_total", "page" => page, "result" => "unavailable")
                    .increment(1);
                Admission::Unavailable
            }
        }
    }

    /// The base URL links back to this gateway start with (see the module docs).
    pub(crate) fn base(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<String> {
        match &self.public_base {
            Some(base) => Some(base.clone()),
            None => self.proxies.origin(peer, headers),
        }
    }
}
