/// Why a callback body or message could not be parsed. Every variant maps to the official
/// ParseXml_Error (-40002).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The bytes are not UTF-8.
    #[error("XML is not valid UTF-8")]
    NotUtf8,
    /// Larger than the configured limit.
    #[error("XML is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// Nested deeper than the configured limit.
    #[error("XML is nested deeper than {limit} levels")]
    TooDeep { limit: usize },
    /// More elements than the configured limit.
    #[error("XML has more than {limit} elements")]
    TooManyElements { limit: usize },
    /// A DOCTYPE (and with it any DTD or entity declaration) was present.
    #[error("XML with a DOCTYPE or entity declarations is rejected")]
    DocType,
    /// A reference to an entity other than the five predefined ones.
    #[error("XML references an undeclared entity &{0};")]
    Entity(String),
    /// Not well-formed: truncated, mismatched tags, stray content.
    #[error("malformed XML: {0}")]
    Malformed(String),
    /// A field every message of this kind must carry is missing.
    #[error("missing required element <{0}>")]
    MissingField(&'static str),
    /// A field has a value of the wrong form (e.g. a non-numeric CreateTime).
    #[error("element <{field}> has an invalid value: {reason}")]
    BadField {
        field: &'static str,
        reason: &'static str,
    },
}

impl MessageError {
    /// The official WXBizMsgCrypt code: every XML problem is ParseXml_Error.
    pub fn code(&self) -> i32 {
        -40002
    }

    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageError::NotUtf8 => "utf8",
            MessageError::TooLarge { .. } => "too_large",
            MessageError::TooDeep { .. } | MessageError::TooManyElements { .. } => "too_complex",
            MessageError::DocType | MessageError::Entity(_) => "dtd",
            MessageError::Malformed(_) => "malformed",
            MessageError::MissingField(_) | MessageError::BadField { .. } => "field",
        }
    }
}
