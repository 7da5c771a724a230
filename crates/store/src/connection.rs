//! The connection every store module runs its commands on: one Redis (`redis.url`) or a Redis
//! Cluster (`redis.cluster_nodes`) behind one type, so no module, service or test helper knows
//! which it has.
//!
//! **Guarantee: a command is sent again only when Redis said it did not run it.** A command whose
//! connection dropped or timed out after it was written may have run; it is returned as an error
//! (an unknown outcome, see [`StoreError::Redis`](crate::StoreError)) and never replayed here,
//! in either mode: replaying `INCR fence`, a lease `SET NX`, a dedupe claim or a fenced write
//! whose first attempt did land would make the caller misread its own write.
//!
//! - One node: redis-rs's `ConnectionManager`, which reconnects in the background and never
//!   retries the command that failed.
//! - Cluster: redis-rs's async cluster client routes each command by its key's slot and keeps a
//!   connection per node, but it retries *every* failed request the same number of times —
//!   MOVED and a dropped connection alike (redis 1.8, `cluster_async::request::choose_response`:
//!   an I/O error on a sent command becomes `Reconnect` and the request is queued again). So its
//!   retries are set to 0 and this module retries, within `redis.cluster_retry_ms`, only the
//!   answers that mean "not run": `MOVED` (sent to the node it names; the client refreshes its
//!   slot map meanwhile), `ASK` (`ASKING` then the command, on the node it names; a pipeline
//!   waits for the migration instead), `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `LOADING`,
//!   `READONLY` (a primary demoted by a failover), a refused connection and a slot with no
//!   connection yet. A failover therefore costs the callers of the failed primary's slots
//!   errors for the commands in flight when it died, then waits of up to the budget while the
//!   replica is promoted.
//!
//! Every key of a tenant shares the tenant's slot (the hash tag in [`crate::Keys`]), so a
//! script or a transaction never spans slots. A plain pipeline may (the dedupe completer's batch
//! mixes tenants): in cluster mode it is split by slot, the parts are sent concurrently and the
//! answers put back in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};
use redis::{
    Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// A connection to run commands on (cheap to clone; clones share the node connections).
#[derive(Clone)]
pub struct StoreConn {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    Cluster(Cluster),
    /// Tests: every command's arguments are written to the log, then sent on.
    #[cfg(test)]
    Recording(Box<StoreConn>, Arc<std::sync::Mutex<Vec<Sent>>>),
}

/// A command as a recording connection saw it (tests).
#[cfg(test)]
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    /// Its arguments, name first.
    pub args: Vec<Vec<u8>>,
    /// The number of the pipeline it was part of (`None`: sent alone), and whether that
    /// pipeline was a transaction.
    pub pipeline: Option<(usize, bool)>,
}

#[cfg(test)]
fn args_of(cmd: &Cmd) -> Vec<Vec<u8>> {
    cmd.args_iter()
        .filter_map(|a| match a {
            redis::Arg::Simple(b) => Some(b.to_vec()),
            _ => None,
        })
        .collect()
}

impl std::fmt::Debug for StoreConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.inner {
            Inner::Single(_) => "StoreConn(single)",
            Inner::Cluster(_) => "StoreConn(cluster)",
            #[cfg(test)]
            Inner::Recording(..) => "StoreConn(recording)",
        })
    }
}

impl StoreConn {
    pub(crate) fn single(conn: ConnectionManager) -> Self {
        Self {
            inner: Inner::Single(conn),
        }
    }

    pub(crate) fn cluster(
        client: ClusterClient,
        config: redis::cluster::ClusterConfig,
        retry: Duration,
    ) -> Self {
        Self {
            inner: Inner::Cluster(Cluster {
                client: Arc::new(client),
                config,
                conn: Arc::new(OnceCell::new()),
                retry,
            }),
        }
    }

    /// Tests: this connection, writing every command it sends to `log`.
    #[cfg(test)]
    pub(crate) fn recording(self, log: Arc<std::sync::Mutex<Vec<Sent>>>) -> Self {
        Self {
            inner: Inner::Recording(Box::new(self), log),
        }
    }

    /// Whether this is a Redis Cluster connection.
    pub fn is_cluster(&self) -> bool {
        match &self.inner {
            Inner::Single(_) => false,
            Inner::Cluster(_) => true,
            #[cfg(test)]
            Inner::Recording(conn, _) => conn.is_cluster(),
        }
    }

