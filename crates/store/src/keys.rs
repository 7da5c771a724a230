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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_tenant_hash_tag() {
        let k = Keys::new("wxhub", "acme");
        assert_eq!(k.prefix(), "wxhub:{acme}:");
        assert_eq!(k.dedupe("wx1", "msg:42"), "wxhub:{acme}:dedupe:wx1:msg:42");
    }
}
