//! The world every stack starts with: two component tenants and their accounts in the
//! simulator, the tenants file the services read, and the API keys of their clients.

use wxhub_runtime::tenants::api_key_sha256;
use wxhub_sim::{
    AccountSeed, AgentSeed, AuthorizationSeed, ComponentSeed, CorpSeed, Seed, UserSeed,
};

/// The component tenant of the stack (its callback URLs point at the stack's gateway).
pub const TENANT: &str = "acme";
pub const COMPONENT: &str = "wx0acme0component0";
pub const SECRET: &str = "acme-component-secret";
pub const TOKEN: &str = "acme-message-token";
pub const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
/// An ordinary account that can authorize the component, with one user in the 48 h window.
pub const SHOP: &str = "wx0acme0shop0oa";
pub const SHOP_USER: &str = "o_acme_shop_alice";
/// Accounts authorized to acme when the sim starts.
pub const AUTH1: &str = "wxa1000000000000001";
pub const AUTH2: &str = "wxa1000000000000002";
/// A mini program authorized to acme (subscribe messages).
pub const AUTH_MP: &str = "wxa1000000000000007";
/// Template ids of AUTH1 (template messages) and of AUTH1 / AUTH_MP (subscribe messages).
pub const TEMPLATE: &str = "tpl_order_shipped";
pub const SUBSCRIBE_TEMPLATE: &str = "sub_tpl_reminder";
/// Users of AUTH1 and AUTH_MP: `user(0)` … `user(USERS - 1)`, following, in the 48 h window,
/// with 5 subscribe credits each.
pub const USERS: usize = 60;
/// The user whose delivery reports say the send failed (`failed:user block`).
pub const BLOCKED_USER: usize = 59;

/// The openid of test user `i` (of AUTH1 and AUTH_MP).
pub fn user(i: usize) -> String {
    format!("o_acme_user_{i:03}")
}

/// An account that has authorized no one yet ("Fresh Bakery").
pub const FRESH: &str = "wxa1000000000000009";
/// A second component tenant, with one authorizer.
pub const BETA: &str = "beta";
pub const BETA_COMPONENT: &str = "wxc0000000000000b2";
pub const BETA_AUTH: &str = "wxb1000000000000001";
/// API keys: the gateway's pages (acme only), the worker and operators (every tenant).
pub const GATEWAY_KEY: &str = "gateway-key";
pub const WORKER_KEY: &str = "worker-key";
pub const OPS_KEY: &str = "ops-key";
/// A directly configured Official Account tenant, with one follower.
pub const OA_TENANT: &str = "oa";
pub const OA_APPID: &str = "wx0direct0oa0";
pub const OA_SECRET: &str = "oa-app-secret";
pub const OA_USER: &str = "o_direct_oa_bob";
/// A WeCom tenant (one self-built app).
pub const CORP_TENANT: &str = "corp";
pub const CORPID: &str = "ww0corp0000001";
pub const CORP_SECRET: &str = "corp-app-secret";
pub const AGENT_ID: u64 = 1000002;
/// The relay's own key to token-control (every tenant).
pub const RELAY_KEY: &str = "relay-key";
/// Business systems calling the relay: acme, the OA and the WeCom app; beta only; acme's
/// menus only (`relay_paths`).
pub const CRM_KEY: &str = "crm-key";
pub const BETA_KEY: &str = "beta-key";
pub const MENUS_KEY: &str = "menus-key";

/// Extra component tenants a stack may start with (`Setup::extra_tenants`, for benches): tenant
/// `i` is `extra{i:02}`, its component `wxc0extra00000{i:02}`, and its one authorizer
/// `wxe{i:016}` (an Official Account with the template [`TEMPLATE`] and
/// `Setup::extra_users` users, [`extra_user`]).
pub fn extra_tenant(i: usize) -> (String, String, String) {
    (
        format!("extra{i:02}"),
        format!("wxc0extra00000{i:02}"),
        format!("wxe{i:016}"),
    )
}

/// User `j` of extra tenant `i`'s authorizer.
pub fn extra_user(i: usize, j: usize) -> String {
    format!("o_extra{i:02}_{j:06}")
}

/// The tenants file of every service.
pub fn tenants_file() -> String {
    tenants_file_with(0)
}

/// The tenants file, with `extra_tenants` of [`extra_tenant`].
pub(crate) fn tenants_file_with(extra_tenants: usize) -> String {
    let tenant = |id: &str, appid: &str, secret: &str, token: &str| {
        format!(
            "[[tenants]]\nid = \"{id}\"\nkind = \"component\"\napp_id = \"{appid}\"\napp_secret = \"{secret}\"\ntoken = \"{token}\"\nencoding_aes_key = \"{AES_KEY}\"\n\n"
        )
    };
    let client = |name: &str, key: &str, tenants: &str| {
        format!(
            "[[clients]]\nname = \"{name}\"\napi_key_sha256 = \"{}\"\ntenants = [{tenants}]\n\n",
            api_key_sha256(key)
        )
    };
    [
        tenant(TENANT, COMPONENT, SECRET, TOKEN),
        tenant(BETA, BETA_COMPONENT, "beta-secret", "beta-token"),
        format!(
            "[[tenants]]\nid = \"{OA_TENANT}\"\nkind = \"official_account\"\napp_id = \"{OA_APPID}\"\napp_secret = \"{OA_SECRET}\"\ntoken = \"oa-token\"\nencoding_aes_key = \"{AES_KEY}\"\n\n"
        ),
        format!(
            "[[tenants]]\nid = \"{CORP_TENANT}\"\nkind = \"wecom\"\napp_id = \"{CORPID}\"\napp_secret = \"{CORP_SECRET}\"\ntoken = \"corp-token\"\nencoding_aes_key = \"{AES_KEY}\"\nagent_id = {AGENT_ID}\n\n"
        ),
        client("gateway", GATEWAY_KEY, &format!("\"{TENANT}\"")),
        client("worker", WORKER_KEY, "\"*\""),
        client("ops", OPS_KEY, "\"*\""),
        client("relay", RELAY_KEY, "\"*\""),
        client(
            "crm",
            CRM_KEY,
            &format!("\"{TENANT}\", \"{OA_TENANT}\", \"{CORP_TENANT}\""),
        ),
        client("beta-crm", BETA_KEY, &format!("\"{BETA}\"")),
        format!(
            "{}relay_paths = [\"/cgi-bin/menu/\"]\n\n",
            client("menus", MENUS_KEY, &format!("\"{TENANT}\""))
        ),
    ]
    .into_iter()
    .chain((0..extra_tenants).map(|i| {
        let (id, component, _) = extra_tenant(i);
        tenant(&id, &component, "extra-secret", "extra-token")
    }))
    .collect()
}

