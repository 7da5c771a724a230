//! Web OAuth for authorized accounts (placeholder).
use crate::Shared;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
pub(crate) async fn authorize_url(State(_s): State<Arc<Shared>>) -> Response {
    ().into_response()
}
pub(crate) async fn callback(State(_s): State<Arc<Shared>>) -> Response {
    ().into_response()
}
