//! The WeChat API endpoints the sim serves, by name.
//!
//! Every place that needs an endpoint — the router, quotas, token lifetimes, faults, the call
//! and message records — names it as an [`Endpoint`] variant, never as a path string or an
//! index into a list: the router matches on the variant exhaustively, so a new endpoint cannot
//! be listed without a handler. Callers of the sim's API keep passing paths such as
//! `"/cgi-bin/token"` (tests, the admin API's JSON, seed files); [`Endpoint::from_path`] turns
//! them into variants at that edge, and a path the sim does not serve is refused there with
//! the list of those it does, instead of being stored and never matching.

/// One WeChat API endpoint of api.weixin.qq.com or qyapi.weixin.qq.com.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// `api_component_token`: a component_access_token from the verify ticket.
    ComponentToken,
    /// `api_create_preauthcode`: a pre-auth code for the login pages.
    CreatePreAuthCode,
    /// `api_query_auth`: exchanges an authorization code.
    QueryAuth,
    /// `api_authorizer_token`: an authorizer_access_token from the refresh token.
    AuthorizerToken,
    /// `api_get_authorizer_info`: an authorizer's profile.
    AuthorizerInfo,
    /// `api_get_authorizer_list`: a page of a component's authorizers.
    AuthorizerList,
    /// `api_start_push_ticket`: asks for a component_verify_ticket push.
    StartPushTicket,
    /// `component/clear_quota/v2`: resets a component's quotas.
    ComponentClearQuota,
    /// `/cgi-bin/token`: an Official Account's or Mini Program's own access token.
    Token,
    /// `/cgi-bin/stable_token`: the stable access token.
    StableToken,
    /// `/cgi-bin/gettoken`: a WeCom agent's access token.
    WecomToken,
    /// `/cgi-bin/ticket/getticket`: a JS-SDK (`jsapi`) or card (`wx_card`) ticket.
    Ticket,
    /// `/cgi-bin/clear_quota`: resets an account's quotas.
    ClearQuota,
    /// `message/custom/send`: a customer-service message.
    CustomSend,
    /// `message/template/send`: a template message.
    TemplateSend,
    /// `message/subscribe/bizsend`: an Official Account's subscription message.
    SubscribeBizSend,
    /// `message/subscribe/send`: a Mini Program's subscription message.
    SubscribeSend,
    /// `menu/create`: an account's (or a WeCom app's, with `agentid`) default menu.
    MenuCreate,
    /// `menu/get`: the menus.
    MenuGet,
    /// `menu/delete`: removes every menu.
    MenuDelete,
    /// `menu/addconditional`: a conditional menu.
    MenuAddConditional,
    /// `menu/delconditional`: removes a conditional menu.
    MenuDelConditional,
    /// `menu/trymatch`: the menu a user sees.
    MenuTryMatch,
    /// `media/upload`: temporary media (multipart).
    MediaUpload,
    /// `media/get`: downloads temporary media.
    MediaGet,
    /// `/sns/oauth2/component/access_token`: a web-OAuth code for the user's token.
    SnsComponentToken,
    /// `/sns/userinfo`: the signed-in user's profile.
    SnsUserInfo,
}

impl Endpoint {
    /// Every endpoint, in declaration order.
    pub const ALL: [Endpoint; 27] = [
        Self::ComponentToken,
        Self::CreatePreAuthCode,
        Self::QueryAuth,
        Self::AuthorizerToken,
        Self::AuthorizerInfo,
        Self::AuthorizerList,
        Self::StartPushTicket,
        Self::ComponentClearQuota,
        Self::Token,
        Self::StableToken,
        Self::WecomToken,
        Self::Ticket,
        Self::ClearQuota,
        Self::CustomSend,
        Self::TemplateSend,
        Self::SubscribeBizSend,
        Self::SubscribeSend,
        Self::MenuCreate,
        Self::MenuGet,
        Self::MenuDelete,
        Self::MenuAddConditional,
        Self::MenuDelConditional,
        Self::MenuTryMatch,
        Self::MediaUpload,
        Self::MediaGet,
        Self::SnsComponentToken,
        Self::SnsUserInfo,
    ];

