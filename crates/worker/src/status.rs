//! WeChat's delivery reports, matched to sent jobs: `TEMPLATESENDJOBFINISH` (`Status`
//! `success`, `failed:user block`, `failed: system failed` — read by prefix) and
//! `subscribe_msg_sent_event` (`ErrorCode` 0 is success, `ErrorStatus` the text), consumed from
//! `{ns}.send-status` (bound to the events exchange) and matched by the msgid the send
//! returned (`Jobs::by_msgid`, per account).
//!
//! A report for a msgid no job holds yet is kept (`Jobs::hold_report`, a day): the send's
//! record may still be on its way, or the report belongs to a send that timed out and was
//! resent with the same `client_msg_id` (WeChat reports the one message once); the job takes
//! it when it is recorded sent. A report for a job not in `sent` (already reported,
//! replayed) changes nothing.
//!
//! **A store that does not answer loses no report.** A report whose job cannot be looked up or
//! recorded goes to the queue's delay queues (`wxhub_bus::delay`: the smallest first, longer each
//! time, at most a minute; `x-wxhub-store-failures` counts them) and its delivery is acked, as
//! a send's does. Requeued instead, it counted toward the queue's delivery limit, and an outage
//! longer than the limit spans (about 7 minutes at 20) had the broker dead-letter it: the job
//! stayed `sent` for good. Recording a report twice changes nothing, so a report of several
//! messages whose first was recorded before the failure is handled again whole.

use prost::Message as _;
use wxhub_bus::delay::{self, STORE_FAILURES_HEADER};
use wxhub_bus::{Bus, Outcome, Received};
use wxhub_message::{EventKind, Inbound, Message};
use wxhub_proto::events::v1::CallbackEvent;
use wxhub_store::Jobs;

/// How long a report waits for its job.
const HOLD: std::time::Duration = std::time::Duration::from_secs(86_400);

/// The consumer of delivery reports.
#[derive(Debug, Clone)]
pub struct DeliveryReports {
    jobs: Jobs,
    bus: Bus,
    /// The delay tiers of `queue` (`worker.report_delay_tiers()`).
    tiers: Vec<u32>,
    /// The queue it consumes (`{ns}.send-status`), whose delay queues a report waits in.
    queue: String,
}

/// One report: msgid, success, WeChat's status text.
fn reports(xml: &str) -> Vec<(i64, bool, String)> {
    let Ok(Inbound::Account(Message::Event(event))) = wxhub_message::parse(xml) else {
        return Vec::new();
    };
    match event.kind {
        EventKind::TemplateSendJobFinish {
            msg_id: Some(id),
            status,
        } => {
            let ok = status.trim().eq_ignore_ascii_case("success");
            i64::try_from(id)
                .map(|id| vec![(id, ok, status)])
                .unwrap_or_default()
        }
        EventKind::SubscribeMsgSent { items } => items
            .into_iter()
            .filter_map(|i| {
                let id = i.msg_id?.trim().parse::<i64>().ok()?;
                let code = i.error_code.as_deref().map_or("0", str::trim).to_owned();
                let status = i.error_status.unwrap_or_else(|| code.clone());
                Some((id, code == "0", status))
            })
            .collect(),
        _ => Vec::new(),
    }
}

impl DeliveryReports {
    pub fn new(jobs: Jobs, bus: Bus, tiers: Vec<u32>, queue: String) -> Self {
        Self {
            jobs,
            bus,
            tiers,
            queue,
        }
    }

    /// Handles one `CallbackEvent` carrying a delivery report.
    pub async fn handle(&self, received: Received) -> Outcome {
        let Ok(event) = CallbackEvent::decode(received.body.as_slice()) else {
            return Outcome::DeadLetter("undecodable CallbackEvent".into());
        };
        for (msgid, ok, status) in reports(&event.xml) {
            let job = match self.jobs.by_msgid(&event.tenant, &event.appid, msgid).await {
                Ok(Some(job)) => job,
                Ok(None) => {
                    if let Err(e) = self
                        .jobs
                        .hold_report(&event.tenant, &event.appid, msgid, ok, &status, HOLD)
                        .await
                    {
                        return self
                            .store_failed(&received, "keep a delivery report", &e)
                            .await;
                    }
                    metrics::counter!("wxhub_worker_delivery_reports_total", "outcome" => "held")
                        .increment(1);
                    continue;
                }
                Err(e) => {
                    return self
                        .store_failed(&received, "match a delivery report", &e)
                        .await;
                }
            };
            let now = wxhub_runtime::unix_ms();
            match self
                .jobs
                .delivered(&event.tenant, &job, ok, &status, now)
                .await
            {
                Ok(took) => {
                    let label = if !took {
                        "ignored"
                    } else if ok {
                        "delivered"
                    } else {
                        "delivery_failed"
                    };
                    metrics::counter!("wxhub_worker_delivery_reports_total", "outcome" => label)
                        .increment(1);
                }
                Err(e) => {
                    return self
                        .store_failed(&received, "record a delivery report", &e)
                        .await;
                }
            }
        }
        Outcome::Ack
    }

    /// The store failed (`what`, with `e`): the report waits in a delay queue, one more store
    /// failure counted, and this delivery is acked; requeued only if that publish fails
    /// (`delay::put_off`).
    async fn store_failed(
        &self,
        received: &Received,
        what: &str,
        e: &(dyn std::fmt::Display + Sync),
    ) -> Outcome {
        let before = delay::failures(received, STORE_FAILURES_HEADER);
        let wait = delay::store_retry(&self.tiers, before);
        tracing::warn!(failures = before + 1, error = %e, "cannot {what}; the report waits {wait:?} in a delay queue");
        metrics::counter!("wxhub_worker_deferred_total", "reason" => "report_store").increment(1);
        delay::put_off(
            &self.bus,
            &self.queue,
            &self.tiers,
            received,
            STORE_FAILURES_HEADER,
            wait,
            false,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_read_by_prefix_and_code() {
        let t = |status: &str| {
            format!(
                "<xml><ToUserName>gh_1</ToUserName><FromUserName>o1</FromUserName><CreateTime>1</CreateTime><MsgType>event</MsgType><Event>TEMPLATESENDJOBFINISH</Event><MsgID>200163836</MsgID><Status><![CDATA[{status}]]></Status></xml>"
            )
        };
        assert_eq!(
            reports(&t("success")),
            vec![(200163836, true, "success".into())]
        );
        assert!(!reports(&t("failed: system failed"))[0].1);
        let s = "<xml><ToUserName>gh_1</ToUserName><FromUserName>o1</FromUserName><CreateTime>1</CreateTime><MsgType>event</MsgType><Event>subscribe_msg_sent_event</Event><SubscribeMsgSentEvent><List><TemplateId>t</TemplateId><MsgID>77</MsgID><ErrorCode>0</ErrorCode><ErrorStatus>success</ErrorStatus></List><List><TemplateId>t</TemplateId><MsgID>78</MsgID><ErrorCode>10005</ErrorCode><ErrorStatus>fail</ErrorStatus></List></SubscribeMsgSentEvent></xml>";
        assert_eq!(
            reports(s),
            vec![(77, true, "success".into()), (78, false, "fail".into())]
        );
        assert!(reports("<xml>").is_empty());
    }
}
