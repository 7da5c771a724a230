//! The load generator: signed, encrypted callbacks posted to a gateway's message URL as fast
//! as asked, with latency percentiles (HdrHistogram) and a status-code histogram.
//!
//! Bodies are generated before the clock starts, each with a unique `MsgId` (messages) or a
//! unique `FromUserName` (events), so a deduplicating gateway publishes every one. The pool is
//! bounded by memory; when a run needs more bodies than the pool holds they are reused and the
//! report says so. Whole HTTP requests (signed URL, headers, body) are pre-serialized too and
//! re-signed only when their timestamp is older than 30 s, so receivers that check timestamp
//! freshness accept long runs.
//!
//! The client is deliberately lean, like wrk: each worker owns one keep-alive HTTP/1.1
//! connection, writes the pre-serialized request and parses only the status line and the body
//! length of the answer. On a shared benchmark box every microsecond the client spends is taken
//! from the server under test. It speaks plain `http://` only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use wxhub_crypto::{Crypt, KeySlot, msg_signature, signature};

use crate::SimError;
use crate::clock::VirtualClock;
use crate::push::{MessageSpec, cdata_el};
use crate::seed::{Encryption, Secret};

/// Kinds of callbacks the generator can post.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum LoadKind {
    /// Text message (unique MsgId).
    Text,
    /// Image message.
    Image,
    /// Voice message.
    Voice,
    /// Location message.
    Location,
    /// Link message.
    Link,
    /// `CLICK` event (unique FromUserName).
    Event,
}

impl std::str::FromStr for LoadKind {
    type Err = SimError;
    fn from_str(s: &str) -> Result<Self, SimError> {
        Ok(match s {
            "text" => Self::Text,
            "image" => Self::Image,
            "voice" => Self::Voice,
            "location" => Self::Location,
            "link" => Self::Link,
            "event" => Self::Event,
            other => {
                return Err(SimError::BadRequest(format!(
                    "unknown load kind {other:?} (text, image, voice, location, link, event)"
                )));
            }
        })
    }
}

/// Parses `text=80,event=20`.
pub fn parse_mix(s: &str) -> Result<Vec<(LoadKind, u32)>, SimError> {
    let mut mix = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (kind, weight) = part.split_once('=').ok_or_else(|| {
            SimError::BadRequest(format!("mix entry {part:?} is not kind=weight"))
        })?;
        let weight: u32 = weight
            .trim()
            .parse()
            .map_err(|_| SimError::BadRequest(format!("mix weight {weight:?} is not a number")))?;
        mix.push((kind.trim().parse()?, weight));
    }
    if mix.is_empty() || mix.iter().all(|(_, w)| *w == 0) {
        return Err(SimError::BadRequest("mix needs a positive weight".into()));
    }
    Ok(mix)
}

/// One load run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Gateway base URL, e.g. `http://127.0.0.1:8080`.
    pub gateway: String,
    /// Tenant id in the path.
    pub tenant: String,
    /// Authorizer appid in the path and envelope.
    pub appid: String,
    /// `ToUserName` (the account's gh_ id).
    pub to_user_name: String,
    /// Message token of the component (or account).
    pub token: Secret,
    /// EncodingAESKey.
    pub aes_key: Secret,
    /// Receive-id inside the ciphertext (the component appid).
    pub component_appid: String,
    /// Target rate per second (open loop); `None` = as fast as possible (closed loop).
    pub rate: Option<f64>,
    /// Closed loop: workers, each with its own connection. Open loop: the most requests in
    /// flight (connections are opened as needed and kept alive).
    pub concurrency: usize,
    /// How long to run.
    pub duration: Duration,
    /// Weighted mix of callback kinds.
    pub mix: Vec<(LoadKind, u32)>,
    /// Framing.
    pub mode: Encryption,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Memory bound of the pre-generated pool, bytes.
    pub pool_bytes: usize,
    /// Full URL instead of `{gateway}/wx/{tenant}/callback/{appid}`.
    pub url: Option<String>,
}

