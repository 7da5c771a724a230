//! The RabbitMQ topology (design §5), owned by this one module and declared idempotently by
//! every service at (re)connect. Every name carries the configured namespace.
//!
//! ```text
//! {ns}.events    topic   ── alternate-exchange ──► {ns}.unrouted (fanout) ──► queue {ns}.unrouted
//!   ├─ *.component.component_verify_ticket ─┐
//!   ├─ *.component.authorized ──────────────┤
//!   ├─ *.component.updateauthorized ────────┼──► queue {ns}.token-control
//!   └─ *.component.unauthorized ────────────┘
//! {ns}.jobs      direct  ── release-check ──► queue {ns}.release-check
//!                        ── send ───────────► queue {ns}.send       (single messages)
//!                        ── send-bulk ──────► queue {ns}.send-bulk  (campaigns)
//! {ns}.events ── *.*.event.templatesendjobfinish, *.*.event.subscribe_msg_sent_event ──► queue {ns}.send-status
//! {ns}.retry     direct  (delayed retry: per-delay TTL queues dead-lettering back; see `declare_retry_tier`)
//! {ns}.dead      fanout  ──► queue {ns}.dead  (poison messages and give-ups, reason in headers)
//! ```
//!
//! Work queues are durable quorum queues with a delivery limit; past it the broker dead-letters
//! to `{ns}.dead` with the at-least-once strategy (which requires `x-overflow=reject-publish`).
//! Supported brokers: RabbitMQ 3.10+ (quorum queues, at-least-once dead-lettering); tested on 3.10.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

/// The InfoTypes token-control consumes.
pub const TOKEN_CONTROL_INFO_TYPES: [&str; 4] = [
    "component_verify_ticket",
    "authorized",
    "updateauthorized",
    "unauthorized",
];

/// Routing key of release-check jobs on the jobs exchange.
pub const RELEASE_CHECK_KEY: &str = "release-check";

/// Routing key of single message jobs (the messaging service) on the jobs exchange.
pub const SEND_KEY: &str = "send";

/// Routing key of campaign message jobs: a queue of their own, so a campaign never delays a
/// single (transactional) message.
pub const SEND_BULK_KEY: &str = "send-bulk";

/// The events that report WeChat's delivery of a sent message, which the worker matches to
/// its jobs by msgid (routing kinds, `event.{lower-cased Event}`).
pub const SEND_STATUS_KINDS: [&str; 2] = [
    "event.templatesendjobfinish",
    "event.subscribe_msg_sent_event",
];

/// All names of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    ns: String,
    delivery_limit: u32,
}

