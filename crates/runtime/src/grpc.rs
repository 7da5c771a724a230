//! How every wxhub gRPC service admits a call: the client's API key from
//! `authorization: Bearer <key>` is authenticated against the tenants file, the tenant id is
//! validated, and the tenant must be one of the client's — in that order, so an unknown key
//! learns nothing about tenants, and a client learns only about its own tenants. Written once
//! here and used by token-control and the worker's messaging service alike.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Status};
use wxhub_domain::{AccessError, Client, Tenant, Tenants};

/// Metadata key carrying `Bearer <api key>`.
pub const AUTH_HEADER: &str = "authorization";

/// The authenticated client of `req`.
pub fn client<T>(tenants: &Tenants, req: &Request<T>) -> Result<Arc<Client>, Status> {
    let key = req
        .metadata()
        .get(AUTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            Status::unauthenticated("missing API key: send `authorization: Bearer <api key>`")
        })?;
    tenants
        .authenticate(key)
        .cloned()
        .ok_or_else(|| Status::unauthenticated("unknown API key"))
}

/// Authenticates `req`'s client and admits it to `tenant`: UNAUTHENTICATED (no or unknown
/// key), INVALID_ARGUMENT (malformed tenant id), PERMISSION_DENIED (not one of the client's
/// tenants), NOT_FOUND (no such tenant).
pub fn admit<T>(tenants: &Tenants, req: &Request<T>, tenant: &str) -> Result<Arc<Tenant>, Status> {
    let authorization = req
        .metadata()
        .get(AUTH_HEADER)
        .and_then(|v| v.to_str().ok());
    tenants
        .admit(authorization, tenant)
        .map(|admitted| admitted.tenant)
        .map_err(|e| status_of(&e))
}

/// The gRPC status of a refused admission (the relay maps the same errors to HTTP).
pub fn status_of(e: &AccessError) -> Status {
    let message = e.to_string();
    match e {
        AccessError::MissingKey | AccessError::UnknownKey => Status::unauthenticated(message),
        AccessError::BadTenant => Status::invalid_argument(message),
        AccessError::Forbidden { .. } => Status::permission_denied(message),
        AccessError::UnknownTenant(_) => Status::not_found(message),
    }
}

/// The server every wxhub gRPC service runs: an `rpc` span per call continuing the caller's
/// trace, a bound of `request_timeout` plus a second on each call (the handler's own deadline
/// answers first), HTTP/2 keepalive pings every 30 s.
pub fn server(request_timeout: Duration) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .trace_fn(crate::telemetry::rpc_span)
        .timeout(request_timeout + Duration::from_secs(1))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
}

/// The connections of `listener` as every gRPC service accepts them: TCP_NODELAY (small
/// responses must not wait on Nagle + delayed ACK, ~40 ms) and TCP keepalive.
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}

/// The caller's deadline from `grpc-timeout` (`<digits><H|M|S|m|u|n>`), if it sent one.
pub fn grpc_timeout<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wxhub_domain::api_key_sha256;

    fn tenants() -> Tenants {
        Tenants::from_toml(&format!(
            r#"
[[tenants]]
id = "acme"
kind = "official_account"
app_id = "wx0acme"
app_secret = "s"
token = "t"
encoding_aes_key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"

[[clients]]
name = "shop"
api_key_sha256 = "{}"
tenants = ["acme"]
"#,
            api_key_sha256("k1")
        ))
        .unwrap()
    }

    fn req(key: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(k) = key {
            r.metadata_mut()
                .insert(AUTH_HEADER, format!("Bearer {k}").parse().unwrap());
        }
        r
    }

    #[test]
    fn admits_in_order() {
        let t = tenants();
        assert_eq!(
            admit(&t, &req(None), "acme").unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            admit(&t, &req(Some("k2")), "acme").unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            admit(&t, &req(Some("k1")), "A!").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            admit(&t, &req(Some("k1")), "beta").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            admit(&t, &req(Some("k1")), "acme").unwrap().id.as_str(),
            "acme"
        );
    }

    #[test]
    fn grpc_timeout_parses_every_unit() {
        let with = |v: &str| {
            let mut r = Request::new(());
            r.metadata_mut().insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&r)
        };
        assert_eq!(with("2S"), Some(Duration::from_secs(2)));
        assert_eq!(with("150m"), Some(Duration::from_millis(150)));
        assert_eq!(with("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(with("5u"), Some(Duration::from_micros(5)));
        assert_eq!(with("x"), None);
        assert_eq!(with("10Q"), None);
        assert_eq!(grpc_timeout(&Request::new(())), None);
    }
}
