//! Integration tests of the gateway against the real Redis and RabbitMQ (`make services`), each
//! in its own namespace, the gateway in-process on port 0.

mod bad_input;
mod binary;
mod broker;
mod collisions;
mod common;
mod delivery;
mod forgery;
mod modes;
mod ops;
mod release;
mod sim;
