//! Cross-service scenarios on the whole stack (see `tests/lib.rs`).

mod authorize;
mod browser;
mod cleanup;
mod config;
mod pages;
mod relay;
mod release_check;
