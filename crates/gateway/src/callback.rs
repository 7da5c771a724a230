//! The WeChat-facing routes (design §4) and the POST pipeline:
//!
//! size limit → tenant lookup → signature (`signature`, and `msg_signature` over `Encrypt` when
//! encrypted) → plaintext policy → timestamp window → decrypt (current key, then previous) with
//! the appid/corpid check → parse XML → `CreateTime` skew → plaintext (timestamp, nonce) binding
//! → release-check responder → dedupe → publish with confirm → reply.
//!
//! What proves a body: in safe and compatible mode the `msg_signature` over the ciphertext (and
//! only the ciphertext is trusted). Plaintext mode signs token, timestamp and nonce only, a
//! triple that leaks through every access log and stays valid for the whole window; so it is
//! accepted only from an Official Account that opted in (`plaintext = true`: WeChat always
//! encrypts for third-party platforms and WeCom), and a pair vouches for the first body it
//! carried only (`wxhub_store::nonces`, in Redis — without Redis a plaintext callback gets 503).
//!
//! No ordering field downstream may be pushed into the future by one message: a `CreateTime`
//! more than `gateway.max_future_skew_secs` ahead of the gateway's clock is refused.
//!
//! Everything runs under the `gateway.deadline_ms` budget; past it the answer is 503.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tracing::Instrument;
use wxhub_crypto::{Crypt, KeySlot, random_nonce};
use wxhub_message::{Inbound, Message, Reply, encrypted_envelope, parse_envelope};
use wxhub_runtime::{AppId, Tenant, TenantKind};
use wxhub_store::nonces::Binding;

use crate::delivery::{DedupeKey, Delivered, Publication, deliver};
use crate::event::{self, CALLBACK_EVENT_TYPE, Meta, Mode, RELEASE_CHECK_JOB_TYPE};
use crate::failure::Failure;
use crate::meter as m;
use crate::params::{Params, parse_timestamp};
use crate::release::{self, Step};
use crate::state::{AppState, Shared};

/// Longest accepted `echostr`.
const MAX_ECHOSTR: usize = 4096;

/// The callback routes, to be merged with other `Router<AppState>` routes and given the state.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/wx/{tenant}/component", get(component).post(component))
        .route(
            "/wx/{tenant}/callback/{appid}",
            get(authorizer).post(authorizer),
        )
        .route("/wx/{tenant}/callback", get(direct).post(direct))
}

/// Which of the three callback URLs was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `/wx/{tenant}/component`: a component's authorization-event URL.
    Component,
    /// `/wx/{tenant}/callback/{appid}`: a component's message URL for an authorizer.
    Authorizer,
    /// `/wx/{tenant}/callback`: a directly configured Official Account or WeCom app.
    Direct,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Component => "component",
            Route::Authorizer => "authorizer",
            Route::Direct => "direct",
        }
    }

    fn accepts(self, kind: TenantKind) -> bool {
        match self {
            Route::Component | Route::Authorizer => kind == TenantKind::Component,
            Route::Direct => matches!(kind, TenantKind::OfficialAccount | TenantKind::Wecom),
        }
    }
}

/// What the request asked for, before any validation.
struct Request {
    route: Route,
    method: Method,
    tenant: Result<String, PathRejection>,
    appid: Option<String>,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
}

async fn component(
    State(state): State<AppState>,
    method: Method,
    tenant: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(
        state,
        Request {
            route: Route::Component,
            method,
            tenant: tenant.map(|Path(t)| t),
            appid: None,
            query,
            headers,
            body,
        },
    )
    .await
}

async fn authorizer(
    State(state): State<AppState>,
    method: Method,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (tenant, appid) = match path {
        Ok(Path((t, a))) => (Ok(t), Some(a)),
        Err(e) => (Err(e), None),
    };
    handle(
        state,
        Request {
            route: Route::Authorizer,
            method,
            tenant,
            appid,
            query,
            headers,
            body,
        },
    )
    .await
}

async fn direct(
    State(state): State<AppState>,
    method: Method,
    tenant: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(
        state,
        Request {
            route: Route::Direct,
            method,
            tenant: tenant.map(|Path(t)| t),
            appid: None,
            query,
            headers,
            body,
        },
    )
    .await
}