    /// One `SCAN MATCH pattern` pass over every primary (one node: over it), keys unsorted and
    /// possibly repeated.
    pub(crate) async fn scan(&mut self, pattern: &str) -> RedisResult<Vec<String>> {
        match &mut self.inner {
            Inner::Single(conn) => scan_node(Node::Single(conn), pattern).await,
            Inner::Cluster(cluster) => {
                let mut conn = cluster.conn().await;
                let mut out = Vec::new();
                for (host, port) in primaries(&mut conn).await? {
                    out.extend(scan_node(Node::Cluster(&mut conn, host, port), pattern).await?);
                }
                Ok(out)
            }
            #[cfg(test)]
            Inner::Recording(conn, _) => Box::pin(conn.scan(pattern)).await,
        }
    }

    /// The `host:port` of every primary serving slots (one node: none). For tools and tests.
    pub async fn primaries(&mut self) -> RedisResult<Vec<(String, u16)>> {
        match &mut self.inner {
            Inner::Single(_) => Ok(Vec::new()),
            Inner::Cluster(cluster) => primaries(&mut cluster.conn().await).await,
            #[cfg(test)]
            Inner::Recording(conn, _) => Box::pin(conn.primaries()).await,
        }
    }
}

/// Where a `SCAN` runs: the one node, or one node of a cluster.
enum Node<'a> {
    Single(&'a mut ConnectionManager),
    Cluster(&'a mut ClusterConnection, String, u16),
}

/// `SCAN` to the end on one node.
async fn scan_node(mut node: Node<'_>, pattern: &str) -> RedisResult<Vec<String>> {
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(5000);
        let value = match &mut node {
            Node::Single(conn) => conn.req_packed_command(&cmd).await?,
            Node::Cluster(conn, host, port) => {
                conn.route_command(cmd, by_address(host, *port)).await?
            }
        };
        let (next, keys): (u64, Vec<String>) = redis::from_redis_value(value)?;
        out.extend(keys);
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

fn by_address(host: &str, port: u16) -> RoutingInfo {
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
        host: host.to_owned(),
        port,
    })
}

/// The primaries that serve slots, from `CLUSTER NODES` (`<id> <ip:port@cport[,host]> <flags>
/// <primary> … <slots>`): flags with `master` and without `fail`, `noaddr` or `handshake`.
async fn primaries(conn: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
    let text: String = redis::from_redis_value(
        conn.route_command(
            redis::cmd("CLUSTER").arg("NODES").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await?,
    )?;
    Ok(parse_primaries(&text))
}

fn parse_primaries(text: &str) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else {
            continue;
        };
        let flags: Vec<&str> = flags.split(',').collect();
        if !flags.contains(&"master")
            || flags
                .iter()
                .any(|f| matches!(*f, "fail" | "fail?" | "noaddr" | "handshake"))
            || fields.len() < 9
        {
            // No slots (fields 9..) means it serves nothing: an empty primary.
            continue;
        }
        let hostport = addr.split(['@', ',']).next().unwrap_or_default();
        if let Some((host, port)) = hostport.rsplit_once(':')
            && let Ok(port) = port.parse()
            && !host.is_empty()
        {
            out.push((host.to_owned(), port));
        }
    }
    out.sort();
    out.dedup();
    out
}

#[derive(Clone)]
struct Cluster {
    client: Arc<ClusterClient>,
    config: redis::cluster::ClusterConfig,
    /// Created on first use, inside the runtime (the client spawns its task then); like the
    /// one-node `ConnectionManager`, it connects in the background and a service starts while
    /// the cluster is still down.
    conn: Arc<OnceCell<ClusterConnection>>,
    /// How long a command Redis did not run is retried.
    retry: Duration,
}

impl Cluster {
    async fn conn(&self) -> ClusterConnection {
        self.conn
            .get_or_init(|| async {
                self.client
                    .get_pending_async_connection_with_config(self.config.clone())
            })
            .await
            .clone()
    }

    async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        let mut conn = self.conn().await;
        let deadline = Instant::now() + self.retry;
        let mut redirect: Option<Redirect> = None;
        let mut attempt = 0u32;
        loop {
            let result = match redirect.take() {
                None => conn.req_packed_command(cmd).await,
                Some(Redirect::Moved(host, port)) => {
                    conn.route_command(cmd.clone(), by_address(&host, port))
                        .await
                }
                Some(Redirect::Ask(host, port)) => {
                    let mut pipe = redis::pipe();
                    pipe.cmd("ASKING").ignore().add_command(cmd.clone());
                    conn.route_pipeline(pipe, 0, 2, SingleNodeRoutingInfo::ByAddress { host, port })
                        .await
                        .and_then(|mut values| {
                            values.pop().ok_or_else(|| {
                                RedisError::from((ErrorKind::Client, "ASKING: no answer"))
                            })
                        })
                        .and_then(|v| match v {
                            Value::ServerError(e) => Err(e.into()),
                            v => Ok(v),
                        })
                }
            };
            let err = match result {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            let Some(next) = not_run(&err) else {
                return Err(err);
            };
            attempt += 1;
            match next {
                NotRun::Redirect(to) => {
                    // A redirect is followed at once, but not forever (a slot bouncing
                    // between two nodes during a migration).
                    if attempt > 16 || Instant::now() >= deadline {
                        return Err(err);
                    }
                    redirect = Some(to);
                }
                NotRun::Wait => {
                    if !wait(attempt, deadline).await {
                        return Err(err);
                    }
                }
            }
        }
    }