impl LoadConfig {
    /// A closed-loop run of text messages with sensible defaults.
    pub fn new(
        gateway: &str,
        tenant: &str,
        appid: &str,
        token: &str,
        aes_key: &str,
        component_appid: &str,
    ) -> Self {
        Self {
            gateway: gateway.to_owned(),
            tenant: tenant.to_owned(),
            appid: appid.to_owned(),
            to_user_name: "gh_load_test".into(),
            token: token.into(),
            aes_key: aes_key.into(),
            component_appid: component_appid.to_owned(),
            rate: None,
            concurrency: 32,
            duration: Duration::from_secs(10),
            mix: vec![(LoadKind::Text, 80), (LoadKind::Event, 20)],
            mode: Encryption::Safe,
            timeout: Duration::from_secs(10),
            pool_bytes: 256 * 1024 * 1024,
            url: None,
        }
    }

    fn target(&self) -> String {
        self.url.clone().unwrap_or_else(|| {
            format!(
                "{}/wx/{}/callback/{}",
                self.gateway.trim_end_matches('/'),
                self.tenant,
                self.appid
            )
        })
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoadReport {
    /// Where the callbacks went.
    pub url: String,
    /// `safe`, `compatible` or `plain`.
    pub mode: Encryption,
    /// Workers.
    pub concurrency: usize,
    /// Target rate (absent in max mode).
    pub target_rate: Option<f64>,
    /// Measured run time, seconds.
    pub elapsed_s: f64,
    /// Requests started.
    pub sent: u64,
    /// Requests that got an HTTP answer.
    pub completed: u64,
    /// Requests that failed without an answer (connection error, timeout).
    pub errors: u64,
    /// Completed per second.
    pub throughput: f64,
    /// Latency of completed requests (open loop: from the scheduled send time).
    pub latency_ms: Latency,
    /// Answers by status code; transport failures under `error`.
    pub status: BTreeMap<String, u64>,
    /// Distinct bodies generated.
    pub unique_bodies: usize,
    /// True when bodies had to be reused (duplicates a deduplicating gateway drops).
    pub reused_bodies: bool,
    /// Time spent pre-generating, seconds (not part of the run).
    pub pregen_s: f64,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "target     {}", self.url)?;
        match self.target_rate {
            Some(r) => writeln!(
                f,
                "mode       {:?}, open loop at {r}/s, {} workers",
                self.mode, self.concurrency
            )?,
            None => writeln!(
                f,
                "mode       {:?}, closed loop (max), {} workers",
                self.mode, self.concurrency
            )?,
        }
        writeln!(
            f,
            "requests   {} sent, {} completed, {} errors in {:.2} s",
            self.sent, self.completed, self.errors, self.elapsed_s
        )?;
        writeln!(f, "throughput {:.1} completed/s", self.throughput)?;
        let l = &self.latency_ms;
        writeln!(
            f,
            "latency    p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            l.p50, l.p90, l.p99, l.p999, l.max
        )?;
        let statuses: Vec<String> = self
            .status
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        writeln!(f, "status     {}", statuses.join(", "))?;
        write!(
            f,
            "bodies     {} unique{}",
            self.unique_bodies,
            if self.reused_bodies {
                ", REUSED (duplicates were sent)"
            } else {
                ""
            }
        )
    }
}

struct Item {
    url: String,
    body: Bytes,
    /// The whole HTTP/1.1 request, ready to write.
    request: Bytes,
    encrypt: Option<String>,
    openid: String,
    nonce: String,
    timestamp: i64,
}

struct Signer {
    base: String,
    /// `host:port` for the `Host` header.
    host: String,
    token: String,
    mode: Encryption,
}

impl Signer {
    fn new(cfg: &LoadConfig) -> Result<Self, SimError> {
        let base = cfg.target();
        let parsed = url::Url::parse(&base)
            .map_err(|e| SimError::BadRequest(format!("bad gateway URL: {e}")))?;
        if parsed.scheme() != "http" {
            return Err(SimError::BadRequest(
                "the load generator speaks plain http:// only".into(),
            ));
        }
        let host = match (parsed.host_str(), parsed.port_or_known_default()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            _ => return Err(SimError::BadRequest("gateway URL without a host".into())),
        };
        Ok(Self {
            base,
            host,
            token: cfg.token.expose().to_owned(),
            mode: cfg.mode,
        })
    }

