//! The fault-injection suite (`make chaos`; a short run of some scenarios is part of `make
//! test`). Each scenario runs load through the real binaries (`wxhub-gateway`,
//! `wxhub-token-control`, `wxhub-worker`; wxhub-sim playing WeChat, wxhub-loadgen posting
//! callbacks), injects one fault, prints one line of figures, and checks from the broker and
//! Redis what the system promised. One module per scenario; process control and the shared
//! world in `harness`.
//!
//! - `broker_nodes` (1): RabbitMQ cluster nodes killed and paused under callback load — needs
//!   the local cluster (`WXHUB_TEST_AMQP_URLS`, set by the Makefile after
//!   `scripts/rabbitmq-cluster.sh start`): without it that test fails, it is not skipped.
//! - `worker_killed` (4a): a worker replica SIGKILLed between its sends and their acks.
//! - `gateway_killed` (4b): the gateway SIGKILLed mid-publish.
//! - `redis_failover` (2a): the Redis Cluster primary of a tenant's slot SIGKILLed during
//!   refreshes and callback dedupe (a cluster of its own, `scripts/redis-cluster.sh`).
//! - `redis_restarted` (2b): a private single `redis-server` restarted empty under load.
//! - `network` (5): the gateway's broker link, token-control's Redis link and a sending
//!   worker's Redis link slowed, reset and blackholed through the test kit's fault proxy.
//! - `partition` (5): the gateway partitioned from the broker with a network namespace and veth
//!   links (`ip netns`; root).
//! - `token_control_killed` (3): token-control replicas SIGKILLed and SIGSTOPped past their
//!   lease while a refresh is in flight.
//!
//! The others run on whatever broker the suite is given (the local cluster under `make chaos`,
//! the machine's broker otherwise) and the machine's Redis, isolated by namespace.
//! `WXHUB_CHAOS_FULL=1` (`make chaos`) makes the load longer.

#![allow(clippy::print_stdout)] // the figures of a run are its output

mod broker_nodes;
mod gateway_killed;
mod harness;
mod network;
mod partition;
mod redis_failover;
mod redis_restarted;
mod token_control_killed;
mod tokens;
mod worker_killed;
