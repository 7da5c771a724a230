//! Why a callback was not acknowledged, and the HTTP answer for it.
//!
//! Two classes: a [`Failure::Reject`] is bad input (a 4xx; nothing was stored or changed; a
//! retry of the same request fails the same way) and a [`Failure::Unavailable`] means "not
//! stored, try again" (503, so WeChat retries). Reasons are short stable labels used as metric
//! label values; details are for the log and never contain secrets or the body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use wxhub_crypto::CryptoError;
use wxhub_message::MessageError;

#[derive(Debug)]
pub(crate) enum Failure {
    Reject {
        status: StatusCode,
        reason: &'static str,
        detail: String,
    },
    Unavailable {
        reason: &'static str,
        detail: String,
    },
}

impl Failure {
    pub(crate) fn reject(
        status: StatusCode,
        reason: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Failure::Reject {
            status,
            reason,
            detail: detail.into(),
        }
    }

    /// 400: malformed input.
    pub(crate) fn bad(reason: &'static str, detail: impl Into<String>) -> Self {
        Self::reject(StatusCode::BAD_REQUEST, reason, detail)
    }

    /// 401: missing or wrong signature, stale timestamp.
    pub(crate) fn unauthenticated(reason: &'static str, detail: impl Into<String>) -> Self {
        Self::reject(StatusCode::UNAUTHORIZED, reason, detail)
    }

    /// 404: no such tenant, or not this kind of tenant on this route.
    pub(crate) fn not_found(reason: &'static str, detail: impl Into<String>) -> Self {
        Self::reject(StatusCode::NOT_FOUND, reason, detail)
    }

    /// 503: not stored; WeChat retries.
    pub(crate) fn unavailable(reason: &'static str, detail: impl Into<String>) -> Self {
        Failure::Unavailable {
            reason,
            detail: detail.into(),
        }
    }

    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Failure::Reject { reason, .. } | Failure::Unavailable { reason, .. } => reason,
        }
    }

    pub(crate) fn detail(&self) -> &str {
        match self {
            Failure::Reject { detail, .. } | Failure::Unavailable { detail, .. } => detail,
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Failure::Reject { status, .. } => *status,
            Failure::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<CryptoError> for Failure {
    fn from(e: CryptoError) -> Self {
        match &e {
            CryptoError::Signature => Failure::unauthenticated("signature", e.to_string()),
            // The ciphertext decrypted under this tenant's key but names another app: a
            // callback for (or forged with the key of) someone else.
            CryptoError::AppId { .. } => {
                Failure::reject(StatusCode::FORBIDDEN, "appid", e.to_string())
            }
            CryptoError::Base64 => Failure::bad("base64", e.to_string()),
            CryptoError::CiphertextLength(_) => Failure::bad("length", e.to_string()),
            CryptoError::Padding => Failure::bad("padding", e.to_string()),
            CryptoError::Buffer(_) => Failure::bad("buffer", e.to_string()),
            CryptoError::Xml(_) => Failure::bad("xml", e.to_string()),
            CryptoError::AesKey(_) | CryptoError::ReturnXml(_) => {
                Failure::unavailable("internal", e.to_string())
            }
        }
    }
}

impl From<MessageError> for Failure {
    fn from(e: MessageError) -> Self {
        let reason = match &e {
            MessageError::NotUtf8 => "utf8",
            MessageError::TooLarge { .. } => {
                return Failure::reject(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string());
            }
            MessageError::TooDeep { .. } | MessageError::TooManyElements { .. } => {
                "xml_too_complex"
            }
            MessageError::DocType | MessageError::Entity(_) => "xml_dtd",
            MessageError::Malformed(_) => "xml_malformed",
            MessageError::MissingField(_) | MessageError::BadField { .. } => "xml_field",
        };
        Failure::bad(reason, e.to_string())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = match &self {
            Failure::Reject { reason, .. } => format!("rejected: {reason}\n"),
            Failure::Unavailable { reason, .. } => format!("unavailable: {reason}; retry later\n"),
        };
        (self.status(), body).into_response()
    }
}
