//! The service's notion of "now" for token expiry, schedules and ticket age: the shared
//! [`wxhub_runtime::clock`] types, re-exported so `wxhub_token_control::{Clock, FnClock,
//! SystemClock}` keep working. Injectable so the tests and the scale benchmark run on the
//! simulator's virtual clock instead of sleeping. (Lease TTLs are measured by Redis in real time;
//! they are about process liveness.)

pub use wxhub_runtime::clock::{Clock, FnClock, SystemClock};
