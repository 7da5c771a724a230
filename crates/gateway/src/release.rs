//! The full-network release check responder (全网发布, wechat-protocol.md §4).
//!
//! WeChat's robots send messages to ten test accounts authorized to the component. The gateway
//! answers them itself, within the 5 s budget:
//!
//! - an event → passive text `{Event}from_callback`;
//! - text `TESTCOMPONENT_MSG_TYPE_TEXT` → passive text `TESTCOMPONENT_MSG_TYPE_TEXT_callback`;
//! - text `QUERY_AUTH_CODE:$code` → empty answer, after a `ReleaseCheckJob` was published (with
//!   confirm, deduplicated) to the jobs exchange for the worker's api_query_auth + custom send;
//! - anything else to a test account → `success`.
//!
//! Traffic of the test accounts is not published as ordinary events: business consumers have no
//! use for WeChat's robots, and an automatic reaction of theirs (a welcome message, say) could
//! disturb the check. The ticket push of step 1 is an ordinary component notice.

use wxhub_message::{Message, Text};

/// The ten test accounts: (appid, original id).
pub const TEST_ACCOUNTS: [(&str, &str); 10] = [
    ("wx570bc396a51b8ff8", "gh_3c884a361561"),
    ("wxd101a85aa106f53e", "gh_8dad206e9538"),
    ("wx9252c5e0bb1836fc", "gh_c0f28a78b318"),
    ("wxc39235c15087f6f3", "gh_905ae9d01059"),
    ("wx8e1097c5bc82cde9", "gh_3f222ed8d140"),
    ("wx7720d01d4b2a4500", "gh_393666f1fdf4"),
    ("wx14550af28c71a144", "gh_26128078e9ab"),
    ("wx05d483572dcd5d8b", "gh_39abb5d4e1b7"),
    ("wxa35b9c23cfe664eb", "gh_2b3713f184a6"),
    ("wx5910277cae6fd970", "gh_7818dcb60240"),
];

/// Text of the passive-reply step.
pub const TEXT_STEP: &str = "TESTCOMPONENT_MSG_TYPE_TEXT";
/// Prefix of the customer-service step.
pub const QUERY_AUTH_CODE_PREFIX: &str = "QUERY_AUTH_CODE:";

/// Whether a callback to the authorizer `path_appid` (or to `to_user_name`) is release-check
/// traffic.
pub fn is_test_account(path_appid: &str, to_user_name: &str) -> bool {
    TEST_ACCOUNTS
        .iter()
        .any(|(appid, gh)| *appid == path_appid || *gh == to_user_name)
}

/// What the responder does with one message to a test account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Answer with this passive text.
    Reply { step: &'static str, content: String },
    /// Publish a job for this auth code, then answer empty.
    QueryAuthCode(String),
    /// Not a step: answer `success`.
    Other,
}

pub(crate) fn step(message: &Message) -> Step {
    match message {
        Message::Event(e) => Step::Reply {
            step: "event",
            content: format!("{}from_callback", e.event),
        },
        Message::Text(Text { content, .. }) if content == TEXT_STEP => Step::Reply {
            step: "text",
            content: format!("{TEXT_STEP}_callback"),
        },
        Message::Text(Text { content, .. }) => match content.strip_prefix(QUERY_AUTH_CODE_PREFIX) {
            Some(code) if !code.is_empty() => Step::QueryAuthCode(code.to_owned()),
            _ => Step::Other,
        },
        _ => Step::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wxhub_message::parse_message;

    fn msg(body: &str) -> Message {
        parse_message(&format!(
            "<xml><ToUserName><![CDATA[gh_3c884a361561]]></ToUserName><FromUserName><![CDATA[ozy4qt1]]></FromUserName><CreateTime>1700000000</CreateTime>{body}</xml>"
        ))
        .unwrap()
    }

    #[test]
    fn detects_all_ten_accounts_by_appid_or_username() {
        for (appid, gh) in TEST_ACCOUNTS {
            assert!(is_test_account(appid, "gh_other"));
            assert!(is_test_account("wxother", gh));
        }
        assert!(!is_test_account("wxother", "gh_other"));
    }

    #[test]
    fn steps() {
        assert_eq!(
            step(&msg(
                "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[LOCATION]]></Event><Latitude>1</Latitude>"
            )),
            Step::Reply {
                step: "event",
                content: "LOCATIONfrom_callback".into()
            }
        );
        assert_eq!(
            step(&msg(
                "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[TESTCOMPONENT_MSG_TYPE_TEXT]]></Content><MsgId>1</MsgId>"
            )),
            Step::Reply {
                step: "text",
                content: "TESTCOMPONENT_MSG_TYPE_TEXT_callback".into()
            }
        );
        assert_eq!(
            step(&msg(
                "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[QUERY_AUTH_CODE:queryauthcode@@@abc:def]]></Content><MsgId>2</MsgId>"
            )),
            Step::QueryAuthCode("queryauthcode@@@abc:def".into())
        );
        assert_eq!(
            step(&msg(
                "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[QUERY_AUTH_CODE:]]></Content><MsgId>3</MsgId>"
            )),
            Step::Other
        );
        assert_eq!(
            step(&msg(
                "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hello]]></Content><MsgId>4</MsgId>"
            )),
            Step::Other
        );
    }
}
