//! The feeder: what waits in Redis and reaches the broker a window at a time — campaign
//! slices (to `{ns}.send-bulk`) and the single messages a tenant enqueued over its window (to
//! `{ns}.send`). One loop, every `worker.campaign_tick_ms`, over the tenants with work
//! (`wxhub_store::busy`: those with held jobs or campaigns), and over every tenant at its first
//! tick and every [`FULL_PASS`] after, for work whose tenant a writer failed to mark; 32
//! tenants at a time, so neither a long pass nor one slow feed holds the others up.
//!
//! Guarantees of held single messages:
//! - **A tenant's backlog never stands in front of another tenant.** At most
//!   `worker.tenant_window` (W) of a tenant's single messages are announced and not final at
//!   once (`wxhub_store::jobs`); the rest are held in Redis in arrival order. A quiet tenant's
//!   first job is therefore behind at most W jobs of each other tenant in `{ns}.send`, however
//!   many millions they hold.
//! - **Held is stored, and fed.** Each tick one replica per tenant (a guard key) moves held
//!   jobs into the freed part of the window and announces them (confirmed); ids stay in the
//!   tenant's feeding list until their publish is confirmed, so a feeder that stops mid-feed
//!   leaves them for the next (announced twice at worst; the claim sends once). A feed goes
//!   out `worker.announce_batch` jobs to a message.
//!
//! Guarantees of campaigns (one template or subscribe message to many recipients, fed at the
//! account's allowed rate instead of all at once):
//! - **Never a flood.** Every `worker.campaign_tick_ms` one replica per campaign (a guard key)
//!   feeds at most the account's rate for that tick (`[worker.limits]` of the message's
//!   kind), and never more than `2 × burst` jobs in flight (fed, not settled): the broker holds
//!   a bounded window, not 100,000 messages.
//! - **Never in the way of single messages.** Campaign jobs go to `{ns}.send-bulk`, consumed
//!   by handlers of their own (`worker.bulk_concurrency`), and share the account's limiter
//!   buckets with single messages, which the limiter serves in arrival order.
//! - Each recipient is fed (`Campaigns::take` leases a slice until it is reported fed; a slice
//!   whose feeder failed or died is taken again, its jobs found by their idempotency keys); pause and
//!   cancel take effect at the next slice; jobs already fed still go out.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use wxhub_bus::Bus;
use wxhub_bus::topology::{SEND_BULK_KEY, SEND_KEY};
use wxhub_proto::jobs::v1::SendJob;
use wxhub_runtime::TenantsHandle;
use wxhub_store::jobs::new_id;
use wxhub_store::{
    BusyTenants, CampaignRecipient, CampaignRecord, Campaigns, Created, Jobs, NewJob, Rate,
};

use crate::announce::{self, new_route, send_job};
use crate::config::Limits;
use crate::delivery::route_of;

/// The body of one recipient's message: the campaign's body with its `touser` and the
/// recipient's data overrides.
pub fn recipient_body(body: &Map<String, Value>, r: &CampaignRecipient) -> Map<String, Value> {
    let mut out = body.clone();
    out.insert("touser".into(), json!(r.touser));
    if !r.data.is_empty() {
        let mut data = out
            .get("data")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (k, v) in &r.data {
            let entry = data.entry(k.clone()).or_insert_with(|| json!({}));
            match entry {
                Value::Object(o) => {
                    o.insert("value".into(), json!(v));
                }
                other => *other = json!({ "value": v }),
            }
        }
        out.insert("data".into(), Value::Object(data));
    }
    out
}

/// How long a campaign slice is leased to the feeder that took it: far above the time to store
/// and announce one slice (at most twice the burst), short enough that a failed slice is fed
/// again within seconds.
const SLICE_LEASE: Duration = Duration::from_secs(10);

/// A feed's messages (of up to `worker.announce_batch` jobs) awaiting their confirms at once.
const FEED_MESSAGES: usize = 4;

/// How often the feeder visits every tenant, not only the marked ones: a writer that stopped
/// between storing work and marking its tenant delays that work by at most this.
pub const FULL_PASS: Duration = Duration::from_secs(60);

/// Counter: tenants the feeder visited (read their held jobs and campaigns).
pub const VISITS: &str = "wxhub_worker_feeder_visits_total";

/// Tenants a tick visits at once.
const VISITS_AT_ONCE: usize = 32;

/// Feeds every running campaign and every tenant's held jobs.
pub struct Feeder {
    pub tenants: TenantsHandle,
    pub campaigns: Campaigns,
    pub jobs: Jobs,
    /// The tenants with work (visited every tick).
    pub busy: BusyTenants,
    pub bus: Bus,
    pub limits: Limits,
    pub tick: Duration,
    /// Jobs to a message (`worker.announce_batch`).
    pub batch: usize,
}

impl std::fmt::Debug for Feeder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feeder").finish_non_exhaustive()
    }
}

