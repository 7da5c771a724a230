//! Forwarding one call to WeChat: the credential added, token rejections healed once, bodies
//! streamed, and the retry rules below — the relay's guarantees.
//!
//! **What is retried, and why that is safe.**
//! - A token rejection (errcode 40001, 40014, 42001) means WeChat refused the credential and did
//!   nothing else. The token is reported to token-control (`InvalidateAccessToken`, which
//!   refreshes only if the stored token is still the rejected one, so a storm of rejections costs
//!   one refresh) and the call is made once more with the replacement — GET or POST, provided
//!   the relay still holds the body (up to `relay.replay_body_bytes`). A larger body has streamed
//!   through and cannot be sent again: the answer is returned with `x-wxhub-retry` saying so (the
//!   token is replaced all the same, so the caller's own retry works).
//! - errcode -1 (system busy) has an unknown outcome: WeChat may have acted. A GET is retried
//!   once after `relay.busy_backoff_ms`; **a POST never is once its request was written** — a
//!   second customer-service message is worse than an error (the WxJava duplicate-send bug).
//!   The answer says `x-wxhub-retry: not-retried; POST was written, outcome unknown`.
//! - A connection that could not be opened carried nothing: retried once for any method whose
//!   body is held. A failure after the request was written (reset, timeout) is retried for a GET
//!   only; a POST gets 502/504 with the same header.
//!
//! At most two attempts, whatever happens: the heal of a rejection is never followed by a
//! busy-retry, so one call cannot loop on token refreshes (WxJava #1381).
//!
//! **Streaming.** A request body larger than `relay.replay_body_bytes` is forwarded as it
//! arrives (bounded by `relay.max_body_bytes`: a declared larger Content-Length is refused before
//! anything is sent; a chunked body that grows past it is cut off mid-request, which WeChat
//! discards as incomplete). An answer is read only when it is JSON (or text) of at most
//! `relay.inspect_body_bytes` — to see its errcode; anything else (media) streams to the caller
//! chunk by chunk. [`Held`] counts every byte the relay holds at once, so tests and
//! `wxhub_relay_held_bytes` show that a 10 MB download is never held.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use wxhub_token_client::TokenClient;
use wxhub_wechat_api::Host;

use crate::access::{Credential, Refusal, Target};

/// [`Forwarded::outcome`] of an answer that streams on after the call returns.
pub const STREAMED: &str = "streamed";

/// errcodes that mean "this token is not (or no longer) valid".
pub const TOKEN_REJECTED: [i64; 3] = [40001, 40014, 42001];

/// Header: attempts made (1 or 2).
pub const ATTEMPTS: &str = "x-wxhub-attempts";
/// Header: seconds since token-control fetched the token used by the last attempt.
pub const TOKEN_AGE: &str = "x-wxhub-token-age-secs";
/// Header: what the retry rules did (present only when they had something to say).
pub const RETRY: &str = "x-wxhub-retry";
/// Header: WeChat's errcode, when the relay read the answer (0: success).
pub const ERRCODE: &str = "x-wxhub-errcode";

/// Bytes the relay holds in memory at once (request bodies kept for a retry, answers read for
/// their errcode), and the most it ever held.
#[derive(Debug, Default)]
pub struct HeldBytes {
    now: AtomicU64,
    peak: AtomicU64,
}

impl HeldBytes {
    fn hold(self: &Arc<Self>, n: usize) -> Held {
        let n = n as u64;
        let now = self.now.fetch_add(n, Ordering::Relaxed) + n;
        self.peak.fetch_max(now, Ordering::Relaxed);
        metrics::gauge!("wxhub_relay_held_bytes").set(now as f64);
        Held {
            meter: Arc::clone(self),
            n,
        }
    }

    /// Bytes held now.
    pub fn now(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }

    /// The most held at once since the last [`HeldBytes::reset_peak`].
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Starts a new peak from what is held now (tests measure one call).
    pub fn reset_peak(&self) {
        self.peak.store(self.now(), Ordering::Relaxed);
    }
}

/// A buffer's share of [`HeldBytes`], returned on drop.
#[derive(Debug)]
pub struct Held {
    meter: Arc<HeldBytes>,
    n: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        let now = self.meter.now.fetch_sub(self.n, Ordering::Relaxed) - self.n;
        metrics::gauge!("wxhub_relay_held_bytes").set(now as f64);
    }
}

type ByteStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// A request body as the relay forwards it.
pub enum Outbound {
    /// None (GET and friends).
    Empty,
    /// Held in full: can be sent twice.
    Kept(Bytes, #[allow(dead_code)] Held),
    /// Streams through once; `oversize` is set if it grew past the limit.
    Streamed {
        stream: ByteStream,
        length: Option<u64>,
        oversize: Arc<AtomicBool>,
    },
}

impl Outbound {
    fn replayable(&self) -> bool {
        !matches!(self, Outbound::Streamed { .. })
    }
}

/// WeChat's hosts and how calls to them behave.
pub struct Upstream {
    pub http: reqwest::Client,
    pub api_base: String,
    pub qyapi_base: String,
    pub timeout: Duration,
    pub busy_backoff: Duration,
    pub max_body: u64,
    pub replay_limit: u64,
    pub inspect_limit: u64,
    pub held: Arc<HeldBytes>,
}

impl Upstream {
    pub fn base(&self, host: Host) -> &str {
        match host {
            Host::Api => &self.api_base,
            Host::Qyapi => &self.qyapi_base,
        }
    }

    /// The request body: refused if its declared length is over the limit; held if it fits
    /// the replay limit; else streamed (the part read so far first).
    pub async fn outbound(
        &self,
        method: &Method,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Outbound, Refusal> {
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(n) = length
            && n > self.max_body
        {
            return Err(too_large(self.max_body));
        }
        let chunked = headers.contains_key(header::TRANSFER_ENCODING);
        if length.unwrap_or(0) == 0 && !chunked {
            return Ok(Outbound::Empty);
        }
        if matches!(*method, Method::GET | Method::HEAD) && length.is_none() && !chunked {
            return Ok(Outbound::Empty);
        }
        let mut data = body.into_data_stream();
        let mut prefix = Vec::new();
        let mut read = 0u64;
        if length.is_none_or(|n| n <= self.replay_limit) {
            while read <= self.replay_limit {
                match data.next().await {
                    Some(Ok(chunk)) => {
                        read += chunk.len() as u64;
                        if read > self.max_body {
                            return Err(too_large(self.max_body));
                        }
                        prefix.push(chunk);
                    }
                    Some(Err(e)) => {
                        return Err(Refusal::new(
                            StatusCode::BAD_REQUEST,
                            "body_read",
                            format!("the request body could not be read: {e}"),
                        ));
                    }
                    None => {
                        let mut all = BytesMut::with_capacity(read as usize);
                        for c in prefix {
                            all.extend_from_slice(&c);
                        }
                        let held = self.held.hold(all.len());
                        return Ok(Outbound::Kept(all.freeze(), held));
                    }
                }
            }
        }
        let max = self.max_body;
        let oversize = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&oversize);
        let stream = futures::stream::iter(prefix.into_iter().map(Ok))
            .chain(data.map_err(std::io::Error::other))
            .scan(0u64, move |seen, item| {
                let item = item.and_then(|chunk| {
                    *seen += chunk.len() as u64;
                    if *seen > max {
                        flag.store(true, Ordering::Relaxed);
                        Err(std::io::Error::other(
                            "request body over relay.max_body_bytes",
                        ))
                    } else {
                        Ok(chunk)
                    }
                });
                std::future::ready(Some(item))
            });
        Ok(Outbound::Streamed {
            stream: Box::pin(stream),
            length,
            oversize,
        })
    }
}

fn too_large(max: u64) -> Refusal {
    Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is over relay.max_body_bytes ({max} bytes)"),
    )
}

/// One call, as admitted.
pub struct Call<'a> {
    pub tenant: &'a str,
    pub target: &'a Target,
    pub method: Method,
    pub path: &'a str,
    pub query: Vec<(String, String)>,
    /// Request headers passed on (content type, trace context).
    pub pass: Vec<(HeaderName, HeaderValue)>,
}

/// An answer ready for the caller, and what the metrics say of it.
pub struct Forwarded {
    pub response: Response,
    /// WeChat's errcode when read; `None` for a streamed answer or a failure.
    pub errcode: Option<i64>,
    pub attempts: u32,
    pub outcome: &'static str,
    /// Time spent in WeChat's exchanges (request sent until the answer was read, or handed on
    /// to stream), every attempt: the rest of a call's time is the relay's own.
    pub upstream: Duration,
}

/// A token as the relay uses it.
#[derive(Clone)]
struct Token {
    value: String,
    issued_at_ms: i64,
}

/// What one attempt produced.
enum Answer {
    /// Read in full (JSON): the errcode is known.
    Read {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        errcode: i64,
        _held: Held,
    },
    /// Streams to the caller.
    Stream {
        status: StatusCode,
        headers: HeaderMap,
        body: Body,
    },
}

