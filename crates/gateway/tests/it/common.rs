//! The harness: a gateway in-process on port 0 against the real Redis and RabbitMQ, in a unique
//! namespace per test (deleted by `stop`, or by the harness's `Drop` when a test fails first);
//! WeChat-style requests built with the crypto and message crates; a TCP proxy in front of the
//! broker that a test can take down or stall.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::message::BasicGetMessage;
use prost::Message as _;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wxhub_bus::Bus;
use wxhub_crypto::{AesKey, Crypt, KeySlot, msg_signature, random_nonce, signature};
use wxhub_gateway::{AppState, Gateway, GatewayConfig};
use wxhub_message::{Limits, Message, parse_envelope, parse_message};
use wxhub_proto::events::v1::CallbackEvent;
use wxhub_runtime::config::Source;
use wxhub_runtime::{Clock, Listeners, Service};
use wxhub_testkit::Namespace;

pub const K_COMP: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
pub const K_COMP_B: &str = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";
pub const K_OA: &str = "qPcxoOmy62xVVzwSvp2OSVqg6UAzcHO1ORqg8PHVi8q";
pub const K_CORP: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefg";
pub const K_ROT: &str = "ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkj";

pub const COMP_APPID: &str = "wxcomp0000000001";
pub const COMP_B_APPID: &str = "wxcompb000000002";
pub const OA_APPID: &str = "wxoa000000000003";
pub const CORP_ID: &str = "ww1234567890abcd";
pub const ROT_APPID: &str = "wxrot00000000005";
/// Tenants `comp` and `comp-b` share this token, so only the key tells them apart.
pub const SHARED_TOKEN: &str = "comptoken";

/// The tenants file every test starts with.
pub fn tenants_toml() -> String {
    format!(
        r#"
[[tenants]]
id = "comp"
kind = "component"
app_id = "{COMP_APPID}"
app_secret = "comp-secret-value"
token = "{SHARED_TOKEN}"
encoding_aes_key = "{K_COMP}"

[[tenants]]
id = "comp-b"
kind = "component"
app_id = "{COMP_B_APPID}"
app_secret = "comp-b-secret-value"
token = "{SHARED_TOKEN}"
encoding_aes_key = "{K_COMP_B}"

[[tenants]]
id = "oa"
kind = "official_account"
app_id = "{OA_APPID}"
app_secret = "oa-secret-value"
token = "oatoken"
encoding_aes_key = "{K_OA}"
# Configured in WeChat's plaintext mode (tests of the other modes use it too).
plaintext = true

[[tenants]]
id = "corp"
kind = "wecom"
app_id = "{CORP_ID}"
app_secret = "corp-secret-value"
token = "corptoken"
encoding_aes_key = "{K_CORP}"
agent_id = "1000002"

[[tenants]]
id = "rot"
kind = "component"
app_id = "{ROT_APPID}"
app_secret = "rot-secret-value"
token = "rottoken"
encoding_aes_key = "{K_ROT}"
previous_encoding_aes_key = "{K_COMP}"
"#
    )
}

pub fn crypt(token: &str, key: &str, appid: &str) -> Crypt {
    Crypt::from_parts(token, key, appid).unwrap()
}
pub fn comp() -> Crypt {
    crypt(SHARED_TOKEN, K_COMP, COMP_APPID)
}
pub fn comp_b() -> Crypt {
    crypt(SHARED_TOKEN, K_COMP_B, COMP_B_APPID)
}
pub fn oa() -> Crypt {
    crypt("oatoken", K_OA, OA_APPID)
}
pub fn corp() -> Crypt {
    crypt("corptoken", K_CORP, CORP_ID)
}
/// The rotated tenant's crypt with only its current key.
pub fn rot() -> Crypt {
    crypt("rottoken", K_ROT, ROT_APPID)
}
/// The rotated tenant's crypt with only its previous key.
pub fn rot_previous() -> Crypt {
    crypt("rottoken", K_COMP, ROT_APPID)
}

