//! Generated protobuf and gRPC types. The `.proto` files in `/proto` are the source of truth;
//! the Rust in `src/gen` is checked in (so builds need no `protoc`) and kept fresh by
//! `tests/bootstrap.rs` (`make proto` regenerates it).
//!
//! Features: `client` enables the gRPC clients, `server` the service traits.

#![allow(clippy::all, missing_docs, unused_qualifications, rust_2018_idioms)]

/// Bus events published by the gateway.
pub mod events {
    pub mod v1 {
        include!("gen/wxhub.events.v1.rs");
    }
}

/// Jobs published to the jobs exchange.
pub mod jobs {
    pub mod v1 {
        include!("gen/wxhub.jobs.v1.rs");
    }
}

/// token-control's gRPC API (`wxhub.token.v1.TokenControl`).
pub mod token {
    pub mod v1 {
        include!("gen/wxhub.token.v1.rs");
    }
}

/// The messaging service's gRPC API (`wxhub.messaging.v1.Messaging`), served by the worker.
pub mod messaging {
    pub mod v1 {
        include!("gen/wxhub.messaging.v1.rs");
    }
}

/// Encoded `FileDescriptorSet` of every package, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("gen/descriptor.bin");
