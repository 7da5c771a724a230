//! Fault injection on the WeChat API endpoints: error codes, latency and dropped connections.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::SimError;
use crate::endpoint::Endpoint;

/// One fault rule. It matches an API path the sim serves (or every one with `"*"`); each matching
/// call rolls `probability` (default 1) and, on a hit, gets the latency, then the error or the
/// dropped connection. With `times`, the rule disappears after that many hits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// API path such as `/cgi-bin/component/api_authorizer_token`, or `*`.
    pub path: String,
    /// Answer with this `errcode` instead of serving the call (e.g. -1, 45009, 40001, 61023).
    #[serde(default)]
    pub errcode: Option<i64>,
    /// Custom `errmsg` (default: WeChat's text for the code).
    #[serde(default)]
    pub errmsg: Option<String>,
    /// Sleep this long (real time) before answering, so callers' timeouts fire.
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Close the connection without any response.
    #[serde(default)]
    pub drop_connection: bool,
    /// Serve the call (it takes effect: a message is sent), then wait this long (real time)
    /// before answering: a caller's timeout then fires after WeChat acted, the unknown
    /// outcome of a send.
    #[serde(default)]
    pub respond_after_ms: Option<u64>,
    /// Chance (0..=1) that a matching call is hit (default 1).
    #[serde(default)]
    pub probability: Option<f64>,
    /// Hit only the next N matching calls (default: until cleared).
    #[serde(default)]
    pub times: Option<u64>,
}

impl FaultSpec {
    /// A rule answering the next `times` calls of `path` with `errcode`.
    pub fn error(path: &str, errcode: i64, times: Option<u64>) -> Self {
        Self {
            path: path.to_owned(),
            errcode: Some(errcode),
            errmsg: None,
            latency_ms: None,
            drop_connection: false,
            respond_after_ms: None,
            probability: None,
            times,
        }
    }

    /// A rule serving calls of `path` and answering only `delay` later.
    pub fn respond_after(path: &str, delay: Duration, times: Option<u64>) -> Self {
        Self {
            respond_after_ms: Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)),
            errcode: None,
            ..Self::error(path, 0, times)
        }
    }

    /// A rule delaying calls of `path`.
    pub fn latency(path: &str, latency: Duration, times: Option<u64>) -> Self {
        Self {
            latency_ms: Some(u64::try_from(latency.as_millis()).unwrap_or(u64::MAX)),
            errcode: None,
            ..Self::error(path, 0, times)
        }
    }

    /// A rule closing the connection of calls to `path` without an answer.
    pub fn drop_connection(path: &str, times: Option<u64>) -> Self {
        Self {
            drop_connection: true,
            errcode: None,
            ..Self::error(path, 0, times)
        }
    }

    /// Sets the hit probability.
    pub fn with_probability(mut self, p: f64) -> Self {
        self.probability = Some(p);
        self
    }

    /// Checks the rule; its target: `None` for every endpoint (`*`).
    pub(crate) fn validate(&self) -> Result<Option<Endpoint>, SimError> {
        if self.path != "*" && !self.path.starts_with('/') {
            return Err(SimError::BadRequest(
                "fault path must start with '/' or be '*'".into(),
            ));
        }
        if self.errcode.is_none()
            && self.latency_ms.is_none()
            && !self.drop_connection
            && self.respond_after_ms.is_none()
        {
            return Err(SimError::BadRequest(
                "fault needs errcode, latency_ms, drop_connection or respond_after_ms".into(),
            ));
        }
        if self.respond_after_ms.is_some_and(|ms| ms > 600_000) {
            return Err(SimError::BadRequest(
                "respond_after_ms must be at most 600000".into(),
            ));
        }
        if self.errcode.is_some() && self.drop_connection {
            return Err(SimError::BadRequest(
                "errcode and drop_connection are exclusive".into(),
            ));
        }
        if let Some(p) = self.probability
            && !(0.0..=1.0).contains(&p)
        {
            return Err(SimError::BadRequest(
                "probability must be within 0..=1".into(),
            ));
        }
        if self.times == Some(0) {
            return Err(SimError::BadRequest("times must be at least 1".into()));
        }
        if self.latency_ms.is_some_and(|ms| ms > 600_000) {
            return Err(SimError::BadRequest(
                "latency_ms must be at most 600000".into(),
            ));
        }
        match self.path.as_str() {
            "*" => Ok(None),
            path => Endpoint::parse(path, "fault path", |_| true)
                .map(Some)
                .map_err(SimError::BadRequest),
        }
    }
}

/// An installed fault with its id and remaining hits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Fault {
    /// Id to delete it with.
    pub id: u64,
    /// The rule.
    #[serde(flatten)]
    pub spec: FaultSpec,
    /// Hits left when `times` was given.
    pub remaining: Option<u64>,
    /// How many calls it hit so far.
    pub hits: u64,
}