impl Feeder {
    /// Runs until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut last_full: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.tick) => {}
            }
            let full = last_full.is_none_or(|at| at.elapsed() >= FULL_PASS);
            let configured = self.tenants.current();
            let marked = match self.busy.list().await {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the tenants with work; visiting every tenant");
                    None
                }
            };
            let every = full || marked.is_none();
            let marked: std::collections::HashSet<String> =
                marked.unwrap_or_default().into_iter().collect();
            let tenants: Vec<String> = configured
                .iter()
                .map(|t| t.id.as_str())
                .filter(|id| every || marked.contains(*id))
                .map(str::to_owned)
                .collect();
            if full {
                last_full = Some(tokio::time::Instant::now());
            }
            // Tenants are visited VISITS_AT_ONCE at a time: one after another, a full pass over
            // thousands of tenants held up the busy ones' feeds for seconds, and a tenant whose
            // feed waited on the broker held up every tenant after it.
            let this: &Self = &self;
            futures::stream::iter(tenants)
                .for_each_concurrent(VISITS_AT_ONCE, |tenant| {
                    let was_marked = marked.contains(&tenant);
                    async move { this.visit_and_mark(&tenant, was_marked).await }
                })
                .await;
        }
    }

    /// Visits `tenant` and keeps its mark true to what the visit found.
    async fn visit_and_mark(&self, tenant: &str, was_marked: bool) {
        metrics::counter!(VISITS).increment(1);
        let busy = self.visit(tenant).await;
        if busy && !was_marked {
            // Work a writer stored without marking it (found by the full pass).
            if let Err(e) = self.busy.mark(tenant).await {
                tracing::warn!(tenant, error = %e, "cannot mark a tenant with work");
            }
        } else if !busy && was_marked {
            self.unmark(tenant).await;
        }
    }

    /// Feeds `tenant`'s held jobs and campaigns; true if it has any left to feed (or could
    /// not be read: it stays marked).
    async fn visit(&self, tenant: &str) -> bool {
        let held = match self.feed_held(tenant).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(tenant, error = e, "cannot feed the held jobs");
                true
            }
        };
        let active = match self.campaigns.active(tenant).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(tenant, error = %e, "cannot list campaigns");
                return true;
            }
        };
        for id in &active {
            if let Err(e) = self.feed(tenant, id).await {
                tracing::warn!(tenant, campaign = id, error = e, "cannot feed the campaign");
            }
        }
        held || !active.is_empty()
    }

    /// Drops `tenant` from the marked ones, then reads its work again and marks it back if
    /// any was stored meanwhile (the order `wxhub_store::busy` relies on).
    async fn unmark(&self, tenant: &str) {
        if let Err(e) = self.busy.unmark(tenant).await {
            tracing::warn!(tenant, error = %e, "cannot unmark an idle tenant");
            return;
        }
        let counts = self.jobs.window_counts(tenant).await;
        let active = self.campaigns.active(tenant).await;
        let idle = matches!(counts, Ok((0, _, 0))) && matches!(&active, Ok(a) if a.is_empty());
        if !idle && let Err(e) = self.busy.mark(tenant).await {
            tracing::warn!(tenant, error = %e, "cannot mark a tenant with work back; the full pass finds it");
        }
    }

    /// Announces the held jobs of `tenant` that fit its window (and any a stopped feeder left),
    /// if this replica holds the tenant's guard this tick.
    /// Returns whether it has held (or feeding) jobs, fed or not.
    async fn feed_held(&self, tenant: &str) -> Result<bool, String> {
        if self.jobs.tenant_window() == 0 {
            return Ok(false);
        }
        let (held, _, feeding) = self
            .jobs
            .window_counts(tenant)
            .await
            .map_err(|e| e.to_string())?;
        if held == 0 && feeding == 0 {
            return Ok(false);
        }
        if !self
            .jobs
            .claim_feed(tenant, self.tick)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(true);
        }
        let ids = self
            .jobs
            .take_held(tenant, wxhub_runtime::unix_ms())
            .await
            .map_err(|e| e.to_string())?;
        // Their routes (one round trip for the batch), so that each sender claims without a
        // read. Without them (a failed read) the senders read the jobs themselves.
        let routes = self.jobs.routes(tenant, &ids).await.unwrap_or_default();
        let announced: Vec<SendJob> = ids
            .iter()
            .zip(routes.into_iter().map(Some).chain(std::iter::repeat(None)))
            .map(|(id, record)| send_job(tenant, id, record.flatten().as_ref().map(route_of)))
            .collect();
        let mut fed = Vec::with_capacity(announced.len());
        let mut failed = None;
        for (jobs, r) in
            announce::publish_all(&self.bus, SEND_KEY, announced, self.batch, FEED_MESSAGES).await
        {
            match r {
                Ok(()) => fed.extend(jobs.into_iter().map(|j| j.job_id)),
                Err(e) => failed = Some(e.to_string()),
            }
        }
        metrics::counter!("wxhub_worker_held_fed_total").increment(fed.len() as u64);
        self.jobs
            .fed(tenant, &fed)
            .await
            .map_err(|e| e.to_string())?;
        // The unconfirmed stay in the feeding list for the next tick.
        failed.map_or(Ok(true), Err)
    }

    fn rate(&self, kind: &str) -> Rate {
        match kind {
            "template" => self.limits.template,
            _ => self.limits.subscribe,
        }
    }

    /// Feeds one tick's slice of campaign `id` (if this replica holds its guard).
    async fn feed(&self, tenant: &str, id: &str) -> Result<(), String> {
        if !self
            .campaigns
            .claim_tick(tenant, id, self.tick)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(());
        }
        let tick_ms = u64::try_from(self.tick.as_millis()).unwrap_or(1000);
        let Some(c) = self
            .campaigns
            .get(tenant, id)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        if c.state != "running" {
            return Ok(());
        }
        let rate = self.rate(&c.kind);
        let per_tick = (u64::from(rate.count) * tick_ms / rate.period_ms.max(1)).max(1);
        let window = u64::from(rate.burst) * 2;
        let room = window.saturating_sub(c.in_flight());
        let n = per_tick.min(room);
        if n == 0 {
            return Ok(());
        }
        let Some((first, slice)) = self
            .campaigns
            .take(
                tenant,
                id,
                usize::try_from(n).unwrap_or(1),
                wxhub_runtime::unix_ms(),
                SLICE_LEASE,
            )
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        // Reported fed only once every job of the slice is stored and announced: a slice whose
        // feeder fails or dies is handed out again when its lease runs out.
        self.enqueue(&c, first, &slice).await?;
        self.campaigns
            .fed(tenant, id, first)
            .await
            .map_err(|e| e.to_string())
    }

    async fn enqueue(
        &self,
        c: &CampaignRecord,
        first: u64,
        slice: &[CampaignRecipient],
    ) -> Result<(), String> {
        let body: Map<String, Value> = serde_json::from_str(&c.body).map_err(|e| e.to_string())?;
        let now = wxhub_runtime::unix_ms();
        // The slice's jobs are stored by one create script call per hundred (each as if alone),
        // then announced, `worker.announce_batch` jobs to a message.
        let jobs: Vec<NewJob> = slice
            .iter()
            .enumerate()
            .map(|(i, r)| job_of(c, &body, first + i as u64, r, now))
            .collect();
        let created = self
            .jobs
            .create_all(&c.tenant, &jobs, false)
            .await
            .map_err(|e| e.to_string())?;
        let announced: Vec<SendJob> = jobs
            .iter()
            .zip(created)
            .filter_map(|(job, created)| {
                let id = match created {
                    // Campaign jobs are outside the tenant window: never held.
                    Created::New | Created::Held => job.id.clone(),
                    // An existing job of this recipient index has the same route.
                    Created::Existing(existing) => existing,
                    // Not asked for (the campaign's account was checked when it was created).
                    Created::UnknownAccount | Created::RevokedAccount | Created::OverHeld => {
                        return None;
                    }
                };
                Some(send_job(&c.tenant, &id, Some(new_route(job))))
            })
            .collect();
        for (_, r) in announce::publish_all(
            &self.bus,
            SEND_BULK_KEY,
            announced,
            self.batch,
            FEED_MESSAGES,
        )
        .await
        {
            r.map_err(|e| e.to_string())?;
        }
        metrics::counter!("wxhub_worker_campaign_fed_total").increment(slice.len() as u64);
        Ok(())
    }
}

