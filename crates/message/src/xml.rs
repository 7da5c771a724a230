//! A small, hardened XML document parser for WeChat's flat messages.
//!
//! Attributes are ignored (WeChat uses none, and skipping them avoids quick-xml's attribute
//! checks entirely). A DOCTYPE is rejected outright; only the five predefined entities and
//! character references are resolved. Size, depth and element count are bounded.

use std::borrow::Cow;

use quick_xml::Reader;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::Event;

use crate::MessageError;

/// Bounds applied to every document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum document size in bytes.
    pub max_bytes: usize,
    /// Maximum element nesting depth (the root is depth 1).
    pub max_depth: usize,
    /// Maximum number of elements.
    pub max_elements: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024,
            max_depth: 16,
            max_elements: 2048,
        }
    }
}

/// One element: its name, its concatenated text (CDATA and text pieces) and its children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element<'a> {
    name: Cow<'a, str>,
    text: Cow<'a, str>,
    children: Vec<Element<'a>>,
}

impl<'a> Element<'a> {
    fn new(name: Cow<'a, str>) -> Self {
        Self {
            name,
            text: Cow::Borrowed(""),
            children: Vec::new(),
        }
    }

    fn push_text(&mut self, piece: Cow<'a, str>) {
        if self.text.is_empty() {
            self.text = piece;
        } else {
            self.text.to_mut().push_str(&piece);
        }
    }

    /// The element name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The element's own text, exactly as sent (not trimmed).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Child elements in document order.
    pub fn children(&self) -> &[Element<'a>] {
        &self.children
    }

    /// The first child with this name.
    pub fn child(&self, name: &str) -> Option<&Element<'a>> {
        self.children.iter().find(|c| *c.name == *name)
    }

    /// The first child with this name, compared ASCII case-insensitively (WeChat spells some
    /// fields both ways, e.g. `MsgId` / `MsgID`).
    pub fn child_ci(&self, name: &str) -> Option<&Element<'a>> {
        self.children
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// All children with this name.
    pub fn children_named<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s Element<'a>> {
        self.children.iter().filter(move |c| *c.name == *name)
    }

    /// Text of the first child with this name.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(Element::text)
    }

    /// Whether the element has no children (a leaf field).
    pub fn is_leaf(&self) -> bool {
        self.children.is_empty()
    }
}

/// Parses `input` into its root element, enforcing `limits`.
pub fn parse_document<'a>(input: &'a str, limits: &Limits) -> Result<Element<'a>, MessageError> {
    if input.len() > limits.max_bytes {
        return Err(MessageError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    let mut reader = Reader::from_str(input);
    let mut stack: Vec<Element<'a>> = Vec::with_capacity(4);
    let mut root: Option<Element<'a>> = None;
    let mut elements = 0usize;
    loop {
        let event = reader.read_event().map_err(|e| {
            MessageError::Malformed(format!("{e} at byte {}", reader.error_position()))
        })?;
        match event {
            Event::Start(_) | Event::Empty(_) if root.is_some() => {
                return Err(MessageError::Malformed(
                    "content after the root element".into(),
                ));
            }
            Event::Start(start) => {
                stack.push(opened(input, &start, &mut elements, stack.len(), limits)?);
            }
            Event::Empty(start) => {
                let element = opened(input, &start, &mut elements, stack.len(), limits)?;
                close(element, &mut stack, &mut root);
            }
            Event::End(_) => {
                let element = stack
                    .pop()
                    .ok_or_else(|| MessageError::Malformed("unexpected closing tag".into()))?;
                close(element, &mut stack, &mut root);
            }
            Event::Text(text) => {
                let content = text.xml10_content();
                match stack.last_mut() {
                    Some(top) => top.push_text(content),
                    None if content.trim().is_empty() => {}
                    None => {
                        return Err(MessageError::Malformed(
                            "text outside the root element".into(),
                        ));
                    }
                }
            }
            Event::CData(cdata) => {
                let content = cdata.xml10_content();
                let top = stack.last_mut().ok_or_else(|| {
                    MessageError::Malformed("CDATA outside the root element".into())
                })?;
                top.push_text(content);
            }
            Event::GeneralRef(reference) => {
                let resolved: Cow<'a, str> = if reference.is_char_ref() {
                    let c = reference.resolve_char_ref().ok().flatten().ok_or_else(|| {
                        MessageError::Malformed("invalid character reference".into())
                    })?;
                    Cow::Owned(c.to_string())
                } else {
                    let name = reference.xml10_content();
                    match resolve_predefined_entity(&name) {
                        Some(s) => Cow::Borrowed(s),
                        None => return Err(MessageError::Entity(truncate(&name, 32))),
                    }
                };
                let top = stack.last_mut().ok_or_else(|| {
                    MessageError::Malformed("reference outside the root element".into())
                })?;
                top.push_text(resolved);
            }
            Event::DocType(_) => return Err(MessageError::DocType),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if let Some(open) = stack.last() {
        return Err(MessageError::Malformed(format!(
            "truncated: <{}> is not closed",
            truncate(&open.name, 32)
        )));
    }
    root.ok_or_else(|| MessageError::Malformed("no root element".into()))
}

/// A new element for a start (or empty) tag, once the element-count and depth limits allow it.
fn opened<'a>(
    input: &'a str,
    start: &quick_xml::events::BytesStart<'_>,
    elements: &mut usize,
    depth: usize,
    limits: &Limits,
) -> Result<Element<'a>, MessageError> {
    *elements += 1;
    if *elements > limits.max_elements {
        return Err(MessageError::TooManyElements {
            limit: limits.max_elements,
        });
    }
    if depth >= limits.max_depth {
        return Err(MessageError::TooDeep {
            limit: limits.max_depth,
        });
    }
    Ok(Element::new(within(input, start.name().as_ref())))
}

