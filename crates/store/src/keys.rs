/// Builds every Redis key of one tenant: `{namespace}:{<tenant>}:<rest>`.
///
/// The braces make `<tenant>` the Redis Cluster hash tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys of `tenant` in `namespace`.
    pub fn new(namespace: &str, tenant: &str) -> Self {
        Self {
            prefix: format!("{namespace}:{{{tenant}}}:"),
        }
    }

    /// The common prefix (`{ns}:{<tenant>}:`), e.g. for scans in tests and tools.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `…:dedupe:{appid}:{dedupe_key}` — callback retry marker.
    pub fn dedupe(&self, appid: &str, dedupe_key: &str) -> String {
        format!("{}dedupe:{appid}:{dedupe_key}", self.prefix)
    }

    /// `…:nonce:{timestamp}:{nonce}` — string, the digest of the one plaintext-mode body this
    /// (timestamp, nonce) pair carried first (`wxhub_store::nonces`).
    pub fn nonce(&self, timestamp: &str, nonce: &str) -> String {
        format!("{}nonce:{timestamp}:{nonce}", self.prefix)
    }

    /// `…:ticket` — hash: the latest component_verify_ticket (`v`), its `CreateTime` (`ct`)
    /// and when it was received (`at`, ms).
    pub fn ticket(&self) -> String {
        format!("{}ticket", self.prefix)
    }

    /// `…:token:{credential}` — hash: an access token or JS-SDK ticket (`v`), expiry (`exp`,
    /// ms), lifetime (`lt`, ms), refresh time (`at`, ms), the fence it was written with
    /// (`fence`) and `rej` when a client reported it rejected. Credentials: `component`, `app`,
    /// `authorizer:{appid}`, `jsapi`, `jsapi:{appid}`.
    pub fn token(&self, credential: &str) -> String {
        format!("{}token:{credential}", self.prefix)
    }

    /// `…:lock:{credential}` — string `{owner}:{fence}` with a PX expiry: the refresh lease.
    pub fn lock(&self, credential: &str) -> String {
        format!("{}lock:{credential}", self.prefix)
    }

    /// `…:fence` — counter: the tenant's monotonically increasing fencing tokens.
    pub fn fence(&self) -> String {
        format!("{}fence", self.prefix)
    }

    /// `…:schedule` — sorted set: credential → due time of its next refresh (ms).
    pub fn schedule(&self) -> String {
        format!("{}schedule", self.prefix)
    }

    /// `…:authorizer:{appid}` — hash: one authorizer record (status, refresh token, its fence,
    /// permission sets, times, profile).
    pub fn authorizer(&self, appid: &str) -> String {
        format!("{}authorizer:{appid}", self.prefix)
    }

    /// `…:authorizers` — sorted set (all scores 0): the appids of every known authorizer, for
    /// lexicographic paging.
    pub fn authorizers(&self) -> String {
        format!("{}authorizers", self.prefix)
    }

    /// `…:consumed:{message_id}` — marker of a bus event already applied (with a TTL).
    pub fn consumed(&self, message_id: &str) -> String {
        format!("{}consumed:{message_id}", self.prefix)
    }

    /// `…:epoch` — hash: the identity of the tenant's stored state: `id` (random), `at` (ms, when
    /// it was created) and `healed` (ms, when a re-list from WeChat completed after that). It lives
    /// in the tenant's slot like every other key of the tenant, so a store that lost the tenant's
    /// keys lost this one too: a replica that finds it missing or changed knows to write back
    /// what it holds.
    pub fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }

    /// `…:guard:{what}` — a short-lived marker so only one replica does `what` (e.g. asks
    /// WeChat to restart ticket pushes) per period.
    pub fn guard(&self, what: &str) -> String {
        format!("{}guard:{what}", self.prefix)
    }

    /// `…:guard:authcode:{digest}` — string: the claim on an authorization code named by a
    /// digest of it (`auth_codes`): `pending:{by}`, `done:{by}:{appid}` or `refused:{reason}`.
    pub fn auth_code(&self, digest: &str) -> String {
        self.guard(&format!("authcode:{digest}"))
    }

    /// `…:limit:{subject}` — string: a rate-limit bucket's theoretical arrival time (µs,
    /// Redis time), PX until the bucket is full again (`limiter`).
    pub fn limit(&self, subject: &str) -> String {
        format!("{}limit:{subject}", self.prefix)
    }

    /// `…:job:{id}` — hash: one message job of the messaging service (`jobs`): account,
    /// kind, API path, recipient, WeChat body, state and its details, lease, msgid.
    pub fn job(&self, id: &str) -> String {
        format!("{}job:{id}", self.prefix)
    }

    /// `…:job:{id}:attempts` — list: the attempts as JSON `{at_ms, errcode, errmsg}` of a job
    /// recorded before the attempts moved into the record's `attempts` field; read, no longer
    /// written.
    pub fn job_attempts(&self, id: &str) -> String {
        format!("{}job:{id}:attempts", self.prefix)
    }

    /// `…:jobs:{state}` — sorted set: job id → last change (ms), the tenant's recent jobs in
    /// one state (not queued or sending, which are listed from `all`); `…:jobs:all` by
    /// creation time.
    pub fn jobs(&self, state: &str) -> String {
        format!("{}jobs:{state}", self.prefix)
    }

    /// `…:idem:{digest}` — string: the job an idempotency key (named by its SHA-256) created,
    /// for 24 h.
    pub fn idempotency(&self, digest: &str) -> String {
        format!("{}idem:{digest}", self.prefix)
    }

    /// `…:msgid:{appid}:{msgid}` — string: the job WeChat's msgid belongs to (delivery
    /// reports name only the msgid).
    pub fn msgid(&self, appid: &str, msgid: i64) -> String {
        format!("{}msgid:{appid}:{msgid}", self.prefix)
    }

    /// `…:report:{appid}:{msgid}` — string `{1|0}:{status}`: a delivery report that arrived
    /// before its job was recorded sent (a resend after an unknown outcome); applied by the
    /// record.
    pub fn report(&self, appid: &str, msgid: i64) -> String {
        format!("{}report:{appid}:{msgid}", self.prefix)
    }

    /// `…:campaign:{id}` — hash: a campaign (`campaigns`): account, kind, API, body, state,
    /// total, fed, counters of its settled jobs.
    pub fn campaign(&self, id: &str) -> String {
        format!("{}campaign:{id}", self.prefix)
    }

    /// `…:campaign:{id}:recipients` — list of JSON `{touser, data}`.
    pub fn campaign_recipients(&self, id: &str) -> String {
        format!("{}campaign:{id}:recipients", self.prefix)
    }

    /// `…:campaigns` — set: the tenant's campaigns still to be fed (running or paused).
    pub fn campaigns(&self) -> String {
        format!("{}campaigns", self.prefix)
    }

    /// `…:in-broker` — sorted set: job id → when it was admitted: the tenant's single-message
    /// jobs announced on `{ns}.send` (or handed to a feeder to announce) and not yet in a final
    /// state — its share of the broker, at most `worker.tenant_window` (`jobs`).
    pub fn in_broker(&self) -> String {
        format!("{}in-broker", self.prefix)
    }

    /// `…:held` — list: ids of the tenant's single-message jobs stored while its window was
    /// full, oldest first; the feeder announces them as the window frees (`jobs`).
    pub fn held(&self) -> String {
        format!("{}held", self.prefix)
    }

    /// `…:feeding` — list: held ids a feeder took and is announcing; removed once each publish
    /// is confirmed, so the next feeder announces again what a stopped one left (`jobs`).
    pub fn feeding(&self) -> String {
        format!("{}feeding", self.prefix)
    }

    /// `…:park:{appid}:{api}` — string, PX: the (account, API) pair is parked after WeChat
    /// said its daily quota is spent (45009); nothing is sent to it until the key expires.
    pub fn park(&self, appid: &str, api: &str) -> String {
        format!("{}park:{appid}:{api}", self.prefix)
    }

    /// `…:pre-auth` — hash: the pre-auth code shared by the authorization pages (`v`), its
    /// marker (`m`) and expiry (`exp`, ms), PX until the end of its share window (`pre_auth`).
    pub fn pre_auth(&self) -> String {
        format!("{}pre-auth", self.prefix)
    }

    /// `…:oauth-state:{state}` — string: what a web-OAuth `state` the relay issued was for
    /// (JSON), EX its validity; taken with GETDEL, so a state is used once.
    pub fn oauth_state(&self, state: &str) -> String {
        format!("{}oauth-state:{state}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_tenant_hash_tag() {
        let k = Keys::new("wxhub", "acme");
        assert_eq!(k.prefix(), "wxhub:{acme}:");
        assert_eq!(k.dedupe("wx1", "msg:42"), "wxhub:{acme}:dedupe:wx1:msg:42");
        assert_eq!(
            k.token("authorizer:wx1"),
            "wxhub:{acme}:token:authorizer:wx1"
        );
        assert_eq!(k.lock("component"), "wxhub:{acme}:lock:component");
        for key in [
            k.ticket(),
            k.fence(),
            k.schedule(),
            k.authorizer("wx1"),
            k.authorizers(),
            k.consumed("m"),
            k.guard("push-ticket"),
            k.auth_code("0123abcd"),
            k.limit("page:addr:10.0.0.1"),
            k.pre_auth(),
            k.nonce("1700000000", "123456"),
            k.epoch(),
            k.job("j1"),
            k.job_attempts("j1"),
            k.jobs("sent"),
            k.idempotency("ab"),
            k.msgid("wx1", 7),
            k.report("wx1", 7),
            k.campaign("c1"),
            k.campaign_recipients("c1"),
            k.campaigns(),
            k.in_broker(),
            k.held(),
            k.feeding(),
            k.park("wx1", "/cgi-bin/message/template/send"),
        ] {
            assert!(key.starts_with("wxhub:{acme}:"), "{key}");
        }
    }
}