pub fn now() -> i64 {
    wxhub_runtime::unix_ms() / 1000
}

/// Options of one harness.
#[derive(Default)]
pub struct Options {
    pub tenants: Option<String>,
    pub amqp_url: Option<String>,
    pub redis_url: Option<String>,
    pub env: Vec<(&'static str, String)>,
    /// The gateway's clock for CreateTime (default: the system clock).
    pub clock: Option<Arc<dyn Clock>>,
}

pub struct Harness {
    pub ns: Namespace,
    pub base: String,
    pub http: reqwest::Client,
    /// A reader on the real broker (the gateway's own bus may go through a proxy).
    pub reader: Bus,
    pub state: AppState,
    pub tenants_file: std::path::PathBuf,
    reader_cancel: CancellationToken,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

impl Harness {
    pub async fn start(label: &str) -> Self {
        Self::start_with(label, Options::default()).await
    }

    pub async fn start_with(label: &str, opts: Options) -> Self {
        wxhub_runtime::telemetry::init_for_tests();
        let ns = Namespace::new(label);
        let dir = tempfile::tempdir().unwrap();
        let tenants_file = dir.path().join("tenants.toml");
        std::fs::write(&tenants_file, opts.tenants.unwrap_or_else(tenants_toml)).unwrap();
        let own_redis = opts.redis_url.is_some();
        let mut env: Vec<(String, String)> = vec![
            ("WXHUB_NAMESPACE".into(), ns.name().to_owned()),
            (
                "WXHUB_REDIS__URL".into(),
                opts.redis_url.unwrap_or_else(wxhub_testkit::redis_url),
            ),
            (
                "WXHUB_AMQP__URL".into(),
                opts.amqp_url
                    .clone()
                    .unwrap_or_else(wxhub_testkit::amqp_url),
            ),
            (
                "WXHUB_TENANTS__FILE".into(),
                tenants_file.display().to_string(),
            ),
            ("WXHUB_TENANTS__RELOAD_INTERVAL_MS".into(), "50".into()),
            ("WXHUB_GATEWAY__LISTEN".into(), "127.0.0.1:0".into()),
            // The testkit declares the topology with a delivery limit of 5; every declarer must
            // agree or the broker refuses the second declaration.
            ("WXHUB_AMQP__DELIVERY_LIMIT".into(), "5".into()),
            // A test sends a handful of callbacks; 256 channels per gateway (the default) opened
            // by dozens of parallel tests only slow the shared broker down.
            ("WXHUB_AMQP__PUBLISHER_CHANNELS".into(), "8".into()),
        ];
        if opts.amqp_url.is_none() {
            // Every node, when the suite runs against a RabbitMQ cluster (not behind a proxy).
            env.extend(wxhub_testkit::amqp_env().into_iter().skip(1));
        }
        if !own_redis {
            // Cluster mode, when the suite runs against a Redis Cluster (not a dead port).
            env.extend(wxhub_testkit::redis_env().into_iter().skip(1));
        }
        env.extend(opts.env.into_iter().map(|(k, v)| (k.to_owned(), v)));
        let config = GatewayConfig::load(&Source { file: None, env }).unwrap();
        let reader_cancel = CancellationToken::new();
        let reader = ns.bus(&reader_cancel).await;
        let mut options = wxhub_gateway::Options::default();
        if let Some(clock) = opts.clock {
            options.clock = clock;
        }
        let gateway = Gateway::build(config, options).await.unwrap();
        let state = gateway.state().clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.serve(Listeners::main(listener), async {
            let _ = stopped.await;
        }));
        Self {
            ns,
            base,
            http: http(),
            reader,
            state,
            tenants_file,
            reader_cancel,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    /// Waits until the gateway's broker connection is up (topology declared).
    pub async fn wait_connected(&self) {
        assert!(
            self.state
                .bus()
                .wait_connected(Duration::from_secs(30))
                .await,
            "the gateway did not connect to RabbitMQ"
        );
    }

    pub async fn post(&self, cb: &Callback) -> (StatusCode, String) {
        self.post_with(cb, &[]).await
    }

    pub async fn post_with(&self, cb: &Callback, headers: &[(&str, &str)]) -> (StatusCode, String) {
        let mut req = self
            .http
            .post(format!("{}{}", self.base, cb.path_and_query))
            .body(cb.body.clone());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        (status, res.text().await.unwrap())
    }

    pub async fn get(&self, path_and_query: &str) -> (StatusCode, String) {
        let res = self
            .http
            .get(format!("{}{}", self.base, path_and_query))
            .send()
            .await
            .unwrap();
        let status = res.status();
        (status, res.text().await.unwrap())
    }

    pub fn unrouted(&self) -> String {
        self.ns.topology().unrouted_queue()
    }

    /// `{ns}.send-status`: where the delivery reports of sent messages are bound.
    pub fn send_status(&self) -> String {
        self.ns.topology().send_status_queue()
    }

    pub fn token_control(&self) -> String {
        self.ns.topology().token_control_queue()
    }

    pub fn release_check(&self) -> String {
        self.ns.topology().release_check_queue()
    }

    /// Everything in `queue` now (callbacks answered 2xx are already there).
    pub async fn take(&self, queue: &str) -> Vec<BasicGetMessage> {
        self.ns
            .drain_queue(&self.reader, queue, Duration::from_millis(100))
            .await
    }

    /// Asserts that no callback left any trace: every queue empty, no Redis key.
    pub async fn assert_no_state(&self) {
        for q in [self.unrouted(), self.token_control(), self.release_check()] {
            let got = self.take(&q).await;
            assert!(got.is_empty(), "{q} has {} messages", got.len());
        }
        assert!(
            self.redis_keys().await.is_empty(),
            "redis keys: {:?}",
            self.redis_keys().await
        );
    }

    pub async fn redis_keys(&self) -> Vec<String> {
        self.ns
            .store()
            .scan_keys(&format!("{}:*", self.ns.name()))
            .await
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.1
    }

    /// Shuts the gateway down (bounded drain) and deletes the namespace.
    pub async fn stop(mut self) {
        self.shutdown().await.unwrap();
        self.ns.cleanup(Some(&self.reader), &[]).await;
        self.reader_cancel.cancel();
    }

    /// Signals shutdown and waits for `serve` to return.
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap(),
            None => Ok(()),
        }
    }

