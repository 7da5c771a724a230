//! What the sim saw: API calls, accepted messages and push reports, bounded ring buffers.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// One API call as the sim answered it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CallRecord {
    /// Increasing sequence number.
    pub seq: u64,
    /// Request path, e.g. `/cgi-bin/component/api_authorizer_token`.
    pub path: String,
    /// The appid the call acted for, when known (component, authorizer, account or corp).
    pub appid: Option<String>,
    /// `errcode` of the answer (0 on success, -2 for a dropped connection).
    pub errcode: i64,
    /// Sim time of the call, ms since the epoch.
    pub sim_time_ms: i64,
}

/// A message accepted by one of the send APIs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SentMessage {
    /// The `msgid` returned to the caller.
    pub msgid: u64,
    /// Send API path.
    pub path: String,
    /// The sending account.
    pub appid: String,
    /// The component whose authorizer token was used (absent for an account's own token).
    pub component_appid: Option<String>,
    /// Recipient openid.
    pub touser: String,
    /// `msgtype` of a customer-service message.
    pub msgtype: Option<String>,
    /// `template_id` of a template or subscription message.
    pub template_id: Option<String>,
    /// Text content of a `text` customer-service message.
    pub content: Option<String>,
    /// The request body as received.
    pub body: serde_json::Value,
    /// Sim time of acceptance, ms since the epoch.
    pub sim_time_ms: i64,
}

/// A bounded log that counts what it had to drop.
#[derive(Debug, Clone)]
pub(crate) struct Ring<T> {
    items: VecDeque<T>,
    capacity: usize,
    dropped: u64,
}

impl<T: Clone> Ring<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            items: VecDeque::new(),
            capacity: capacity.max(1),
            dropped: 0,
        }
    }

    pub(crate) fn push(&mut self, item: T) {
        if self.items.len() == self.capacity {
            self.items.pop_front();
            self.dropped += 1;
        }
        self.items.push_back(item);
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }

    pub(crate) fn clear(&mut self) {
        self.items.clear();
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Filter for [`crate::SimHandle::calls`] and `GET /sim/calls`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallFilter {
    /// Only this path.
    #[serde(default)]
    pub path: Option<String>,
    /// Only this appid.
    #[serde(default)]
    pub appid: Option<String>,
    /// Only this errcode.
    #[serde(default)]
    pub errcode: Option<i64>,
}

impl CallFilter {
    pub(crate) fn matches(&self, r: &CallRecord) -> bool {
        self.path.as_deref().is_none_or(|p| p == r.path)
            && self
                .appid
                .as_deref()
                .is_none_or(|a| r.appid.as_deref() == Some(a))
            && self.errcode.is_none_or(|c| c == r.errcode)
    }
}

/// Filter for [`crate::SimHandle::messages`] and `GET /sim/messages`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageFilter {
    /// Only from this account.
    #[serde(default)]
    pub appid: Option<String>,
    /// Only to this openid.
    #[serde(default)]
    pub touser: Option<String>,
    /// Only this send API path.
    #[serde(default)]
    pub path: Option<String>,
}

impl MessageFilter {
    pub(crate) fn matches(&self, m: &SentMessage) -> bool {
        self.appid.as_deref().is_none_or(|a| a == m.appid)
            && self.touser.as_deref().is_none_or(|t| t == m.touser)
            && self.path.as_deref().is_none_or(|p| p == m.path)
    }
}
