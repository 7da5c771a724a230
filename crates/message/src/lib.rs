//! WeChat's XML, parsed safely into typed values.
//!
//! - [`xml`]: a small, hardened document parser (no DOCTYPE, no entities beyond the five
//!   predefined ones and character references, bounded size, depth and element count).
//! - [`Envelope`]: the outer callback body in safe, compatible and plaintext modes, including
//!   the component envelope (`AppId`) and WeCom (`AgentID`).
//! - [`Message`] / [`ComponentNotice`]: every message, event and component InfoType of
//!   wechat-protocol.md §2.4 and §3. Unknown types become generic values that keep their raw
//!   XML; they are never an error.
//! - [`Reply`]: passive reply builders and the encrypted reply envelope.
//!
//! Depends only on the crypto crate and quick-xml; no I/O.

mod envelope;
mod error;
mod inbound;
mod notice;
mod reply;
pub mod xml;

pub use envelope::{Envelope, parse_envelope};
pub use error::MessageError;
pub use inbound::{
    Event, EventKind, Generic, Header, Link, Location, Media, Message, MiniProgramPage, PicsInfo,
    ScanCodeInfo, SelectedLocation, SubscribeMsgItem, Text, parse_message,
};
pub use notice::{Authorization, ComponentNotice, Notify, parse_notice};
pub use reply::{Article, Music, Reply, ReplyBody, encrypted_envelope};
pub use xml::Limits;

/// A parsed callback: either a component notice (it has `InfoType`) or an account message.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// Pushed to the component's authorization-event URL.
    Component(ComponentNotice),
    /// A message or event of an account.
    Account(Message),
}

/// Parses any decrypted callback XML, telling component notices from account messages.
pub fn parse(xml: &str) -> Result<Inbound, MessageError> {
    parse_with(xml, &Limits::default())
}

/// [`parse`] with explicit limits.
pub fn parse_with(xml: &str, limits: &Limits) -> Result<Inbound, MessageError> {
    let root = xml::parse_document(xml, limits)?;
    if root.child("InfoType").is_some() {
        Ok(Inbound::Component(notice::from_element(&root, xml)?))
    } else {
        Ok(Inbound::Account(inbound::from_element(&root, xml)?))
    }
}