    /// Starts the shutdown without waiting.
    pub fn begin_shutdown(&mut self) -> JoinHandle<anyhow::Result<()>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().unwrap()
    }
}

/// One callback request: path with query, and body.
#[derive(Debug, Clone)]
pub struct Callback {
    pub path_and_query: String,
    pub body: String,
}

/// How to frame a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Safe,
    Compatible,
    Plain,
    /// WeCom: always encrypted, only `msg_signature`.
    Wecom,
}

/// Builds a callback exactly as WeChat would: `xml` is the plaintext message.
pub fn callback(path: &str, crypt: &Crypt, framing: Framing, xml: &str) -> Callback {
    callback_at(path, crypt, framing, xml, now(), KeySlot::Current)
}

pub fn callback_at(
    path: &str,
    crypt: &Crypt,
    framing: Framing,
    xml: &str,
    timestamp: i64,
    slot: KeySlot,
) -> Callback {
    let ts = timestamp.to_string();
    let nonce = random_nonce(10);
    let to = extract(xml, "ToUserName")
        .or_else(|| extract(xml, "AppId"))
        .unwrap_or_default();
    match framing {
        Framing::Plain => Callback {
            path_and_query: format!(
                "{path}?signature={}&timestamp={ts}&nonce={nonce}&openid=o1",
                signature(crypt.token(), &ts, &nonce)
            ),
            body: xml.to_owned(),
        },
        Framing::Safe | Framing::Compatible | Framing::Wecom => {
            let encrypt = crypt.encrypt(xml.as_bytes(), slot);
            let body = envelope_body(xml, &to, &encrypt, framing);
            let ms = msg_signature(crypt.token(), &ts, &nonce, &encrypt);
            let path_and_query = if framing == Framing::Wecom {
                format!("{path}?msg_signature={ms}&timestamp={ts}&nonce={nonce}")
            } else {
                format!(
                    "{path}?signature={}&timestamp={ts}&nonce={nonce}&openid=o1&encrypt_type=aes&msg_signature={ms}",
                    signature(crypt.token(), &ts, &nonce)
                )
            };
            Callback {
                path_and_query,
                body,
            }
        }
    }
}