/// The job of campaign `c`'s recipient `index` (`r`): `body` with `r`'s overrides. The
/// recipient's index is the job's idempotency key, so a slice fed again after a crash finds the
/// jobs it made (and re-announces them; the claim sends each once).
fn job_of(
    c: &CampaignRecord,
    body: &Map<String, Value>,
    index: u64,
    r: &CampaignRecipient,
    now: i64,
) -> NewJob {
    let id = new_id(&c.tenant, now);
    let mut b = recipient_body(body, r);
    if c.kind == "template" {
        b.insert("client_msg_id".into(), json!(id));
    }
    NewJob {
        id,
        appid: c.appid.clone(),
        kind: c.kind.clone(),
        api: c.api.clone(),
        touser: r.touser.clone(),
        body: Value::Object(b).to_string(),
        idempotency_key: Some(format!("campaign:{}:{index}", c.id)),
        campaign: Some(c.id.clone()),
        now_ms: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_values_and_keep_colours() {
        let body: Map<String, Value> = serde_json::from_str(
            r##"{"touser":"x","template_id":"t","data":{"a":{"value":"1","color":"#000000"},"b":{"value":"2"}}}"##,
        )
        .unwrap();
        let r = CampaignRecipient {
            touser: "o2".into(),
            data: [
                ("a".to_owned(), "9".to_owned()),
                ("c".to_owned(), "3".to_owned()),
            ]
            .into(),
        };
        let out = recipient_body(&body, &r);
        assert_eq!(out["touser"], "o2");
        assert_eq!(out["data"]["a"], json!({"value": "9", "color": "#000000"}));
        assert_eq!(out["data"]["b"]["value"], "2");
        assert_eq!(out["data"]["c"]["value"], "3");
    }
}