    /// `POST {path?query} HTTP/1.1` with the body, as bytes on the wire.
    fn request(&self, url: &str, body: &[u8]) -> Bytes {
        let path = url
            .strip_prefix("http://")
            .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
            .unwrap_or("/");
        let mut out = Vec::with_capacity(path.len() + body.len() + 128);
        out.extend_from_slice(b"POST ");
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(self.host.as_bytes());
        out.extend_from_slice(b"\r\nContent-Type: text/xml\r\nContent-Length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
        Bytes::from(out)
    }

    fn url(&self, timestamp: i64, nonce: &str, openid: &str, encrypt: Option<&str>) -> String {
        let ts = timestamp.to_string();
        let mut url = String::with_capacity(self.base.len() + 200);
        url.push_str(&self.base);
        url.push(if self.base.contains('?') { '&' } else { '?' });
        url.push_str("signature=");
        url.push_str(&signature(&self.token, &ts, nonce));
        url.push_str("&timestamp=");
        url.push_str(&ts);
        url.push_str("&nonce=");
        url.push_str(nonce);
        url.push_str("&openid=");
        url.extend(url::form_urlencoded::byte_serialize(openid.as_bytes()));
        if let (Some(encrypt), false) = (encrypt, self.mode == Encryption::Plain) {
            url.push_str("&encrypt_type=aes&msg_signature=");
            url.push_str(&msg_signature(&self.token, &ts, nonce, encrypt));
        }
        url
    }
}

fn build_item(
    i: u64,
    kind: LoadKind,
    cfg: &LoadConfig,
    crypt: &Crypt,
    signer: &Signer,
    now_secs: i64,
    msg_base: u64,
) -> Item {
    let (openid, message) = match kind {
        LoadKind::Text => (
            "o_load_user".to_owned(),
            MessageSpec::text(format!("load test {i}")),
        ),
        LoadKind::Image => (
            "o_load_user".to_owned(),
            MessageSpec::Image {
                pic_url: format!("http://mmbiz.qpic.cn/load/{i}"),
                media_id: format!("media_{i}"),
            },
        ),
        LoadKind::Voice => (
            "o_load_user".to_owned(),
            MessageSpec::Voice {
                media_id: format!("media_{i}"),
                format: "amr".into(),
                recognition: None,
            },
        ),
        LoadKind::Location => (
            "o_load_user".to_owned(),
            MessageSpec::Location {
                location_x: 23.134521,
                location_y: 113.358803,
                scale: 20,
                label: format!("place {i}"),
            },
        ),
        LoadKind::Link => (
            "o_load_user".to_owned(),
            MessageSpec::Link {
                title: format!("link {i}"),
                description: "load".into(),
                url: format!("https://example.invalid/{i}"),
            },
        ),
        // Events dedupe on FromUserName + CreateTime: a unique user per event keeps them apart.
        LoadKind::Event => (format!("o_load_{i}"), MessageSpec::click("load")),
    };
    let xml = message.to_xml(&cfg.to_user_name, &openid, now_secs, msg_base + i);
    let nonce = (1_000_000_000 + i).to_string();
    let encrypt = match cfg.mode {
        Encryption::Plain => None,
        _ => Some(crypt.encrypt(xml.as_bytes(), KeySlot::Current)),
    };
    let body = match (&encrypt, cfg.mode) {
        (None, _) => xml,
        (Some(e), Encryption::Compatible) => {
            let mut out = xml.trim_end_matches("</xml>").to_owned();
            cdata_el(&mut out, "Encrypt", e);
            out.push_str("</xml>");
            out
        }
        (Some(e), _) => {
            let mut out = String::with_capacity(e.len() + 96);
            out.push_str("<xml>");
            cdata_el(&mut out, "ToUserName", &cfg.to_user_name);
            cdata_el(&mut out, "Encrypt", e);
            out.push_str("</xml>");
            out
        }
    };
    let url = signer.url(now_secs, &nonce, &openid, encrypt.as_deref());
    let body = Bytes::from(body);
    Item {
        request: signer.request(&url, &body),
        url,
        body,
        encrypt,
        openid,
        nonce,
        timestamp: now_secs,
    }
}

fn pregenerate(cfg: &LoadConfig) -> Result<(Vec<Item>, bool), SimError> {
    let crypt = Crypt::from_parts(
        cfg.token.expose(),
        cfg.aes_key.expose(),
        &cfg.component_appid,
    )
    .map_err(|e| SimError::BadRequest(format!("aes_key: {e}")))?;
    let signer = Signer::new(cfg)?;
    let now = VirtualClock::wall_ms() / 1000;
    let msg_base = u64::try_from(VirtualClock::wall_ms()).unwrap_or(0) * 1000;
    let sample = build_item(0, LoadKind::Text, cfg, &crypt, &signer, now, msg_base);
    let per_item = sample.url.len() + sample.request.len() + sample.body.len() * 2 + 128;
    let max_items = (cfg.pool_bytes / per_item).max(1);
    let secs = cfg.duration.as_secs_f64().max(0.001);
    let needed = match cfg.rate {
        Some(rate) => (rate * secs).ceil() as usize + 1,
        // Closed loop: nobody knows the rate in advance; assume at most 100k/s.
        None => (100_000.0 * secs).ceil() as usize,
    };
    let count = needed.min(max_items).max(1);
    let total: u32 = cfg.mix.iter().map(|(_, w)| *w).sum();
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut items = Vec::with_capacity(count);
    for i in 0..count as u64 {
        let mut pick = rng.random_range(0..total.max(1));
        let mut kind = cfg.mix[0].0;
        for (k, w) in &cfg.mix {
            if pick < *w {
                kind = *k;
                break;
            }
            pick -= w;
        }
        items.push(build_item(i, kind, cfg, &crypt, &signer, now, msg_base));
    }
    Ok((items, needed > count))
}

/// Where requests come from: the pre-generated pool, re-signed when its timestamps get old.
#[derive(Clone)]
struct Source {
    items: Arc<Vec<Item>>,
    signer: Arc<Signer>,
    wrapped: Arc<AtomicBool>,
}

impl Source {
    /// The `i`-th request on the wire.
    fn request(&self, i: u64) -> Bytes {
        let len = self.items.len() as u64;
        if i >= len {
            self.wrapped.store(true, Ordering::Relaxed);
        }
        let item = &self.items[(i % len) as usize];
        let now_secs = VirtualClock::wall_ms() / 1000;
        if now_secs - item.timestamp > 30 {
            let url = self
                .signer
                .url(now_secs, &item.nonce, &item.openid, item.encrypt.as_deref());
            self.signer.request(&url, &item.body)
        } else {
            item.request.clone()
        }
    }
}

impl WorkerStats {
    fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 120_000_000, 3).ok(),
            ..Default::default()
        }
    }

    fn record(&mut self, status: Option<u16>, since: tokio::time::Instant) {
        match status {
            Some(code) => {
                self.completed += 1;
                *self.status.entry(code.to_string()).or_default() += 1;
                let micros = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
                if let Some(h) = &mut self.hist {
                    let _ = h.record(micros.clamp(1, 120_000_000));
                }
            }
            None => {
                self.errors += 1;
                *self.status.entry("error".into()).or_default() += 1;
            }
        }
    }

    fn merge(&mut self, other: WorkerStats) {
        self.sent += other.sent;
        self.completed += other.completed;
        self.errors += other.errors;
        for (k, v) in other.status {
            *self.status.entry(k).or_default() += v;
        }
        if let (Some(t), Some(h)) = (&mut self.hist, &other.hist) {
            let _ = t.add(h);
        }
    }
}