/// The envelope around `encrypt`, signed over exactly that `encrypt` string.
pub fn signed_envelope(path: &str, crypt: &Crypt, to: &str, encrypt: &str) -> Callback {
    let ts = now().to_string();
    let nonce = random_nonce(10);
    let ms = msg_signature(crypt.token(), &ts, &nonce, encrypt);
    Callback {
        path_and_query: format!(
            "{path}?signature={}&timestamp={ts}&nonce={nonce}&encrypt_type=aes&msg_signature={ms}",
            signature(crypt.token(), &ts, &nonce)
        ),
        body: format!(
            "<xml><ToUserName><![CDATA[{to}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
        ),
    }
}

fn envelope_body(xml: &str, to: &str, encrypt: &str, framing: Framing) -> String {
    match framing {
        Framing::Compatible => {
            // The plaintext fields next to Encrypt.
            let inner = xml
                .trim()
                .trim_start_matches("<xml>")
                .trim_end_matches("</xml>");
            format!("<xml>{inner}<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>")
        }
        Framing::Wecom => format!(
            "<xml><ToUserName><![CDATA[{to}]]></ToUserName><AgentID><![CDATA[1000002]]></AgentID><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
        ),
        _ if xml.contains("<InfoType>") || xml.contains("<InfoType><![CDATA[") => format!(
            "<xml><AppId><![CDATA[{to}]]></AppId><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
        ),
        _ => format!(
            "<xml><ToUserName><![CDATA[{to}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
        ),
    }
}

fn extract(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(
        xml[start..end]
            .trim_start_matches("<![CDATA[")
            .trim_end_matches("]]>")
            .to_owned(),
    )
}

pub fn text_xml(to: &str, from: &str, content: &str, msg_id: u64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{to}]]></ToUserName><FromUserName><![CDATA[{from}]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId></xml>",
        now()
    )
}

pub fn event_xml(to: &str, from: &str, event: &str, key: Option<&str>) -> String {
    let key = key
        .map(|k| format!("<EventKey><![CDATA[{k}]]></EventKey>"))
        .unwrap_or_default();
    format!(
        "<xml><ToUserName><![CDATA[{to}]]></ToUserName><FromUserName><![CDATA[{from}]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{event}]]></Event>{key}</xml>",
        now()
    )
}

pub fn ticket_xml(component_appid: &str, ticket: &str) -> String {
    format!(
        "<xml><AppId><![CDATA[{component_appid}]]></AppId>\n<CreateTime>{}</CreateTime>\n<InfoType><![CDATA[component_verify_ticket]]></InfoType>\n<ComponentVerifyTicket><![CDATA[{ticket}]]></ComponentVerifyTicket>\n</xml>",
        now()
    )
}

/// Decodes the CallbackEvent of a delivered message.
pub fn event_of(m: &BasicGetMessage) -> CallbackEvent {
    CallbackEvent::decode(m.delivery.data.as_slice()).unwrap()
}

