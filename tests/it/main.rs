//! Cross-service scenarios on the whole stack (see `tests/lib.rs`).

mod authorize;
mod browser;
mod cleanup;
mod config;
mod messaging;
mod pages;
mod python_consumer;
mod relay;
mod release_check;
