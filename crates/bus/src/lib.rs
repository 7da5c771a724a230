//! RabbitMQ for wxhub: the topology ([`Topology`]), a connection supervisor that recovers from
//! broker restarts ([`Bus`]), a publisher that returns only after the broker confirmed the
//! message as stored and routed ([`Bus::publish`]), and a consumer loop with manual acks that
//! re-subscribes after a reconnect ([`consume`]).
//!
//! Delivery is at least once end to end: a publish that fails is reported as failed (the caller
//! answers WeChat non-2xx so it retries), an ack on a dead channel means redelivery, and every
//! message carries a `message_id` so consumers can drop the rare duplicate.
//!
//! Depends on `wxhub-domain` only (for `SecretUrl` and `ConfigError`); knows nothing about
//! WeChat. Feature `test-util` adds the test hooks `Bus::kill_connection` and `Topology::delete`
//! (dev-dependencies enable it; no production build has them).

mod bus;
mod consume;
pub mod delay;
pub mod topology;

pub use bus::{AmqpConfig, Bus, BusError, Outgoing};
pub use consume::{Outcome, Received, consume, dead_letter};
pub use topology::Topology;

/// AMQP content type of protobuf bodies.
pub const PROTOBUF: &str = "application/x-protobuf";