pub fn header(m: &BasicGetMessage, name: &str) -> Option<String> {
    let headers = m.delivery.properties.headers().as_ref()?;
    headers.inner().iter().find_map(|(k, v)| {
        if k.as_str() == name {
            match v {
                lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
                _ => None,
            }
        } else {
            None
        }
    })
}

pub fn message_id(m: &BasicGetMessage) -> String {
    m.delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// Verifies and decrypts an encrypted passive reply with `crypt` (token + key + appid), and
/// parses the message inside.
pub fn open_reply(crypt: &Crypt, body: &str) -> Result<Message, String> {
    let env = parse_envelope(body.as_bytes(), &Limits::default()).map_err(|e| e.to_string())?;
    let root = env.root();
    let encrypt = env.encrypt().ok_or("no Encrypt")?;
    let sig = root.child_text("MsgSignature").ok_or("no MsgSignature")?;
    let ts = root.child_text("TimeStamp").ok_or("no TimeStamp")?;
    let nonce = root.child_text("Nonce").ok_or("no Nonce")?;
    crypt
        .verify_msg_signature(sig, ts, nonce, encrypt)
        .map_err(|e| e.to_string())?;
    let plain = crypt.decrypt(encrypt).map_err(|e| e.to_string())?;
    parse_message(plain.message_str().map_err(|e| e.to_string())?).map_err(|e| e.to_string())
}

/// A crypt that can only decrypt with exactly this key (no fallback).
pub fn only_key(token: &str, key: &str, appid: &str) -> Crypt {
    Crypt::new(token, appid, AesKey::parse(key).unwrap(), None)
}

/// What the broker proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward.
    Up,
    /// Close every connection and refuse new ones (the broker is down).
    Down,
    /// Keep connections open but hold every byte (the broker hangs).
    Stalled,
}

/// `host:port` of the test broker (the first node when testing against a cluster).
pub fn broker_addr() -> String {
    let url = url::Url::parse(&wxhub_testkit::amqp_url()).expect("the test AMQP URL");
    format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(5672)
    )
}

/// A TCP proxy in front of RabbitMQ.
pub struct Proxy {
    pub port: u16,
    mode: watch::Sender<ProxyMode>,
    held: Arc<AtomicUsize>,
    cancel: CancellationToken,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mode, _) = watch::channel(ProxyMode::Up);
        let held = Arc::new(AtomicUsize::new(0));
        let cancel = CancellationToken::new();
        let (tx, upstream, held2, cancel2) = (
            mode.clone(),
            upstream.to_owned(),
            held.clone(),
            cancel.clone(),
        );
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = cancel2.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((client, _)) = accepted else { continue };
                if *tx.borrow() == ProxyMode::Down {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, tx.subscribe(), held2.clone()));
                tokio::spawn(pump(sr, cw, tx.subscribe(), held2.clone()));
            }
        });
        Self {
            port,
            mode,
            held,
            cancel,
        }
    }

    /// An AMQP URL through this proxy.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn set(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }

    /// Chunks held back while stalled.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.mode.send_replace(ProxyMode::Down);
    }
}

async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<ProxyMode>,
    held: Arc<AtomicUsize>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            n = r.read(&mut buf) => {
                let n = match n { Ok(0) | Err(_) => return, Ok(n) => n };
                let mut counted = false;
                loop {
                    let m = *mode.borrow_and_update();
                    match m {
                        ProxyMode::Up => break,
                        ProxyMode::Down => return,
                        ProxyMode::Stalled => {
                            if !counted {
                                held.fetch_add(1, Ordering::SeqCst);
                                counted = true;
                            }
                        }
                    }
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
                if w.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            changed = mode.changed() => {
                if changed.is_err() || *mode.borrow() == ProxyMode::Down {
                    return;
                }
            }
        }
    }
}

/// Polls `f` until it returns `Some`, at most `tries` times, `every` apart.
pub async fn eventually<T, F, Fut>(tries: usize, every: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    for _ in 0..tries {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(every).await;
    }
    None
}
