//! Cross-service scenarios on the whole stack (see `tests/lib.rs`).

mod release_check;
