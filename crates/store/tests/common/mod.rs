//! The Redis the store's tests run against: a Redis Cluster when `WXHUB_TEST_REDIS_CLUSTER`
//! lists its nodes (comma-separated; `scripts/redis-cluster.sh urls` prints them), else
//! `WXHUB_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`). The same rule as
//! `wxhub_testkit::redis_config`, which this crate cannot use (testkit depends on it).

use wxhub_store::RedisConfig;

pub fn config() -> RedisConfig {
    let nodes: Vec<String> = std::env::var("WXHUB_TEST_REDIS_CLUSTER")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    if nodes.is_empty() {
        RedisConfig::new(
            std::env::var("WXHUB_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        )
    } else {
        RedisConfig::cluster(nodes)
    }
}
