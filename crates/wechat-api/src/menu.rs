//! Custom menus checked before they go to WeChat: WeChat answers a bad menu with one code
//! (40016…40027, 65308) and no hint of which button; [`validate`] names every bad button.
//!
//! Rules (Official Account `menu/create` and `addconditional`, WeCom `menu/create`):
//! 1 to 3 top-level buttons; a top-level name of at most 16 bytes; a button either has 1 to 5
//! `sub_button`s (sub-button names at most 60 bytes, WeCom 40) or a `type` with that type's
//! keys: `key` (≤ 128 bytes) for click, scancode_*, pic_* and location_select; `url`
//! (http(s), ≤ 1024 bytes) for view; `media_id` for media_id / view_limited; `article_id` for
//! article_id / article_view_limited; `url`, `appid`, `pagepath` for miniprogram; `appid`,
//! `pagepath` for WeCom's view_miniprogram. A conditional menu also needs a `matchrule` with at
//! least one criterion; `province` needs `country`, `city` needs `province`.

use serde_json::{Map, Value};

/// Which API the menu is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MenuFlavour {
    /// An Official Account (or an authorizer): `api.weixin.qq.com/cgi-bin/menu/create`.
    OfficialAccount,
    /// A WeCom application: `qyapi.weixin.qq.com/cgi-bin/menu/create?agentid=`.
    Wecom,
}

/// Every problem of a menu, each naming its button (`button[1].sub_button[0] "Search"`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid menu: {}", .0.join("; "))]
pub struct MenuErrors(pub Vec<String>);

const MATCH_KEYS: [&str; 7] = [
    "tag_id",
    "sex",
    "country",
    "province",
    "city",
    "client_platform_type",
    "language",
];

fn text<'a>(b: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    b.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn types(flavour: MenuFlavour) -> &'static [&'static str] {
    match flavour {
        MenuFlavour::OfficialAccount => &[
            "click",
            "view",
            "scancode_push",
            "scancode_waitmsg",
            "pic_sysphoto",
            "pic_photo_or_album",
            "pic_weixin",
            "location_select",
            "media_id",
            "view_limited",
            "article_id",
            "article_view_limited",
            "miniprogram",
        ],
        MenuFlavour::Wecom => &[
            "click",
            "view",
            "scancode_push",
            "scancode_waitmsg",
            "pic_sysphoto",
            "pic_photo_or_album",
            "pic_weixin",
            "location_select",
            "view_miniprogram",
        ],
    }
}

fn button(v: &Value, at: &str, sub: bool, flavour: MenuFlavour, errors: &mut Vec<String>) {
    let Some(b) = v.as_object() else {
        errors.push(format!("{at}: must be an object"));
        return;
    };
    let name = text(b, "name");
    let at = match name {
        Some(n) => format!("{at} {n:?}"),
        None => at.to_owned(),
    };
    let max_name = match (sub, flavour) {
        (false, _) => 16,
        (true, MenuFlavour::OfficialAccount) => 60,
        (true, MenuFlavour::Wecom) => 40,
    };
    match name {
        None => errors.push(format!("{at}: name is required")),
        Some(n) if n.len() > max_name => errors.push(format!(
            "{at}: name is {} bytes, at most {max_name} (a Chinese character is 3)",
            n.len()
        )),
        Some(_) => {}
    }
    if let Some(subs) = b.get("sub_button") {
        let Some(subs) = subs.as_array() else {
            errors.push(format!("{at}: sub_button must be an array"));
            return;
        };
        if sub && !subs.is_empty() {
            errors.push(format!("{at}: a sub-button cannot have sub-buttons"));
            return;
        }
        if !subs.is_empty() {
            if subs.len() > 5 {
                errors.push(format!("{at}: {} sub-buttons, at most 5", subs.len()));
            }
            for (i, s) in subs.iter().enumerate() {
                let sub_at = format!("{}.sub_button[{i}]", at.split(' ').next().unwrap_or(&at));
                button(s, &sub_at, true, flavour, errors);
            }
            return;
        }
    }
    let Some(kind) = text(b, "type") else {
        errors.push(format!("{at}: type is required (or sub_button)"));
        return;
    };
    if !types(flavour).contains(&kind) {
        errors.push(format!(
            "{at}: type {kind:?} is not one of {}",
            types(flavour).join(", ")
        ));
        return;
    }
    let need = |key: &str, errors: &mut Vec<String>| {
        if text(b, key).is_none() {
            errors.push(format!("{at}: type {kind} needs {key}"));
        }
    };
    match kind {
        "view" => {
            need("url", errors);
        }
        "media_id" | "view_limited" => need("media_id", errors),
        "article_id" | "article_view_limited" => need("article_id", errors),
        "miniprogram" => {
            for k in ["url", "appid", "pagepath"] {
                need(k, errors);
            }
        }
        "view_miniprogram" => {
            for k in ["appid", "pagepath"] {
                need(k, errors);
            }
        }
        _ => match text(b, "key") {
            None => errors.push(format!("{at}: type {kind} needs key")),
            Some(k) if k.len() > 128 => {
                errors.push(format!("{at}: key is {} bytes, at most 128", k.len()))
            }
            Some(_) => {}
        },
    }
    if let Some(url) = text(b, "url")
        && (url.len() > 1024 || !(url.starts_with("http://") || url.starts_with("https://")))
    {
        errors.push(format!("{at}: url must be http(s) and at most 1024 bytes"));
    }
}