    /// The request path, as WeChat documents it.
    pub const fn path(self) -> &'static str {
        match self {
            Self::ComponentToken => "/cgi-bin/component/api_component_token",
            Self::CreatePreAuthCode => "/cgi-bin/component/api_create_preauthcode",
            Self::QueryAuth => "/cgi-bin/component/api_query_auth",
            Self::AuthorizerToken => "/cgi-bin/component/api_authorizer_token",
            Self::AuthorizerInfo => "/cgi-bin/component/api_get_authorizer_info",
            Self::AuthorizerList => "/cgi-bin/component/api_get_authorizer_list",
            Self::StartPushTicket => "/cgi-bin/component/api_start_push_ticket",
            Self::ComponentClearQuota => "/cgi-bin/component/clear_quota/v2",
            Self::Token => "/cgi-bin/token",
            Self::StableToken => "/cgi-bin/stable_token",
            Self::WecomToken => "/cgi-bin/gettoken",
            Self::Ticket => "/cgi-bin/ticket/getticket",
            Self::ClearQuota => "/cgi-bin/clear_quota",
            Self::CustomSend => "/cgi-bin/message/custom/send",
            Self::TemplateSend => "/cgi-bin/message/template/send",
            Self::SubscribeBizSend => "/cgi-bin/message/subscribe/bizsend",
            Self::SubscribeSend => "/cgi-bin/message/subscribe/send",
            Self::MenuCreate => "/cgi-bin/menu/create",
            Self::MenuGet => "/cgi-bin/menu/get",
            Self::MenuDelete => "/cgi-bin/menu/delete",
            Self::MenuAddConditional => "/cgi-bin/menu/addconditional",
            Self::MenuDelConditional => "/cgi-bin/menu/delconditional",
            Self::MenuTryMatch => "/cgi-bin/menu/trymatch",
            Self::MediaUpload => "/cgi-bin/media/upload",
            Self::MediaGet => "/cgi-bin/media/get",
            Self::SnsComponentToken => "/sns/oauth2/component/access_token",
            Self::SnsUserInfo => "/sns/userinfo",
        }
    }

    /// The endpoint serving `path` exactly, if the sim serves it.
    pub fn from_path(path: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.path() == path)
    }

    /// Whether it issues access tokens or tickets (whose lifetime a test can set).
    pub const fn issues_token(self) -> bool {
        matches!(
            self,
            Self::ComponentToken
                | Self::QueryAuth
                | Self::AuthorizerToken
                | Self::Token
                | Self::StableToken
                | Self::WecomToken
                | Self::Ticket
        )
    }

    /// The endpoint of `path` if `admit` accepts it, or the reason, naming `what` the path was
    /// for and listing the paths `admit` accepts.
    pub(crate) fn parse(path: &str, what: &str, admit: fn(Self) -> bool) -> Result<Self, String> {
        Self::from_path(path).filter(|e| admit(*e)).ok_or_else(|| {
            let admitted: Vec<&str> = Self::ALL
                .into_iter()
                .filter(|e| admit(*e))
                .map(Self::path)
                .collect();
            format!("{what} {path:?} is not one of {}", admitted.join(", "))
        })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_is_listed_once_and_found_by_its_path() {
        // `ALL` is in declaration order, so a variant missing from it shifts every later one.
        for (i, endpoint) in Endpoint::ALL.into_iter().enumerate() {
            assert_eq!(endpoint as usize, i, "{endpoint:?}");
            assert_eq!(Endpoint::from_path(endpoint.path()), Some(endpoint));
        }
        assert_eq!(Endpoint::SnsUserInfo as usize + 1, Endpoint::ALL.len());
        assert_eq!(Endpoint::from_path("/cgi-bin/token/"), None);
        assert_eq!(Endpoint::from_path("/cgi-bin/componentloginpage"), None);
    }

    #[test]
    fn parse_names_what_it_refused_and_what_it_serves() {
        let err = Endpoint::parse("/cgi-bin/tokne", "quota path", |_| true).unwrap_err();
        assert!(err.contains("quota path \"/cgi-bin/tokne\""), "{err}");
        assert!(err.contains("/cgi-bin/message/subscribe/send"), "{err}");
        let err = Endpoint::parse("/cgi-bin/clear_quota", "x", Endpoint::issues_token).unwrap_err();
        assert!(!err.contains("/cgi-bin/clear_quota,"), "{err}");
        assert_eq!(
            Endpoint::parse("/cgi-bin/stable_token", "x", Endpoint::issues_token).ok(),
            Some(Endpoint::StableToken)
        );
    }
}