/// What to do with one call.
#[derive(Debug, Default)]
pub(crate) struct Decision {
    pub latency: Option<Duration>,
    /// Serve the call, then wait this long before answering.
    pub respond_after: Option<Duration>,
    pub error: Option<(i64, Option<String>)>,
    pub drop: bool,
}

/// An installed fault with the endpoint it targets (`None`: every one), resolved once.
struct Rule {
    target: Option<Endpoint>,
    fault: Fault,
}

pub(crate) struct Faults {
    rules: Vec<Rule>,
    next_id: u64,
    rng: StdRng,
}

impl Faults {
    pub(crate) fn new(seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::seed_from_u64(rand::random()),
        };
        Self {
            rules: Vec::new(),
            next_id: 1,
            rng,
        }
    }

    pub(crate) fn add(&mut self, spec: FaultSpec) -> Result<u64, SimError> {
        let target = spec.validate()?;
        let id = self.next_id;
        self.next_id += 1;
        self.rules.push(Rule {
            target,
            fault: Fault {
                id,
                remaining: spec.times,
                spec,
                hits: 0,
            },
        });
        Ok(id)
    }

    pub(crate) fn list(&self) -> Vec<Fault> {
        self.rules.iter().map(|r| r.fault.clone()).collect()
    }

    pub(crate) fn remove(&mut self, id: u64) -> bool {
        let before = self.rules.len();
        self.rules.retain(|r| r.fault.id != id);
        before != self.rules.len()
    }

    pub(crate) fn clear(&mut self) {
        self.rules.clear();
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Rolls every rule matching `endpoint`, in the order they were added.
    pub(crate) fn decide(&mut self, endpoint: Endpoint) -> Decision {
        let mut decision = Decision::default();
        for Rule { target, fault } in &mut self.rules {
            if target.is_some_and(|t| t != endpoint) {
                continue;
            }
            let p = fault.spec.probability.unwrap_or(1.0);
            if p < 1.0 && !self.rng.random_bool(p) {
                continue;
            }
            fault.hits += 1;
            if let Some(left) = &mut fault.remaining {
                *left = left.saturating_sub(1);
            }
            if let Some(ms) = fault.spec.latency_ms {
                let add = Duration::from_millis(ms);
                decision.latency = Some(decision.latency.unwrap_or_default() + add);
            }
            if let Some(ms) = fault.spec.respond_after_ms {
                decision.respond_after = Some(Duration::from_millis(ms));
            }
            if decision.error.is_none() && !decision.drop {
                if let Some(code) = fault.spec.errcode {
                    decision.error = Some((code, fault.spec.errmsg.clone()));
                } else if fault.spec.drop_connection {
                    decision.drop = true;
                }
            }
        }
        self.rules.retain(|r| r.fault.remaining != Some(0));
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "/cgi-bin/token";

    #[test]
    fn times_limits_hits_and_seeded_probability_is_reproducible() {
        let mut faults = Faults::new(Some(7));
        faults.add(FaultSpec::error(A, 45009, Some(2))).unwrap();
        assert_eq!(
            faults.decide(Endpoint::Token).error.map(|e| e.0),
            Some(45009)
        );
        assert!(faults.decide(Endpoint::StableToken).error.is_none());
        assert_eq!(
            faults.decide(Endpoint::Token).error.map(|e| e.0),
            Some(45009)
        );
        assert!(faults.decide(Endpoint::Token).error.is_none());
        assert!(faults.is_empty());

        let run = |seed| {
            let mut f = Faults::new(Some(seed));
            f.add(FaultSpec::error("*", -1, None).with_probability(0.5))
                .unwrap();
            (0..64)
                .map(|_| f.decide(Endpoint::CustomSend).error.is_some())
                .collect::<Vec<_>>()
        };
        let a = run(42);
        assert_eq!(a, run(42));
        assert!(a.iter().any(|h| *h) && a.iter().any(|h| !*h));
    }

    #[test]
    fn rejects_bad_rules() {
        let mut faults = Faults::new(None);
        assert!(faults.add(FaultSpec::error("nope", 1, None)).is_err());
        // A path the sim does not serve would never match: refused, naming the path.
        let unserved = faults.add(FaultSpec::error("/cgi-bin/tokne", 1, None));
        assert!(unserved.unwrap_err().to_string().contains("/cgi-bin/tokne"));
        assert!(
            faults
                .add(FaultSpec::error(A, 1, None).with_probability(1.5))
                .is_err()
        );
        let mut empty = FaultSpec::error(A, 1, None);
        empty.errcode = None;
        assert!(faults.add(empty).is_err());
        assert!(faults.add(FaultSpec::error(A, 1, Some(0))).is_err());
    }
}
