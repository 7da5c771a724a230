//! token-control end to end: real Redis and RabbitMQ, the simulator as WeChat, several
//! replicas in-process. Each test uses its own namespace.

mod api;
mod events;
mod failover;
#[allow(dead_code)]
mod harness;
mod lifetimes;
mod recovery;
mod refresh;