/// Checks `menu` (the JSON body of `menu/create`, or of `menu/addconditional` when it has a
/// `matchrule`) for `flavour`; every problem found, each naming its button.
pub fn validate(menu: &Value, flavour: MenuFlavour) -> Result<(), MenuErrors> {
    let mut errors = Vec::new();
    let Some(root) = menu.as_object() else {
        return Err(MenuErrors(vec![
            "the menu must be a JSON object with \"button\"".into(),
        ]));
    };
    match root.get("button").and_then(Value::as_array) {
        None => errors.push("\"button\" (an array of 1 to 3 buttons) is required".into()),
        Some(buttons) => {
            if buttons.is_empty() || buttons.len() > 3 {
                errors.push(format!(
                    "{} top-level buttons, must be 1 to 3",
                    buttons.len()
                ));
            }
            for (i, b) in buttons.iter().enumerate() {
                button(b, &format!("button[{i}]"), false, flavour, &mut errors);
            }
        }
    }
    if let Some(rule) = root.get("matchrule") {
        if flavour == MenuFlavour::Wecom {
            errors.push("matchrule: WeCom applications have no conditional menus".into());
        }
        match rule.as_object() {
            Some(r) if MATCH_KEYS.iter().any(|k| text(r, k).is_some()) => {
                if text(r, "province").is_some() && text(r, "country").is_none() {
                    errors.push("matchrule: province needs country".into());
                }
                if text(r, "city").is_some() && text(r, "province").is_none() {
                    errors.push("matchrule: city needs province".into());
                }
            }
            _ => errors.push(format!(
                "matchrule needs at least one of {}",
                MATCH_KEYS.join(", ")
            )),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(MenuErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok() -> Value {
        json!({"button": [
            {"type": "click", "name": "今日歌曲", "key": "V1001_TODAY_MUSIC"},
            {"name": "菜单", "sub_button": [
                {"type": "view", "name": "搜索", "url": "http://www.soso.com/"},
                {"type": "miniprogram", "name": "wxa", "url": "http://mp.weixin.qq.com", "appid": "wx286b93c14bbf93aa", "pagepath": "pages/lunar/index"},
                {"type": "click", "name": "赞一下我们", "key": "V1001_GOOD"}
            ]}
        ]})
    }

    #[test]
    fn a_valid_menu_passes_for_both_flavours_where_types_allow() {
        assert_eq!(validate(&ok(), MenuFlavour::OfficialAccount), Ok(()));
        let err = validate(&ok(), MenuFlavour::Wecom).unwrap_err().to_string();
        assert!(
            err.contains("button[1].sub_button[1] \"wxa\"") && err.contains("miniprogram"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_button_and_the_rule() {
        let bad = json!({"button": [
            {"type": "click", "name": "一二三四五六七"},
            {"name": "菜单", "sub_button": [
                {"type": "view", "name": "搜索"},
                {"type": "teleport", "name": "x", "key": "k"},
                {"type": "click", "key": "k"}
            ]},
            {"name": "empty"},
        ]});
        let errors = validate(&bad, MenuFlavour::OfficialAccount).unwrap_err().0;
        let all = errors.join("\n");
        for expected in [
            "button[0] \"一二三四五六七\": name is 21 bytes, at most 16",
            "button[0] \"一二三四五六七\": type click needs key",
            "button[1].sub_button[0] \"搜索\": type view needs url",
            "button[1].sub_button[1] \"x\": type \"teleport\" is not one of",
            "button[1].sub_button[2]: name is required",
            "button[2] \"empty\": type is required (or sub_button)",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in\n{all}");
        }
    }

    #[test]
    fn counts_and_conditional_rules() {
        let four = json!({"button": [
            {"type": "click", "name": "a", "key": "a"},
            {"type": "click", "name": "b", "key": "b"},
            {"type": "click", "name": "c", "key": "c"},
            {"type": "click", "name": "d", "key": "d"}
        ]});
        assert!(
            validate(&four, MenuFlavour::OfficialAccount)
                .unwrap_err()
                .to_string()
                .contains("4 top-level buttons")
        );
        let six = json!({"button": [{"name": "m", "sub_button": (0..6).map(|i| json!({"type": "click", "name": format!("s{i}"), "key": "k"})).collect::<Vec<_>>()}]});
        assert!(
            validate(&six, MenuFlavour::OfficialAccount)
                .unwrap_err()
                .to_string()
                .contains("6 sub-buttons")
        );
        assert!(validate(&json!([]), MenuFlavour::OfficialAccount).is_err());
        let mut conditional = ok();
        conditional["matchrule"] = json!({});
        assert!(
            validate(&conditional, MenuFlavour::OfficialAccount)
                .unwrap_err()
                .to_string()
                .contains("matchrule needs")
        );
        conditional["matchrule"] = json!({"city": "广州"});
        let err = validate(&conditional, MenuFlavour::OfficialAccount)
            .unwrap_err()
            .to_string();
        assert!(err.contains("city needs province"), "{err}");
        conditional["matchrule"] = json!({"tag_id": "2"});
        assert_eq!(validate(&conditional, MenuFlavour::OfficialAccount), Ok(()));
        assert!(validate(&conditional, MenuFlavour::Wecom).is_err());
    }
}
