//! API paths (also the `api` label of metrics and errors).

pub const COMPONENT_TOKEN: &str = "/cgi-bin/component/api_component_token";
pub const CREATE_PREAUTHCODE: &str = "/cgi-bin/component/api_create_preauthcode";
pub const QUERY_AUTH: &str = "/cgi-bin/component/api_query_auth";
pub const AUTHORIZER_TOKEN: &str = "/cgi-bin/component/api_authorizer_token";
pub const GET_AUTHORIZER_INFO: &str = "/cgi-bin/component/api_get_authorizer_info";
pub const GET_AUTHORIZER_LIST: &str = "/cgi-bin/component/api_get_authorizer_list";
pub const START_PUSH_TICKET: &str = "/cgi-bin/component/api_start_push_ticket";
pub const OA_TOKEN: &str = "/cgi-bin/token";
pub const STABLE_TOKEN: &str = "/cgi-bin/stable_token";
pub const WECOM_TOKEN: &str = "/cgi-bin/gettoken";
pub const GET_TICKET: &str = "/cgi-bin/ticket/getticket";
pub const CUSTOM_SEND: &str = "/cgi-bin/message/custom/send";
pub const TEMPLATE_SEND: &str = "/cgi-bin/message/template/send";
pub const SUBSCRIBE_BIZSEND: &str = "/cgi-bin/message/subscribe/bizsend";
pub const SUBSCRIBE_SEND: &str = "/cgi-bin/message/subscribe/send";