    async fn pipeline(
        &self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let mut conn = self.conn().await;
        if !pipeline.is_transaction() {
            let groups = by_slot(pipeline);
            if groups.len() > 1 {
                let parts = groups.into_iter().map(|indices| {
                    let mut part = redis::pipe();
                    for &i in &indices {
                        if let Some(cmd) = pipeline.cmd_iter().nth(i) {
                            part.add_command(cmd.clone());
                        }
                    }
                    let this = self.clone();
                    async move {
                        let n = part.len();
                        (indices, Box::pin(this.pipeline(&part, 0, n)).await)
                    }
                });
                let mut out = vec![Value::Nil; pipeline.len()];
                for (indices, values) in futures::future::join_all(parts).await {
                    for (i, v) in indices.into_iter().zip(values?) {
                        out[i] = v;
                    }
                }
                return Ok(out);
            }
        }
        let deadline = Instant::now() + self.retry;
        let mut attempt = 0u32;
        loop {
            let err = match conn.req_packed_commands(pipeline, offset, count).await {
                Ok(values) => return Ok(values),
                Err(err) => err,
            };
            // Every command of the pipeline is in one slot, so "not run" is said of all of them.
            // A redirect is left to the client's refreshed slot map.
            if not_run(&err).is_none() {
                return Err(err);
            }
            attempt += 1;
            if !wait(attempt, deadline).await {
                return Err(err);
            }
        }
    }
}

/// Sleeps before the next attempt (25 ms doubling to 200 ms); false when that would pass
/// `deadline`.
async fn wait(attempt: u32, deadline: Instant) -> bool {
    let pause = Duration::from_millis(25u64 << attempt.min(4).saturating_sub(1));
    if Instant::now() + pause > deadline {
        return false;
    }
    tokio::time::sleep(pause).await;
    true
}

enum Redirect {
    Moved(String, u16),
    Ask(String, u16),
}

enum NotRun {
    Redirect(Redirect),
    Wait,
}

/// `Some` when Redis (or the client, before sending) says the command did not run.
fn not_run(err: &RedisError) -> Option<NotRun> {
    match err.kind() {
        ErrorKind::Server(ServerErrorKind::Moved) | ErrorKind::Server(ServerErrorKind::Ask) => {
            let redirect = err.redirect_node().and_then(|(addr, _slot)| {
                let (host, port) = addr.rsplit_once(':')?;
                Some((host.to_owned(), port.parse().ok()?))
            });
            Some(match redirect {
                Some((host, port)) if err.kind() == ErrorKind::Server(ServerErrorKind::Moved) => {
                    NotRun::Redirect(Redirect::Moved(host, port))
                }
                Some((host, port)) => NotRun::Redirect(Redirect::Ask(host, port)),
                None => NotRun::Wait,
            })
        }
        ErrorKind::Server(
            ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::BusyLoading
            | ServerErrorKind::ReadOnly,
        )
        | ErrorKind::ClusterConnectionNotFound => Some(NotRun::Wait),
        _ if err.is_connection_refusal() => Some(NotRun::Wait),
        _ => None,
    }
}

/// The key a command is routed by, for the commands the store pipelines: `EVAL`/`EVALSHA`
/// (their first key), anything else with a key first (`HGETALL k`, `SET k …`, `DEL k …`).
/// `None`: no key (it may go anywhere).
pub(crate) fn routing_key(cmd: &Cmd) -> Option<Vec<u8>> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|a| match a {
            redis::Arg::Simple(b) => Some(b),
            _ => None,
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let numkeys: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
            (numkeys > 0).then(|| args.get(3).map(|k| k.to_vec()))?
        }
        b"PING" | b"INFO" | b"TIME" | b"SCAN" | b"CLUSTER" | b"SCRIPT" | b"ASKING" | b"MULTI"
        | b"EXEC" => None,
        _ => args.get(1).map(|k| k.to_vec()),
    }
}