/// A successful answer.
enum Answer {
    /// `success`, text/plain.
    Success,
    /// Zero bytes ("no reply"; WeCom's acknowledgement).
    Empty,
    /// A passive reply (encrypted envelope or plaintext XML).
    Xml(String),
    /// A URL-verification echo.
    Echo(String),
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let text = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
        match self {
            Answer::Success => (text, "success").into_response(),
            Answer::Empty => (text, "").into_response(),
            Answer::Echo(s) => (text, s).into_response(),
            Answer::Xml(xml) => (
                [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
                xml,
            )
                .into_response(),
        }
    }
}

async fn handle(state: AppState, req: Request) -> Response {
    let started = Instant::now();
    let route = req.route.label();
    let method = if req.method == Method::GET {
        "GET"
    } else {
        "POST"
    };
    let shared = state.shared;
    // A span per callback costs a registry entry even when nothing is logged: at debug level
    // unless spans are exported (then at info, so the trace reaches the collector).
    let span = if shared.export_spans {
        tracing::info_span!("callback", route, method, tenant = tracing::field::Empty)
    } else {
        tracing::debug_span!("callback", route, method, tenant = tracing::field::Empty)
    };
    m::inflight(1.0);
    let result = async {
        if req.method == Method::GET {
            verify_url(&shared, req).await
        } else {
            post(&shared, req, started).await
        }
    }
    .instrument(span.clone())
    .await;
    m::inflight(-1.0);
    let elapsed = started.elapsed();
    m::handled(route, elapsed);
    match result {
        Ok((answer, outcome)) => {
            m::request(route, method, outcome);
            tracing::debug!(parent: &span, outcome, elapsed_ms = elapsed.as_millis() as u64, "callback handled");
            answer.into_response()
        }
        Err(failure) => {
            match &failure {
                Failure::Reject { .. } => {
                    m::request(route, method, "rejected");
                    m::reject(route, failure.reason());
                    tracing::warn!(parent: &span, status = failure.status().as_u16(), reason = failure.reason(), detail = failure.detail(), "callback rejected");
                }
                Failure::Unavailable { .. } => {
                    m::request(route, method, "unavailable");
                    m::unavailable(route, failure.reason());
                    tracing::warn!(parent: &span, reason = failure.reason(), detail = failure.detail(), elapsed_ms = elapsed.as_millis() as u64, "callback not stored; answering 503 so WeChat retries");
                }
            }
            failure.into_response()
        }
    }
}

/// Tenant lookup and route check.
fn lookup(
    shared: &Shared,
    route: Route,
    tenant: &Result<String, PathRejection>,
) -> Result<Arc<Tenant>, Failure> {
    let id = tenant
        .as_ref()
        .map_err(|_| Failure::not_found("unknown_tenant", "unreadable tenant in the path"))?;
    let tenants = shared.tenants.current();
    let Some(tenant) = tenants.get(id) else {
        return Err(Failure::not_found(
            "unknown_tenant",
            format!("no tenant {:?}", truncate(id)),
        ));
    };
    if !route.accepts(tenant.kind) {
        return Err(Failure::not_found(
            "wrong_kind",
            format!(
                "tenant {} is kind {}; route {} is not for it",
                tenant.id,
                tenant.kind.as_str(),
                route.label()
            ),
        ));
    }
    tracing::Span::current().record("tenant", tenant.id.as_str());
    Ok(tenant.clone())
}