impl Topology {
    /// The topology of `namespace`; work queues dead-letter after `delivery_limit` deliveries.
    pub fn new(namespace: impl Into<String>, delivery_limit: u32) -> Self {
        Self {
            ns: namespace.into(),
            delivery_limit,
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// `{ns}.events`: topic exchange of callback events.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.ns)
    }

    /// `{ns}.jobs`: direct exchange of work items.
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.ns)
    }

    /// `{ns}.retry`: direct exchange feeding the delayed-retry queues.
    pub fn retry_exchange(&self) -> String {
        format!("{}.retry", self.ns)
    }

    /// `{ns}.dead`: fanout exchange of dead letters.
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.ns)
    }

    /// `{ns}.unrouted`: the events exchange's alternate exchange.
    pub fn unrouted_exchange(&self) -> String {
        format!("{}.unrouted", self.ns)
    }

    /// `{ns}.unrouted`: queue of events no binding wanted.
    pub fn unrouted_queue(&self) -> String {
        format!("{}.unrouted", self.ns)
    }

    /// `{ns}.dead`: queue of dead letters.
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.ns)
    }

    /// `{ns}.token-control`: component notices for token-control.
    pub fn token_control_queue(&self) -> String {
        format!("{}.token-control", self.ns)
    }

    /// `{ns}.release-check`: release-check jobs.
    pub fn release_check_queue(&self) -> String {
        format!("{}.release-check", self.ns)
    }

    /// `{ns}.send`: single message jobs.
    pub fn send_queue(&self) -> String {
        format!("{}.send", self.ns)
    }

    /// `{ns}.send-bulk`: campaign message jobs.
    pub fn send_bulk_queue(&self) -> String {
        format!("{}.send-bulk", self.ns)
    }

    /// `{ns}.send-status`: delivery reports of sent messages (from `{ns}.events`).
    pub fn send_status_queue(&self) -> String {
        format!("{}.send-status", self.ns)
    }

    /// Routing key of an account event: `{tenant}.{appid}.{kind}`.
    pub fn event_key(tenant: &str, appid: &str, kind: &str) -> String {
        format!("{tenant}.{appid}.{kind}")
    }

    /// Routing key of a component notice: `{tenant}.component.{info_type}`.
    pub fn component_key(tenant: &str, info_type: &str) -> String {
        format!("{tenant}.component.{info_type}")
    }

    /// Arguments of a durable work queue: quorum, bounded redeliveries, at-least-once
    /// dead-lettering to `{ns}.dead`.
    pub fn work_queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long_string("quorum"));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(self.delivery_limit.into()),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            long_string(&self.dead_exchange()),
        );
        // At-least-once dead-lettering needs reject-publish overflow (no length limit is set,
        // so nothing is rejected in practice).
        args.insert(
            "x-dead-letter-strategy".into(),
            long_string("at-least-once"),
        );
        args.insert("x-overflow".into(), long_string("reject-publish"));
        args
    }

    /// Declares every exchange, queue and binding. Safe to run again: identical declarations are
    /// no-ops (a declaration with different arguments fails loudly, which is what we want).
    pub async fn declare(&self, ch: &Channel) -> Result<(), lapin::Error> {
        self.exchange(
            ch,
            &self.unrouted_exchange(),
            ExchangeKind::Fanout,
            FieldTable::default(),
        )
        .await?;
        let mut events_args = FieldTable::default();
        events_args.insert(
            "alternate-exchange".into(),
            long_string(&self.unrouted_exchange()),
        );
        self.exchange(
            ch,
            &self.events_exchange(),
            ExchangeKind::Topic,
            events_args,
        )
        .await?;
        self.exchange(
            ch,
            &self.jobs_exchange(),
            ExchangeKind::Direct,
            FieldTable::default(),
        )
        .await?;
        self.exchange(
            ch,
            &self.retry_exchange(),
            ExchangeKind::Direct,
            FieldTable::default(),
        )
        .await?;
        self.exchange(
            ch,
            &self.dead_exchange(),
            ExchangeKind::Fanout,
            FieldTable::default(),
        )
        .await?;

        // Terminal queues: quorum, no dead-lettering of their own.
        let mut terminal = FieldTable::default();
        terminal.insert("x-queue-type".into(), long_string("quorum"));
        self.queue(ch, &self.dead_queue(), terminal.clone()).await?;
        self.bind(ch, &self.dead_queue(), &self.dead_exchange(), "")
            .await?;
        self.queue(ch, &self.unrouted_queue(), terminal).await?;
        self.bind(ch, &self.unrouted_queue(), &self.unrouted_exchange(), "")
            .await?;

        self.queue(ch, &self.token_control_queue(), self.work_queue_args())
            .await?;
        for info_type in TOKEN_CONTROL_INFO_TYPES {
            let key = format!("*.component.{info_type}");
            self.bind(
                ch,
                &self.token_control_queue(),
                &self.events_exchange(),
                &key,
            )
            .await?;
        }
        self.queue(ch, &self.release_check_queue(), self.work_queue_args())
            .await?;
        self.bind(
            ch,
            &self.release_check_queue(),
            &self.jobs_exchange(),
            RELEASE_CHECK_KEY,
        )
        .await?;
        for (queue, key) in [
            (self.send_queue(), SEND_KEY),
            (self.send_bulk_queue(), SEND_BULK_KEY),
        ] {
            self.queue(ch, &queue, self.work_queue_args()).await?;
            self.bind(ch, &queue, &self.jobs_exchange(), key).await?;
        }
        self.queue(ch, &self.send_status_queue(), self.work_queue_args())
            .await?;
        for kind in SEND_STATUS_KINDS {
            self.bind(
                ch,
                &self.send_status_queue(),
                &self.events_exchange(),
                &format!("*.*.{kind}"),
            )
            .await?;
        }
        Ok(())
    }

    /// Declares `{queue}.retry.{delay_ms}`: messages published to the retry exchange with
    /// routing key `{queue}.{delay_ms}` wait `delay_ms` and are then dead-lettered back to
    /// `queue` through the default exchange. One queue per delay tier, so a short delay never
    /// waits behind a longer one.
    pub async fn declare_retry_tier(
        &self,
        ch: &Channel,
        queue: &str,
        delay_ms: u32,
    ) -> Result<String, lapin::Error> {
        let name = format!("{queue}.retry.{delay_ms}");
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long_string("quorum"));
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(delay_ms.into()),
        );
        args.insert("x-dead-letter-exchange".into(), long_string(""));
        args.insert("x-dead-letter-routing-key".into(), long_string(queue));
        args.insert(
            "x-dead-letter-strategy".into(),
            long_string("at-least-once"),
        );
        args.insert("x-overflow".into(), long_string("reject-publish"));
        self.queue(ch, &name, args).await?;
        self.bind(
            ch,
            &name,
            &self.retry_exchange(),
            &format!("{queue}.{delay_ms}"),
        )
        .await?;
        Ok(name)
    }

    /// Deletes every queue and exchange of the namespace (tests clean up with this). A test
    /// hook: feature `test-util`, enabled by dev-dependencies only, so no production build can
    /// delete a namespace's queues.
    #[cfg(feature = "test-util")]
    pub async fn delete(&self, ch: &Channel, extra_queues: &[String]) -> Result<(), lapin::Error> {
        use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
        let queues = [
            self.token_control_queue(),
            self.release_check_queue(),
            self.send_queue(),
            self.send_bulk_queue(),
            self.send_status_queue(),
            self.unrouted_queue(),
            self.dead_queue(),
        ];
        for q in queues.iter().chain(extra_queues) {
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        for e in [
            self.events_exchange(),
            self.jobs_exchange(),
            self.retry_exchange(),
            self.dead_exchange(),
            self.unrouted_exchange(),
        ] {
            ch.exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }

    async fn exchange(
        &self,
        ch: &Channel,
        name: &str,
        kind: ExchangeKind,
        args: FieldTable,
    ) -> Result<(), lapin::Error> {
        let options = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(name.into(), kind, options, args).await
    }

    async fn queue(&self, ch: &Channel, name: &str, args: FieldTable) -> Result<(), lapin::Error> {
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(name.into(), options, args)
            .await
            .map(|_| ())
    }

    async fn bind(
        &self,
        ch: &Channel,
        queue: &str,
        exchange: &str,
        key: &str,
    ) -> Result<(), lapin::Error> {
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            ShortString::from(key),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
    }
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}