/// tonic's answer of token-control, as the caller's refusal.
pub fn token_refusal(status: &tonic::Status) -> Refusal {
    use tonic::Code;
    let message = format!("token-control: {}", status.message());
    let (code, reason) = match status.code() {
        Code::NotFound => (StatusCode::NOT_FOUND, "unknown_appid"),
        Code::FailedPrecondition => (StatusCode::CONFLICT, "account_unusable"),
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "bad_request"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "quota"),
        Code::PermissionDenied | Code::Unauthenticated => {
            (StatusCode::SERVICE_UNAVAILABLE, "relay_not_authorized")
        }
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "token_timeout"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "token_unavailable"),
    };
    Refusal::new(code, reason, message)
}

/// token-control behind a short per-process cache.
///
/// A cached token is served for at most `ttl` (and never within a minute of its expiry), so a
/// relayed call costs no gRPC round trip in the common case. Serving a token another replica
/// has since replaced is harmless: WeChat's rejection is healed like any other (token-control's
/// compare-then-refresh answers the current token without a refresh), and the replacement
/// takes the cached one's place.
pub struct Tokens {
    client: TokenClient,
    ttl: Duration,
    /// By tenant, then appid (so that a lookup allocates nothing).
    cache: std::sync::Mutex<Cache>,
}

type Cache = std::collections::HashMap<String, std::collections::HashMap<String, Cached>>;

/// A cached token: the token, when it was fetched, its expiry (Unix ms).
type Cached = (Token, Instant, i64);

impl Tokens {
    pub fn new(client: TokenClient, ttl: Duration) -> Self {
        Self {
            client,
            ttl,
            cache: Default::default(),
        }
    }

    /// The token-control client (for calls the relay makes beside forwarding).
    pub fn client(&self) -> &TokenClient {
        &self.client
    }

    fn remember(
        &self,
        tenant: &str,
        appid: &str,
        t: &wxhub_token_client::pb::AccessToken,
    ) -> Token {
        let token = Token {
            value: t.access_token.clone(),
            issued_at_ms: t.issued_at_ms,
        };
        if !self.ttl.is_zero() {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.values().map(|of| of.len()).sum::<usize>() > 100_000 {
                cache.clear();
            }
            cache.entry(tenant.to_owned()).or_default().insert(
                appid.to_owned(),
                (token.clone(), Instant::now(), t.expires_at_ms),
            );
        }
        token
    }

    async fn get(&self, tenant: &str, target: &Target) -> Result<Token, Refusal> {
        let appid = target.token_appid();
        if !self.ttl.is_zero() {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((token, at, expires_at_ms)) = cache.get(tenant).and_then(|of| of.get(appid))
                && at.elapsed() < self.ttl
                && *expires_at_ms - wxhub_runtime::unix_ms() > 60_000
            {
                return Ok(token.clone());
            }
        }
        let t = self
            .client
            .access_token(tenant, appid, 0)
            .await
            .map_err(|s| token_refusal(&s))?;
        Ok(self.remember(tenant, appid, &t))
    }

    async fn replace(
        &self,
        tenant: &str,
        target: &Target,
        rejected: &Token,
    ) -> Result<Token, tonic::Status> {
        let appid = target.token_appid();
        let t = self
            .client
            .invalidate(tenant, appid, &rejected.value)
            .await?;
        Ok(self.remember(tenant, appid, &t))
    }
}

fn json_like(headers: &HeaderMap) -> bool {
    match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        None => true,
        Some(ct) => {
            let ct = ct.to_ascii_lowercase();
            ct.starts_with("application/json") || ct.starts_with("text/")
        }
    }
}

#[derive(serde::Deserialize)]
struct Probe {
    #[serde(default)]
    errcode: Option<i64>,
}

/// Why an attempt failed before an answer came.
struct Failure {
    /// The request was certainly not sent (connect error).
    unsent: bool,
    timeout: bool,
    /// The streamed body grew past the limit.
    oversize: bool,
    detail: String,
}

