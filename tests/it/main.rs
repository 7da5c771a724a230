//! Cross-service scenarios on the whole stack (see `tests/lib.rs`).

mod config;
mod release_check;