/// An authorizer appid from the path, by the one appid rule ([`AppId`]).
fn check_appid(appid: Option<&str>) -> Result<&str, Failure> {
    let appid = appid.unwrap_or_default();
    match AppId::parse(appid) {
        Ok(_) => Ok(appid),
        Err(e) => Err(Failure::bad("bad_appid", format!("authorizer {e}"))),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

fn missing(name: &'static str) -> Failure {
    Failure::bad(
        "missing_param",
        format!("query parameter {name} is missing"),
    )
}

/// The request's `timestamp` (WeChat's send time: real time, so the system clock) within the
/// window; returns it.
fn check_window(shared: &Shared, timestamp: &str) -> Result<i64, Failure> {
    let ts = parse_timestamp(timestamp)
        .ok_or_else(|| Failure::bad("bad_timestamp", "timestamp is not unix seconds"))?;
    let now = wxhub_runtime::unix_ms() / 1000;
    if (now - ts).abs() > shared.window_secs {
        return Err(Failure::unauthenticated(
            "timestamp",
            format!(
                "timestamp is {} s away from now (window {} s)",
                now - ts,
                shared.window_secs
            ),
        ));
    }
    Ok(ts)
}

/// Plaintext mode is for Official Accounts that opted in; WeChat encrypts every third-party
/// platform callback (and WeCom's, which never get here unencrypted).
fn check_plaintext(tenant: &Tenant) -> Result<(), Failure> {
    match tenant.kind {
        TenantKind::OfficialAccount if tenant.plaintext => Ok(()),
        TenantKind::OfficialAccount => Err(Failure::bad(
            "plaintext_not_allowed",
            format!(
                "tenant {} does not accept plaintext mode (no `plaintext = true` in the tenants \
                 file): a plaintext signature does not cover the body",
                tenant.id
            ),
        )),
        TenantKind::Component | TenantKind::Wecom => Err(Failure::bad(
            "plaintext_not_allowed",
            format!(
                "tenant {} accepts only encrypted callbacks (encrypt_type=aes with msg_signature); \
                 WeChat always encrypts them",
                tenant.id
            ),
        )),
    }
}

/// A plaintext nonce becomes part of a Redis key: 1 to 64 ASCII letters and digits (WeChat's
/// are digits).
fn check_plaintext_nonce(nonce: &str) -> Result<(), Failure> {
    if (1..=64).contains(&nonce.len()) && nonce.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(Failure::bad(
            "bad_nonce",
            "nonce of a plaintext callback must be 1-64 letters or digits",
        ))
    }
}

/// `create_time` (WeChat's clock, unix seconds) is at most `max_future_skew_secs` ahead of the
/// gateway's: a message from the future would hold an ordering field (ticket, authorization
/// status, ...) downstream until then.
fn check_create_time(shared: &Shared, create_time: i64) -> Result<(), Failure> {
    let ahead = create_time.saturating_sub(shared.clock.now_secs());
    if ahead > shared.max_future_skew_secs {
        return Err(Failure::bad(
            "create_time_future",
            format!(
                "CreateTime is {ahead} s ahead of this gateway's clock (at most {} s accepted)",
                shared.max_future_skew_secs
            ),
        ));
    }
    Ok(())
}

/// A plaintext pair (`timestamp`, `nonce`) vouches for the first body it carried only: binds it
/// (or finds it bound to this same body, a retry) in Redis. The binding lives as long as the
/// pair stays acceptable: until `timestamp + window` — on any replica, hence the margin for
/// their clocks' difference. Without Redis there is no proof of the body: 503, WeChat retries.
async fn bind_plaintext(
    shared: &Shared,
    tenant: &Tenant,
    timestamp: (&str, i64),
    nonce: &str,
    body: &[u8],
    deadline: tokio::time::Instant,
) -> Result<(), Failure> {
    /// Tolerated difference between the clocks of two gateway replicas.
    const REPLICA_CLOCK_MARGIN_SECS: i64 = 60;
    let (text, ts) = timestamp;
    let now = wxhub_runtime::unix_ms() / 1000;
    let ttl_secs = (ts + shared.window_secs - now).max(0) + REPLICA_CLOCK_MARGIN_SECS;
    let digest = {
        use sha1::{Digest, Sha1};
        hex::encode(Sha1::digest(body))
    };
    let bind = shared.nonces.bind(
        tenant.id.as_str(),
        text,
        nonce,
        &digest,
        std::time::Duration::from_secs(ttl_secs as u64),
    );
    let budget = deadline.min(tokio::time::Instant::now() + shared.dedupe_timeout);
    let unavailable = |why: String| {
        Failure::unavailable(
            "redis",
            format!("a plaintext callback needs Redis to bind its nonce to the body: {why}"),
        )
    };
    match tokio::time::timeout_at(budget, bind).await {
        Ok(Ok(Binding::First | Binding::Same)) => Ok(()),
        Ok(Ok(Binding::Different)) => Err(Failure::unauthenticated(
            "nonce_reused",
            "this timestamp and nonce already carried another body; a plaintext signature \
             vouches for one body only",
        )),
        Ok(Err(e)) => Err(unavailable(e.to_string())),
        Err(_) => Err(unavailable("timed out".into())),
    }
}

/// GET: URL verification. Official Account style (`signature` + plain `echostr`) for component
/// and Official Account tenants; WeCom style (`msg_signature` over the encrypted `echostr`,
/// answer = its plaintext) for WeCom tenants.
async fn verify_url(shared: &Arc<Shared>, req: Request) -> Result<(Answer, &'static str), Failure> {
    let tenant = lookup(shared, req.route, &req.tenant)?;
    if req.route == Route::Authorizer {
        check_appid(req.appid.as_deref())?;
    }
    let query = req.query.as_deref().unwrap_or_default();
    let p = Params::parse(query);
    let timestamp = p.timestamp.as_deref().ok_or_else(|| missing("timestamp"))?;
    let nonce = p.nonce.as_deref().ok_or_else(|| missing("nonce"))?;
    let echostr = p.echostr.as_deref().ok_or_else(|| missing("echostr"))?;
    if echostr.len() > MAX_ECHOSTR {
        return Err(Failure::bad("echostr", "echostr is too long"));
    }
    let crypt = tenant.crypt();
    let answer = if tenant.kind == TenantKind::Wecom {
        let signature = p.msg_signature.as_deref().ok_or_else(|| {
            Failure::unauthenticated("missing_signature", "msg_signature is missing")
        })?;
        crypt.verify_msg_signature(signature, timestamp, nonce, echostr)?;
        check_window(shared, timestamp)?;
        let decrypted = crypt.decrypt(echostr)?;
        decrypted.message_str()?.to_owned()
    } else {
        let signature = p
            .signature
            .as_deref()
            .ok_or_else(|| Failure::unauthenticated("missing_signature", "signature is missing"))?;
        crypt.verify_url_plain(signature, timestamp, nonce, echostr)?;
        check_window(shared, timestamp)?;
        echostr.to_owned()
    };
    Ok((Answer::Echo(answer), "verified"))
}

/// Reads the body, refusing more than `limit` bytes, within the deadline.
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    deadline: tokio::time::Instant,
) -> Result<Vec<u8>, Failure> {
    let too_large = || {
        Failure::reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("body larger than {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = async {
        use axum::body::HttpBody as _;
        let mut body = body;
        let mut buf = Vec::with_capacity(declared.map_or(2048, |n| n as usize));
        while let Some(frame) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
        {
            let frame =
                frame.map_err(|e| Failure::bad("body", format!("cannot read the body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(too_large());
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf)
    };
    tokio::time::timeout_at(deadline, read)
        .await
        .unwrap_or_else(|_| {
            Err(Failure::reject(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the body did not arrive within the deadline",
            ))
        })
}

/// The POST pipeline.
async fn post(
    shared: &Arc<Shared>,
    req: Request,
    started: Instant,
) -> Result<(Answer, &'static str), Failure> {
    let deadline = tokio::time::Instant::from_std(started) + shared.deadline;
    let received_at_ms = wxhub_runtime::unix_ms();

    // 1. Size limit.
    let body = read_body(req.body, &req.headers, shared.max_body, deadline).await?;

    // 2. Tenant lookup.
    let tenant = lookup(shared, req.route, &req.tenant)?;
    let appid: &str = match req.route {
        Route::Authorizer => check_appid(req.appid.as_deref())?,
        Route::Component | Route::Direct => tenant.app_id.as_str(),
    };
    let crypt = tenant.crypt();

    // 3. Signature.
    let query = req.query.as_deref().unwrap_or_default();
    let p = Params::parse(query);
    let timestamp = p.timestamp.as_deref().ok_or_else(|| missing("timestamp"))?;
    let nonce = p.nonce.as_deref().ok_or_else(|| missing("nonce"))?;
    let encrypted = match (tenant.kind, p.encrypt_type.as_deref()) {
        // WeCom pushes are always encrypted and carry only msg_signature.
        (TenantKind::Wecom, _) => true,
        (_, None | Some("" | "raw")) => false,
        (_, Some("aes")) => true,
        (_, Some(_)) => {
            return Err(Failure::bad(
                "encrypt_type",
                "encrypt_type must be aes or raw",
            ));
        }
    };
    if tenant.kind != TenantKind::Wecom {
        let signature = p
            .signature
            .as_deref()
            .ok_or_else(|| Failure::unauthenticated("missing_signature", "signature is missing"))?;
        crypt.verify_signature(signature, timestamp, nonce)?;
    }
    if !encrypted {
        check_plaintext(&tenant)?;
        check_plaintext_nonce(nonce)?;
    }
    let envelope = parse_envelope(&body, &shared.limits)?;
    let encrypt = if encrypted {
        let msg_signature = p.msg_signature.as_deref().ok_or_else(|| {
            Failure::unauthenticated("missing_signature", "msg_signature is missing")
        })?;
        let encrypt = envelope.encrypt().ok_or_else(|| {
            Failure::bad("missing_encrypt", "encrypted callback without <Encrypt>")
        })?;
        crypt.verify_msg_signature(msg_signature, timestamp, nonce, encrypt)?;
        Some(encrypt)
    } else {
        None
    };

    // 4. Timestamp window.
    let ts = check_window(shared, timestamp)?;

    // 5. Decrypt (current key, then previous) and check the appid/corpid in the plaintext.
    let (xml, slot, mode): (Cow<'_, str>, Option<KeySlot>, Mode) = match encrypt {
        Some(encrypt) => {
            let decrypted = crypt.decrypt(encrypt)?;
            let root = envelope.root();
            let mode = if root.child("MsgType").is_some() || root.child("InfoType").is_some() {
                Mode::Compatible
            } else {
                Mode::Safe
            };
            let slot = decrypted.slot();
            let xml = decrypted
                .message_str()
                .map_err(|_| Failure::bad("utf8", "decrypted message is not UTF-8"))?
                .to_owned();
            (Cow::Owned(xml), Some(slot), mode)
        }
        None => {
            // parse_envelope accepted the body, so it is UTF-8.
            let text = std::str::from_utf8(&body)
                .map_err(|_| Failure::bad("utf8", "body is not UTF-8"))?;
            (Cow::Borrowed(text), None, Mode::Plain)
        }
    };

    // 6. Parse; nothing from the future.
    let inbound = wxhub_message::parse_with(&xml, &shared.limits)?;
    check_create_time(
        shared,
        match &inbound {
            Inbound::Component(notice) => notice.create_time(),
            Inbound::Account(message) => message.header().create_time,
        },
    )?;
    let xml = xml.into_owned();
    // The first write: a plaintext pair is bound to this body (after every check that could
    // still refuse it, so bad input changes no state).
    if !encrypted {
        bind_plaintext(shared, &tenant, (timestamp, ts), nonce, &body, deadline).await?;
    }
    let reply = ReplyCrypto { crypt, slot };
    let publisher = Publisher {
        shared,
        tenant: &tenant,
        appid,
        mode,
        received_at_ms,
        headers: &req.headers,
        deadline,
    };
    match (req.route, inbound) {
        (Route::Component, Inbound::Component(notice)) => {
            let delivered = publisher
                .publish(notice.dedupe_key(), Kind::Event, |meta| {
                    event::notice_event(meta, &notice, xml)
                })
                .await?;
            Ok((Answer::Success, outcome(delivered)))
        }
        (Route::Authorizer | Route::Direct, Inbound::Account(message)) => {
            // 7. Release check.
            if req.route == Route::Authorizer
                && release::is_test_account(appid, &message.header().to_user_name)
            {
                return release_check(&publisher, &message, &reply).await;
            }
            // 8. Dedupe and publish.
            let delivered = publisher
                .publish(message.dedupe_key(), Kind::Event, |meta| {
                    event::account_event(meta, &message, xml)
                })
                .await?;
            // 9. Reply: WeCom acknowledges with an empty body, WeChat with `success`.
            let answer = if tenant.kind == TenantKind::Wecom {
                Answer::Empty
            } else {
                Answer::Success
            };
            Ok((answer, outcome(delivered)))
        }
        (Route::Component, Inbound::Account(_)) => Err(Failure::bad(
            "unexpected_payload",
            "an account message on the component's authorization-event URL",
        )),
        (_, Inbound::Component(_)) => Err(Failure::bad(
            "unexpected_payload",
            "a component notice on a message URL",
        )),
    }
}

fn outcome(delivered: Delivered) -> &'static str {
    match delivered {
        Delivered::Published => "published",
        Delivered::Duplicate => "duplicate",
    }
}

/// How to encrypt a passive reply: with the key that decrypted the request, or not at all.
struct ReplyCrypto<'a> {
    crypt: &'a Crypt,
    slot: Option<KeySlot>,
}

impl ReplyCrypto<'_> {
    fn answer(&self, reply: &Reply) -> Result<Answer, Failure> {
        let xml = reply.to_xml();
        match self.slot {
            None => Ok(Answer::Xml(xml)),
            Some(slot) => {
                let timestamp = (wxhub_runtime::unix_ms() / 1000).to_string();
                let nonce = random_nonce(10);
                Ok(Answer::Xml(encrypted_envelope(
                    self.crypt, slot, &xml, &timestamp, &nonce,
                )?))
            }
        }
    }
}

/// What every publication of one callback shares.
struct Publisher<'a> {
    shared: &'a Arc<Shared>,
    tenant: &'a Tenant,
    appid: &'a str,
    mode: Mode,
    received_at_ms: i64,
    headers: &'a HeaderMap,
    deadline: tokio::time::Instant,
}