impl Upstream {
    async fn attempt(
        &self,
        call: &Call<'_>,
        token: &Token,
        body: &mut Option<Outbound>,
        upstream: &mut Duration,
    ) -> Result<Answer, Failure> {
        let mut url = url::Url::parse(&format!("{}{}", self.base(call.target.host), call.path))
            .map_err(|e| Failure {
                unsent: true,
                timeout: false,
                oversize: false,
                detail: format!("bad upstream URL: {e}"),
            })?;
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in &call.query {
                if k != "component_appid" {
                    q.append_pair(k, v);
                }
            }
            if let Some(c) = &call.target.component_appid {
                q.append_pair("component_appid", c);
            }
            if let Credential::ComponentFor(appid) = &call.target.credential
                && !call.query.iter().any(|(k, _)| k == "appid")
            {
                q.append_pair("appid", appid);
            }
            q.append_pair(call.target.token_param, &token.value);
        }
        let mut request = self
            .http
            .request(call.method.clone(), url)
            .timeout(self.timeout);
        for (name, value) in &call.pass {
            request = request.header(name, value);
        }
        let mut oversize = None;
        request = match body.take() {
            None | Some(Outbound::Empty) => request,
            Some(Outbound::Kept(bytes, held)) => {
                let r = request.body(bytes.clone());
                *body = Some(Outbound::Kept(bytes, held));
                r
            }
            Some(Outbound::Streamed {
                stream,
                length,
                oversize: flag,
            }) => {
                oversize = Some(flag);
                let r = request.body(reqwest::Body::wrap_stream(stream));
                match length {
                    Some(n) => r.header(header::CONTENT_LENGTH, n),
                    None => r,
                }
            }
        };
        let sent = Instant::now();
        let response = request.send().await.map_err(|e| {
            *upstream += sent.elapsed();
            let e = e.without_url();
            Failure {
                unsent: e.is_connect(),
                timeout: e.is_timeout(),
                oversize: oversize.as_ref().is_some_and(|f| f.load(Ordering::Relaxed)),
                detail: wxhub_wechat_api::source_chain(&e),
            }
        })?;
        let status = response.status();
        let mut headers = HeaderMap::new();
        for name in [
            header::CONTENT_TYPE,
            header::CONTENT_DISPOSITION,
            header::CONTENT_LENGTH,
            header::CACHE_CONTROL,
        ] {
            if let Some(v) = response.headers().get(&name) {
                headers.insert(name, v.clone());
            }
        }
        let small = response
            .content_length()
            .is_none_or(|n| n <= self.inspect_limit);
        if !(json_like(&headers) && small) {
            *upstream += sent.elapsed();
            let stream = response.bytes_stream().map_err(std::io::Error::other);
            return Ok(Answer::Stream {
                status,
                headers,
                body: Body::from_stream(stream),
            });
        }
        // Read it to see the errcode, unless it turns out larger than announced.
        let mut stream = response.bytes_stream();
        let mut buf = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                *upstream += sent.elapsed();
                Failure {
                    unsent: false,
                    timeout: e.is_timeout(),
                    oversize: false,
                    detail: wxhub_wechat_api::source_chain(&e.without_url()),
                }
            })?;
            buf.extend_from_slice(&chunk);
            if buf.len() as u64 > self.inspect_limit {
                *upstream += sent.elapsed();
                headers.remove(header::CONTENT_LENGTH);
                let prefix = buf.freeze();
                let rest = stream.map_err(std::io::Error::other);
                let body = futures::stream::once(async move { Ok(prefix) }).chain(rest);
                return Ok(Answer::Stream {
                    status,
                    headers,
                    body: Body::from_stream(body),
                });
            }
        }
        *upstream += sent.elapsed();
        let body = buf.freeze();
        let held = self.held.hold(body.len());
        let errcode = serde_json::from_slice::<Probe>(&body)
            .ok()
            .and_then(|p| p.errcode)
            .unwrap_or(0);
        Ok(Answer::Read {
            status,
            headers,
            body,
            errcode,
            _held: held,
        })
    }

    /// Forwards `call` with the retry rules of the module docs.
    pub async fn forward(
        &self,
        tokens: &Tokens,
        call: Call<'_>,
        body: Outbound,
    ) -> Result<Forwarded, Refusal> {
        let idempotent = matches!(call.method, Method::GET | Method::HEAD);
        let t_token = Instant::now();
        let mut token = tokens.get(call.tenant, call.target).await?;
        metrics::histogram!(crate::TOKEN_WAIT_SECONDS).record(t_token.elapsed().as_secs_f64());
        let mut body = Some(body);
        let mut attempts = 0u32;
        let mut note: Option<&'static str> = None;
        let mut upstream = Duration::ZERO;
        loop {
            attempts += 1;
            let replayable = body.as_ref().is_none_or(Outbound::replayable);
            let last = attempts >= 2;
            match self.attempt(&call, &token, &mut body, &mut upstream).await {
                Ok(Answer::Read {
                    status,
                    headers,
                    body: answer,
                    errcode,
                    _held,
                }) => {
                    if TOKEN_REJECTED.contains(&errcode) && !last {
                        match tokens.replace(call.tenant, call.target, &token).await {
                            Ok(fresh) if replayable => {
                                metrics::counter!("wxhub_relay_retries_total", "why" => "token_rejected").increment(1);
                                token = fresh;
                                note = Some("token rejected; retried once with a new token");
                                continue;
                            }
                            Ok(_) => {
                                note = Some(
                                    "not-retried; token rejected and replaced, but the body was streamed",
                                )
                            }
                            Err(e) => {
                                tracing::warn!(code = ?e.code(), "token-control could not replace a rejected token");
                                note = Some(
                                    "not-retried; token rejected and token-control could not replace it",
                                );
                            }
                        }
                    } else if errcode == -1 && !last {
                        if idempotent && replayable {
                            metrics::counter!("wxhub_relay_retries_total", "why" => "busy")
                                .increment(1);
                            tokio::time::sleep(self.busy_backoff).await;
                            note = Some("system busy (-1); GET retried once after a backoff");
                            continue;
                        }
                        note = Some("not-retried; POST was written, outcome unknown");
                    }
                    let response = finish(
                        status,
                        headers,
                        Body::from(answer),
                        attempts,
                        &token,
                        note,
                        Some(errcode),
                    );
                    return Ok(Forwarded {
                        response,
                        errcode: Some(errcode),
                        attempts,
                        outcome: "answered",
                        upstream,
                    });
                }
                Ok(Answer::Stream {
                    status,
                    headers,
                    body,
                }) => {
                    let response = finish(status, headers, body, attempts, &token, note, None);
                    return Ok(Forwarded {
                        response,
                        errcode: None,
                        attempts,
                        outcome: STREAMED,
                        upstream,
                    });
                }
                Err(failure) => {
                    if failure.oversize {
                        return Err(too_large(self.max_body));
                    }
                    let may_retry = !last && replayable && (failure.unsent || idempotent);
                    if may_retry {
                        metrics::counter!("wxhub_relay_retries_total", "why" => "transport")
                            .increment(1);
                        tokio::time::sleep(self.busy_backoff).await;
                        note = Some(if failure.unsent {
                            "connection failed before sending; retried once"
                        } else {
                            "transport failure; GET retried once"
                        });
                        continue;
                    }
                    let note = if !failure.unsent && !idempotent {
                        "not-retried; POST was written, outcome unknown"
                    } else {
                        note.unwrap_or("not-retried")
                    };
                    let (status, reason) = if failure.timeout {
                        (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
                    } else {
                        (StatusCode::BAD_GATEWAY, "upstream_failed")
                    };
                    let mut response = error_response(
                        status,
                        reason,
                        &format!("WeChat did not answer: {}", failure.detail),
                    );
                    stamp(response.headers_mut(), attempts, &token, Some(note), None);
                    return Ok(Forwarded {
                        response,
                        errcode: None,
                        attempts,
                        outcome: reason,
                        upstream,
                    });
                }
            }
        }
    }
}