/// The simulator's seed: both components (no callback URLs yet, no automatic ticket pushes),
/// their accounts and authorizations.
pub fn seed() -> Seed {
    seed_with(0, 0)
}

/// The seed, with `extra_tenants` of [`extra_tenant`], each account with `extra_users` users.
pub(crate) fn seed_with(extra_tenants: usize, extra_users: usize) -> Seed {
    let component = |appid: &str, secret: &str, token: &str| ComponentSeed {
        appid: appid.into(),
        secret: secret.into(),
        token: token.into(),
        aes_key: AES_KEY.into(),
        auth_event_url: None,
        message_url_template: None,
        encryption: Default::default(),
        auto_ticket_push: false,
    };
    let account = |appid: &str, user_name: &str, nick_name: &str| AccountSeed {
        appid: appid.into(),
        user_name: user_name.into(),
        nick_name: Some(nick_name.into()),
        ..Default::default()
    };
    let mut seed = Seed {
        components: vec![
            component(COMPONENT, SECRET, TOKEN),
            component(BETA_COMPONENT, "beta-secret", "beta-token"),
        ],
        accounts: vec![
            AccountSeed {
                users: vec![UserSeed {
                    openid: SHOP_USER.into(),
                    subscribed: true,
                    last_interaction_ago_secs: Some(60),
                    subscribe_allowance: Default::default(),
                }],
                ..account(SHOP, "gh_acme_shop", "Acme Shop")
            },
            AccountSeed {
                templates: vec![TEMPLATE.into()],
                subscribe_templates: vec![SUBSCRIBE_TEMPLATE.into()],
                users: users(),
                ..account(AUTH1, "gh_000001", "Acme 咖啡")
            },
            AccountSeed {
                kind: wxhub_sim::AccountKind::MiniProgram,
                subscribe_templates: vec![SUBSCRIBE_TEMPLATE.into()],
                users: users(),
                ..account(AUTH_MP, "gh_000007", "Acme Mini")
            },
            account(AUTH2, "gh_000002", "Acme Tea"),
            account(FRESH, "gh_000009", "Fresh Bakery"),
            AccountSeed {
                users: users(),
                ..account(BETA_AUTH, "gh_b00001", "Beta Shop")
            },
            AccountSeed {
                secret: Some(OA_SECRET.into()),
                users: vec![UserSeed {
                    openid: OA_USER.into(),
                    subscribed: true,
                    last_interaction_ago_secs: None,
                    subscribe_allowance: Default::default(),
                }],
                ..account(OA_APPID, "gh_direct_oa", "Direct OA")
            },
        ],
        wecom: vec![CorpSeed {
            corpid: CORPID.into(),
            agents: vec![AgentSeed {
                agentid: AGENT_ID,
                secret: CORP_SECRET.into(),
                token: None,
                aes_key: None,
                callback_url: None,
            }],
        }],
        authorizations: vec![
            AuthorizationSeed::new(COMPONENT, AUTH1),
            AuthorizationSeed::new(COMPONENT, AUTH2),
            AuthorizationSeed::new(COMPONENT, AUTH_MP),
            AuthorizationSeed::new(BETA_COMPONENT, BETA_AUTH),
        ],
        ..Default::default()
    };
    for i in 0..extra_tenants {
        let (_, component_appid, appid) = extra_tenant(i);
        seed.components
            .push(component(&component_appid, "extra-secret", "extra-token"));
        seed.accounts.push(AccountSeed {
            templates: vec![TEMPLATE.into()],
            users: (0..extra_users)
                .map(|j| UserSeed {
                    openid: extra_user(i, j),
                    subscribed: true,
                    last_interaction_ago_secs: Some(60),
                    subscribe_allowance: Default::default(),
                })
                .collect(),
            ..account(&appid, &format!("gh_extra{i:02}"), "Extra")
        });
        seed.authorizations
            .push(AuthorizationSeed::new(&component_appid, &appid));
    }
    seed
}

fn users() -> Vec<UserSeed> {
    (0..USERS)
        .map(|i| UserSeed {
            openid: user(i),
            subscribed: true,
            last_interaction_ago_secs: Some(60),
            subscribe_allowance: [(SUBSCRIBE_TEMPLATE.to_owned(), 5)].into(),
        })
        .collect()
}