/// Closed loop (`--max`): `concurrency` workers, each on its own connection, each sending its
/// next request as soon as the previous one was answered.
async fn closed_loop(
    cfg: &Arc<LoadConfig>,
    source: &Source,
    end: tokio::time::Instant,
) -> WorkerStats {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(cfg.concurrency);
    for _ in 0..cfg.concurrency {
        let (cfg, source, next) = (Arc::clone(cfg), source.clone(), Arc::clone(&next));
        workers.push(tokio::spawn(async move {
            let mut stats = WorkerStats::new();
            let mut conn = Conn::new(source.signer.host.clone());
            loop {
                let sent_at = tokio::time::Instant::now();
                if sent_at >= end {
                    break;
                }
                let request = source.request(next.fetch_add(1, Ordering::Relaxed));
                stats.sent += 1;
                let status = conn.exchange(&request, cfg.timeout).await;
                stats.record(status, sent_at);
            }
            stats
        }));
    }
    let mut total = WorkerStats::new();
    for w in workers {
        if let Ok(stats) = w.await {
            total.merge(stats);
        }
    }
    total
}

/// Open loop (`--rate`): request `i` is due at `start + i / rate` and is sent then, whatever is
/// still outstanding, on an idle keep-alive connection (a new one if none is idle), with at
/// most `concurrency` in flight. Latency counts from the due time, so a slow answer shows in
/// its own latency, not as fewer requests (no coordinated omission).
async fn open_loop(
    cfg: &Arc<LoadConfig>,
    source: &Source,
    rate: f64,
    start: tokio::time::Instant,
    end: tokio::time::Instant,
) -> WorkerStats {
    let idle: Arc<std::sync::Mutex<Vec<Conn>>> = Arc::default();
    let stats = Arc::new(std::sync::Mutex::new(WorkerStats::new()));
    let permits = Arc::new(tokio::sync::Semaphore::new(cfg.concurrency));
    let mut in_flight = tokio::task::JoinSet::new();
    let mut sent = 0;
    for i in 0u64.. {
        let Ok(offset) = Duration::try_from_secs_f64(i as f64 / rate) else {
            break;
        };
        let Some(due) = start.checked_add(offset).filter(|due| *due < end) else {
            break;
        };
        tokio::time::sleep_until(due).await;
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let request = source.request(i);
        sent += 1;
        let (idle, stats, host, timeout) = (
            Arc::clone(&idle),
            Arc::clone(&stats),
            source.signer.host.clone(),
            cfg.timeout,
        );
        in_flight.spawn(async move {
            let pooled = idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop();
            let mut conn = pooled.unwrap_or_else(|| Conn::new(host));
            let status = conn.exchange(&request, timeout).await;
            if conn.stream.is_some() {
                idle.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(conn);
            }
            stats
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .record(status, due);
            drop(permit);
        });
        // Reap finished tasks as we go so the set stays small.
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
    let mut total = std::mem::replace(
        &mut *stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        WorkerStats::new(),
    );
    total.sent = sent;
    total
}

/// One keep-alive HTTP/1.1 connection: write a pre-serialized request, read the status and as
/// many body bytes as the answer declares. Any failure drops the connection (the next request
/// reconnects) and counts as a transport error.
struct Conn {
    host: String,
    stream: Option<tokio::net::TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    fn new(host: String) -> Self {
        Self {
            host,
            stream: None,
            buf: Vec::with_capacity(4096),
        }
    }

    async fn exchange(&mut self, request: &[u8], timeout: Duration) -> Option<u16> {
        match tokio::time::timeout(timeout, self.try_exchange(request)).await {
            Ok(Ok((status, keep_alive))) => {
                if !keep_alive {
                    self.stream = None;
                }
                Some(status)
            }
            _ => {
                self.stream = None;
                None
            }
        }
    }

    async fn try_exchange(&mut self, request: &[u8]) -> std::io::Result<(u16, bool)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if self.stream.is_none() {
            let stream = tokio::net::TcpStream::connect(&self.host).await?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no connection"))?;
        stream.write_all(request).await?;
        self.buf.clear();
        loop {
            if let Some(done) = parse_response(&self.buf)? {
                return Ok(done);
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// `Some((status, keep_alive))` once `buf` holds a whole response (Content-Length or chunked
/// body), `None` while more bytes are needed.
fn parse_response(buf: &[u8]) -> std::io::Result<Option<(u16, bool)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(std::io::Error::other(e)),
    };
    let status = response.code.unwrap_or(0);
    let mut length = None;
    let mut chunked = false;
    let mut keep_alive = true;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h.value.eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            keep_alive = !h.value.eq_ignore_ascii_case(b"close");
        }
    }
    let body = &buf[head_len..];
    if chunked {
        return Ok(chunked_complete(body).then_some((status, keep_alive)));
    }
    match length {
        Some(n) if body.len() >= n => Ok(Some((status, keep_alive))),
        Some(_) => Ok(None),
        // Neither: the body runs to the end of the connection; keep nothing of it.
        None => Ok(Some((status, false))),
    }
}

/// Whether a chunked body is complete (ends with the zero-size chunk).
fn chunked_complete(mut body: &[u8]) -> bool {
    loop {
        let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") else {
            return false;
        };
        let size = std::str::from_utf8(&body[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { return false };
        let chunk_end = line_end + 2 + size + 2;
        if size == 0 {
            return body.len() >= line_end + 4;
        }
        if body.len() < chunk_end {
            return false;
        }
        body = &body[chunk_end..];
    }
}

#[derive(Default)]
struct WorkerStats {
    hist: Option<Histogram<u64>>,
    status: BTreeMap<String, u64>,
    sent: u64,
    completed: u64,
    errors: u64,
}

/// Runs the load and reports. Fails only on bad configuration.
pub async fn run(cfg: LoadConfig) -> Result<LoadReport, SimError> {
    if cfg.concurrency == 0 || cfg.concurrency > 10_000 {
        return Err(SimError::BadRequest(
            "concurrency must be within 1..=10000".into(),
        ));
    }
    if let Some(rate) = cfg.rate
        && !(rate > 0.0 && rate.is_finite())
    {
        return Err(SimError::BadRequest("rate must be positive".into()));
    }
    if cfg.duration.is_zero() || cfg.duration > Duration::from_secs(7 * 86_400) {
        return Err(SimError::BadRequest(
            "duration must be positive and at most 7 days".into(),
        ));
    }
    if cfg.mix.is_empty() || cfg.mix.iter().all(|(_, w)| *w == 0) {
        return Err(SimError::BadRequest("mix needs a positive weight".into()));
    }
    url::Url::parse(&cfg.target())
        .map_err(|e| SimError::BadRequest(format!("bad gateway URL: {e}")))?;
    let pregen_started = Instant::now();
    let cfg = Arc::new(cfg);
    let (items, reused) = {
        let cfg = Arc::clone(&cfg);
        tokio::task::spawn_blocking(move || pregenerate(&cfg))
            .await
            .map_err(|e| SimError::BadRequest(format!("pre-generation failed: {e}")))??
    };
    let pregen_s = pregen_started.elapsed().as_secs_f64();
    let items = Arc::new(items);
    let signer = Arc::new(Signer::new(&cfg)?);
    let wrapped = Arc::new(AtomicBool::new(false));
    let source = Source {
        items: Arc::clone(&items),
        signer,
        wrapped: Arc::clone(&wrapped),
    };
    let start = tokio::time::Instant::now();
    let end = start + cfg.duration;
    let total = match cfg.rate {
        None => closed_loop(&cfg, &source, end).await,
        Some(rate) => open_loop(&cfg, &source, rate, start, end).await,
    };
    let elapsed_s = start.elapsed().as_secs_f64();
    let ms = |v: u64| v as f64 / 1000.0;
    let latency = match &total.hist {
        Some(h) if !h.is_empty() => Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        },
        _ => Latency {
            p50: 0.0,
            p90: 0.0,
            p99: 0.0,
            p999: 0.0,
            max: 0.0,
            mean: 0.0,
        },
    };
    Ok(LoadReport {
        url: cfg.target(),
        mode: cfg.mode,
        concurrency: cfg.concurrency,
        target_rate: cfg.rate,
        elapsed_s,
        sent: total.sent,
        completed: total.completed,
        errors: total.errors,
        throughput: total.completed as f64 / elapsed_s.max(1e-9),
        latency_ms: latency,
        status: total.status,
        unique_bodies: items.len(),
        reused_bodies: reused || wrapped.load(Ordering::Relaxed),
        pregen_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_complete_only_with_their_whole_body() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nsuccess";
        assert_eq!(parse_response(ok).unwrap(), Some((200, true)));
        assert_eq!(parse_response(&ok[..ok.len() - 2]).unwrap(), None);
        assert_eq!(parse_response(b"HTTP/1.1 503 Service").unwrap(), None);
        let close = b"HTTP/1.1 503 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        assert_eq!(parse_response(close).unwrap(), Some((503, false)));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nsuccess\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), Some((200, true)));
        assert_eq!(parse_response(&chunked[..chunked.len() - 3]).unwrap(), None);
        assert!(parse_response(b"NOT HTTP\r\n\r\n").is_err());
    }

    #[test]
    fn garbage_never_panics() {
        for junk in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            b"\r\n\r\n",
            b"HTTP/1.1 2",
        ] {
            let _ = parse_response(junk);
        }
        assert!(!chunked_complete(b"ffffffffffffffffffff\r\n"));
    }

    #[test]
    fn requests_are_serialized_once_with_path_and_length() {
        let cfg = LoadConfig::new(
            "http://127.0.0.1:9/",
            "acme",
            "wx1",
            "t",
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
            "wxc",
        );
        let signer = Signer::new(&cfg).unwrap();
        let req = signer.request("http://127.0.0.1:9/wx/acme/callback/wx1?x=1", b"<xml/>");
        assert_eq!(
            &req[..],
            b"POST /wx/acme/callback/wx1?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9\r\nContent-Type: text/xml\r\nContent-Length: 6\r\n\r\n<xml/>"
        );
        let mut https = cfg.clone();
        https.gateway = "https://example.invalid".into();
        assert!(Signer::new(&https).is_err());
    }
}