/// The pipeline's command indices grouped by slot, in order of first appearance; commands
/// without a key join the first group.
fn by_slot(pipeline: &Pipeline) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut index: HashMap<Slot, usize> = HashMap::new();
    let mut keyless = Vec::new();
    for (i, cmd) in pipeline.cmd_iter().enumerate() {
        match routing_key(cmd) {
            Some(key) => {
                let g = *index.entry(Slot::for_key(&key)).or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                groups[g].push(i);
            }
            None => keyless.push(i),
        }
    }
    match groups.first_mut() {
        Some(first) => {
            first.extend(keyless);
            first.sort_unstable();
        }
        None => groups.push(keyless),
    }
    groups
}

impl ConnectionLike for StoreConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.inner {
            Inner::Single(conn) => conn.req_packed_command(cmd),
            Inner::Cluster(cluster) => Box::pin(cluster.command(cmd)),
            #[cfg(test)]
            Inner::Recording(conn, log) => {
                log.lock().unwrap().push(Sent {
                    args: args_of(cmd),
                    pipeline: None,
                });
                conn.req_packed_command(cmd)
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.inner {
            Inner::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Inner::Cluster(cluster) => Box::pin(cluster.pipeline(cmd, offset, count)),
            #[cfg(test)]
            Inner::Recording(conn, log) => {
                let mut log_ = log.lock().unwrap();
                let n = log_
                    .iter()
                    .filter_map(|s| s.pipeline)
                    .map(|p| p.0 + 1)
                    .max();
                let n = n.unwrap_or(0);
                for c in cmd.cmd_iter() {
                    log_.push(Sent {
                        args: args_of(c),
                        pipeline: Some((n, cmd.is_transaction())),
                    });
                }
                drop(log_);
                conn.req_packed_commands(cmd, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Single(conn) => conn.get_db(),
            Inner::Cluster(_) => 0,
            #[cfg(test)]
            Inner::Recording(conn, _) => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_of_the_commands_the_store_pipelines() {
        let mut eval = redis::cmd("EVAL");
        eval.arg("return 1")
            .arg(1)
            .arg("wxhub:{a}:dedupe:x")
            .arg("p");
        assert_eq!(
            routing_key(&eval).as_deref(),
            Some(&b"wxhub:{a}:dedupe:x"[..])
        );
        let mut none = redis::cmd("EVAL");
        none.arg("return 1").arg(0);
        assert_eq!(routing_key(&none), None);
        let mut hgetall = redis::cmd("HGETALL");
        hgetall.arg("k");
        assert_eq!(routing_key(&hgetall).as_deref(), Some(&b"k"[..]));
        assert_eq!(routing_key(&redis::cmd("PING")), None);
    }

    #[test]
    fn a_pipeline_over_tenants_splits_by_slot_and_keeps_order() {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg("ns:{a}:x");
        pipe.cmd("GET").arg("ns:{b}:x");
        pipe.cmd("PING");
        pipe.cmd("GET").arg("ns:{a}:y");
        assert_ne!(Slot::for_key("ns:{a}:x"), Slot::for_key("ns:{b}:x"));
        assert_eq!(by_slot(&pipe), vec![vec![0, 2, 3], vec![1]]);
    }

    #[test]
    fn primaries_are_read_from_cluster_nodes() {
        let text = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7002@17002 master - 0 1 2 connected 5461-10922
c3 127.0.0.1:7003@17003 master,fail - 0 1 3 connected 10923-16383
d4 127.0.0.1:7004@17004,host.example slave a1 0 1 1 connected
e5 127.0.0.1:7005@17005 master - 0 1 5 connected
";
        assert_eq!(
            parse_primaries(text),
            vec![
                ("127.0.0.1".to_owned(), 7001),
                ("127.0.0.1".to_owned(), 7002)
            ]
        );
    }

    #[test]
    fn only_what_redis_did_not_run_is_retried() {
        let moved = RedisError::from((
            ErrorKind::Server(ServerErrorKind::Moved),
            "moved",
            "3999 127.0.0.1:7002".to_owned(),
        ));
        assert!(matches!(
            not_run(&moved),
            Some(NotRun::Redirect(Redirect::Moved(h, 7002))) if h == "127.0.0.1"
        ));
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(not_run(&refused), Some(NotRun::Wait)));
        for unknown in [
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::TimedOut,
            std::io::ErrorKind::UnexpectedEof,
        ] {
            let err = RedisError::from(std::io::Error::from(unknown));
            assert!(not_run(&err).is_none(), "{unknown:?} must not be retried");
        }
        let script = RedisError::from((ErrorKind::Server(ServerErrorKind::ResponseError), "x"));
        assert!(not_run(&script).is_none());
    }
}