/// What a callback publishes: an event (`{ns}.events`) or a release-check job (`{ns}.jobs`).
#[derive(Debug, Clone, Copy)]
enum Kind {
    Event,
    Job,
}

impl Publisher<'_> {
    /// Dedupes `dedupe_key` and publishes what `build` makes (body and routing key) with confirm.
    async fn publish(
        &self,
        dedupe_key: String,
        kind: Kind,
        build: impl FnOnce(&Meta<'_>) -> (Vec<u8>, String),
    ) -> Result<Delivered, Failure> {
        let key = DedupeKey::new(self.tenant.id.as_str(), self.appid, dedupe_key);
        let message_id = key.message_id();
        let meta = Meta {
            tenant: self.tenant,
            appid: self.appid,
            dedupe_key: &message_id,
            mode: self.mode,
            received_at_ms: self.received_at_ms,
        };
        let (body, routing_key) = build(&meta);
        let (exchange, message_type, what) = match kind {
            Kind::Event => (
                self.shared.events_exchange.clone(),
                CALLBACK_EVENT_TYPE,
                "event",
            ),
            Kind::Job => (
                self.shared.jobs_exchange.clone(),
                RELEASE_CHECK_JOB_TYPE,
                "job",
            ),
        };
        let publication = Publication {
            exchange,
            routing_key,
            body,
            message_id,
            message_type,
            headers: event::trace_headers(
                &tracing::Span::current(),
                self.headers,
                self.shared.export_spans,
            ),
            what,
        };
        deliver(self.shared, key, publication, self.deadline).await
    }
}