fn close<'a>(element: Element<'a>, stack: &mut [Element<'a>], root: &mut Option<Element<'a>>) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(element),
        None => *root = Some(element),
    }
}

/// Re-borrows `piece` from `input` when it points into it (the slice reader hands out names
/// borrowed from the input, but with the event's shorter lifetime), avoiding a copy per element.
fn within<'a>(input: &'a str, piece: &str) -> Cow<'a, str> {
    let start = (piece.as_ptr() as usize).wrapping_sub(input.as_ptr() as usize);
    match start
        .checked_add(piece.len())
        .and_then(|end| input.get(start..end))
    {
        Some(borrowed) if borrowed.as_ptr() == piece.as_ptr() => Cow::Borrowed(borrowed),
        _ => Cow::Owned(piece.to_owned()),
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Element<'_>, MessageError> {
        parse_document(s, &Limits::default())
    }

    #[test]
    fn cdata_plain_text_and_entities() {
        let root = parse(
            "<xml><A><![CDATA[x < y]]></A><B>1 &amp; 2 &#x4e2d;</B><C/><D><![CDATA[a]]>b</D></xml>",
        )
        .unwrap();
        assert_eq!(root.name(), "xml");
        assert_eq!(root.child_text("A"), Some("x < y"));
        assert_eq!(root.child_text("B"), Some("1 & 2 中"));
        assert_eq!(root.child_text("C"), Some(""));
        assert_eq!(root.child_text("D"), Some("ab"));
    }

    #[test]
    fn rejects_doctype_and_custom_entities() {
        assert_eq!(
            parse("<!DOCTYPE xml [<!ENTITY a \"b\">]><xml>&a;</xml>"),
            Err(MessageError::DocType)
        );
        assert_eq!(
            parse("<xml>&lol;</xml>"),
            Err(MessageError::Entity("lol".into()))
        );
    }

    #[test]
    fn rejects_malformed_and_truncated() {
        assert!(matches!(
            parse("<xml><A></B></xml>"),
            Err(MessageError::Malformed(_))
        ));
        assert!(matches!(parse("<xml><A>"), Err(MessageError::Malformed(_))));
        assert!(matches!(parse(""), Err(MessageError::Malformed(_))));
        assert!(matches!(parse("<a/><b/>"), Err(MessageError::Malformed(_))));
        assert!(matches!(parse("hello"), Err(MessageError::Malformed(_))));
    }

    #[test]
    fn enforces_limits() {
        let limits = Limits {
            max_bytes: 100,
            max_depth: 3,
            max_elements: 5,
        };
        let deep = "<a><b><c><d/></c></b></a>";
        assert_eq!(
            parse_document(deep, &limits),
            Err(MessageError::TooDeep { limit: 3 })
        );
        let many = "<a><b/><b/><b/><b/><b/></a>";
        assert_eq!(
            parse_document(many, &limits),
            Err(MessageError::TooManyElements { limit: 5 })
        );
        let big = format!("<a>{}</a>", "x".repeat(200));
        assert_eq!(
            parse_document(&big, &limits),
            Err(MessageError::TooLarge { limit: 100 })
        );
    }
}
