//! Integration tests of wxhub-sim: real sockets on 127.0.0.1, port 0, in-process.

mod accounts_api;
mod admin;
mod auth_flow;
mod common;
mod component_api;
mod faults;
mod push;
mod release;
mod sends;
mod tokens;