fn stamp(
    headers: &mut HeaderMap,
    attempts: u32,
    token: &Token,
    note: Option<&str>,
    errcode: Option<i64>,
) {
    headers.insert(ATTEMPTS, HeaderValue::from(attempts));
    if token.issued_at_ms > 0 {
        let age = (wxhub_runtime::unix_ms() - token.issued_at_ms).max(0) / 1000;
        headers.insert(TOKEN_AGE, HeaderValue::from(age));
    }
    if let Some(note) = note
        && let Ok(v) = HeaderValue::from_str(note)
    {
        headers.insert(RETRY, v);
    }
    if let Some(code) = errcode {
        headers.insert(ERRCODE, HeaderValue::from(code));
    }
}

fn finish(
    status: StatusCode,
    headers: HeaderMap,
    body: Body,
    attempts: u32,
    token: &Token,
    note: Option<&str>,
    errcode: Option<i64>,
) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    stamp(response.headers_mut(), attempts, token, note, errcode);
    response
}

/// The relay's own error answer: `{"error": reason, "message": ...}`.
pub fn error_response(status: StatusCode, reason: &str, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": reason, "message": message})),
    )
        .into_response()
}

/// Elapsed seconds since `started` (metrics).
pub fn seconds(started: Instant) -> f64 {
    started.elapsed().as_secs_f64()
}
