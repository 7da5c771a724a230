/// The error classes every service reports, mapped once to HTTP and gRPC.
///
/// Services log the internal detail and return only the class plus a sanitised message, so a
/// client sees the same meaning whether it called over HTTP or gRPC, and workers can decide
/// retry versus give-up from the class alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Malformed input (bad XML, bad field, bad signature parameter form).
    BadRequest,
    /// No or unknown credentials (missing API key, bad signature).
    Unauthenticated,
    /// Known caller, but not allowed (client outside its tenants).
    PermissionDenied,
    /// Unknown tenant, appid or job.
    NotFound,
    /// The request is valid but the state does not allow it (expired or reused auth code,
    /// revoked authorizer, missing ticket).
    FailedPrecondition,
    /// A quota or rate limit was hit (WeChat 45009/45011, our own limits).
    ResourceExhausted,
    /// A dependency (Redis, RabbitMQ, WeChat) is down or slow: retry later.
    Unavailable,
    /// The request's deadline passed.
    DeadlineExceeded,
    /// A bug or an invariant violation.
    Internal,
}

impl ErrorCode {
    /// The HTTP status for this class.
    pub fn http_status(self) -> axum::http::StatusCode {
        use axum::http::StatusCode as S;
        match self {
            ErrorCode::BadRequest => S::BAD_REQUEST,
            ErrorCode::Unauthenticated => S::UNAUTHORIZED,
            ErrorCode::PermissionDenied => S::FORBIDDEN,
            ErrorCode::NotFound => S::NOT_FOUND,
            ErrorCode::FailedPrecondition => S::CONFLICT,
            ErrorCode::ResourceExhausted => S::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => S::SERVICE_UNAVAILABLE,
            ErrorCode::DeadlineExceeded => S::GATEWAY_TIMEOUT,
            ErrorCode::Internal => S::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status code for this class.
    pub fn grpc_code(self) -> tonic::Code {
        use tonic::Code as C;
        match self {
            ErrorCode::BadRequest => C::InvalidArgument,
            ErrorCode::Unauthenticated => C::Unauthenticated,
            ErrorCode::PermissionDenied => C::PermissionDenied,
            ErrorCode::NotFound => C::NotFound,
            ErrorCode::FailedPrecondition => C::FailedPrecondition,
            ErrorCode::ResourceExhausted => C::ResourceExhausted,
            ErrorCode::Unavailable => C::Unavailable,
            ErrorCode::DeadlineExceeded => C::DeadlineExceeded,
            ErrorCode::Internal => C::Internal,
        }
    }

    /// Whether a caller may retry the same request later.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Unavailable | ErrorCode::DeadlineExceeded | ErrorCode::ResourceExhausted
        )
    }

    /// A stable label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::NotFound => "not_found",
            ErrorCode::FailedPrecondition => "failed_precondition",
            ErrorCode::ResourceExhausted => "resource_exhausted",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::Internal => "internal",
        }
    }

    /// A gRPC status with this class and a (sanitised) message.
    pub fn status(self, message: impl Into<String>) -> tonic::Status {
        tonic::Status::new(self.grpc_code(), message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_map_consistently() {
        assert_eq!(ErrorCode::NotFound.http_status().as_u16(), 404);
        assert_eq!(ErrorCode::NotFound.grpc_code(), tonic::Code::NotFound);
        assert_eq!(ErrorCode::Unavailable.http_status().as_u16(), 503);
        assert!(ErrorCode::Unavailable.is_retryable());
        assert!(!ErrorCode::BadRequest.is_retryable());
        assert_eq!(
            ErrorCode::PermissionDenied.status("x").code(),
            tonic::Code::PermissionDenied
        );
    }
}