async fn release_check(
    publisher: &Publisher<'_>,
    message: &Message,
    reply: &ReplyCrypto<'_>,
) -> Result<(Answer, &'static str), Failure> {
    match release::step(message) {
        Step::Reply { step, content } => {
            m::release_check(step);
            let now = wxhub_runtime::unix_ms() / 1000;
            let answer = reply.answer(&Reply::text(message.header(), now, content))?;
            Ok((answer, "release_check"))
        }
        Step::QueryAuthCode(auth_code) => {
            let open_id = &message.header().from_user_name;
            publisher
                .publish(message.dedupe_key(), Kind::Job, |meta| {
                    let job = event::release_check_job(meta, auth_code, open_id);
                    (job, wxhub_bus::topology::RELEASE_CHECK_KEY.to_owned())
                })
                .await?;
            m::release_check("query_auth_code");
            Ok((Answer::Empty, "release_check"))
        }
        Step::Other => {
            m::release_check("other");
            Ok((Answer::Success, "release_check"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appid_format() {
        assert!(check_appid(Some("wx570bc396a51b8ff8")).is_ok());
        assert!(check_appid(Some("wxauth_load")).is_ok());
        for bad in [
            "",
            "wx",
            "ab570bc396a51b8ff8",
            "wx.evil",
            "wx/../x",
            &"wx".repeat(17),
        ] {
            assert!(check_appid(Some(bad)).is_err(), "{bad}");
        }
        assert!(check_appid(None).is_err());
    }

    #[test]
    fn routes_accept_their_kinds() {
        assert!(Route::Component.accepts(TenantKind::Component));
        assert!(Route::Authorizer.accepts(TenantKind::Component));
        assert!(!Route::Direct.accepts(TenantKind::Component));
        assert!(Route::Direct.accepts(TenantKind::OfficialAccount));
        assert!(Route::Direct.accepts(TenantKind::Wecom));
        assert!(!Route::Component.accepts(TenantKind::Wecom));
        assert!(!Route::Authorizer.accepts(TenantKind::OfficialAccount));
    }
}
