//! The test vectors of wechat-protocol.md §1.10 (V1–V7) and their negative cases.

use wxhub_crypto::{AesKey, Crypt, CryptoError, KeySlot, msg_signature, signature};

const SAMPLE_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

const V1_ENCRYPT: &str = "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=";
const V1_MESSAGE: &str = "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>\n<FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName>\n<CreateTime>1409735668</CreateTime>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[abcdteT]]></Content>\n<MsgId>6054768590064713728</MsgId>\n</xml>";

fn v1() -> Crypt {
    Crypt::from_parts("spamtest", SAMPLE_KEY, "wx2c2769f8efd9abc2").unwrap()
}

#[test]
fn v1_official_sample_decrypts() {
    assert_eq!(
        msg_signature("spamtest", "1409735669", "1320562132", V1_ENCRYPT),
        "5d197aaffba7e9b25a30732f161a50dee96bd5fa"
    );
    let d = v1()
        .verify_and_decrypt(
            "5d197aaffba7e9b25a30732f161a50dee96bd5fa",
            "1409735669",
            "1320562132",
            V1_ENCRYPT,
        )
        .unwrap();
    assert_eq!(d.message_str().unwrap(), V1_MESSAGE);
    assert_eq!(d.slot(), KeySlot::Current);
    let opened = wxhub_crypto::open(&AesKey::parse(SAMPLE_KEY).unwrap(), V1_ENCRYPT).unwrap();
    assert_eq!(opened.random(), b"89465c840c5f116f");
}

#[test]
fn v1_plain_signature() {
    assert_eq!(
        signature("spamtest", "1409735669", "1320562132"),
        "16120ec1b8dbb870f510d87ce6bc2463eae6ca1a"
    );
    assert!(
        v1().verify_signature(
            "16120ec1b8dbb870f510d87ce6bc2463eae6ca1a",
            "1409735669",
            "1320562132"
        )
        .is_ok()
    );
}

#[test]
fn v1_negative_cases() {
    // Wrong msg_signature (last digit changed).
    assert_eq!(
        v1().verify_and_decrypt(
            "5d197aaffba7e9b25a30732f161a50dee96bd5fb",
            "1409735669",
            "1320562132",
            V1_ENCRYPT
        )
        .unwrap_err(),
        CryptoError::Signature
    );
    // Wrong nonce.
    assert!(
        v1().verify_msg_signature(
            "5d197aaffba7e9b25a30732f161a50dee96bd5fa",
            "1409735669",
            "1320562133",
            V1_ENCRYPT
        )
        .is_err()
    );
    // Right key, wrong appid.
    let other = Crypt::from_parts("spamtest", SAMPLE_KEY, "wx0000000000000000").unwrap();
    let err = other.decrypt(V1_ENCRYPT).unwrap_err();
    assert_eq!(err.code(), -40005);
    // Tampered ciphertext: the padding (or frame) check fails.
    let mut tampered = V1_ENCRYPT.to_string();
    tampered.replace_range(tampered.len() - 8..tampered.len() - 4, "AAAA");
    let err = v1().decrypt(&tampered).unwrap_err();
    assert!(matches!(
        err,
        CryptoError::Padding | CryptoError::Buffer(_) | CryptoError::AppId { .. }
    ));
    // Truncated ciphertext.
    assert!(matches!(
        v1().decrypt(&V1_ENCRYPT[..100]).unwrap_err(),
        CryptoError::CiphertextLength(_) | CryptoError::Base64
    ));
}

const V2_XML: &str = "<xml><ToUserName><![CDATA[oia2Tj我是中文jewbmiOUlr6X-1crbLOvLw]]></ToUserName><FromUserName><![CDATA[gh_7f083739789a]]></FromUserName><CreateTime>1407743423</CreateTime><MsgType><![CDATA[video]]></MsgType><Video><MediaId><![CDATA[eYJ1MbwPRJtOvIEabaxHs7TX2D-HV71s79GUxqdUkjm6Gs2Ed1KF3ulAOA9H1xG0]]></MediaId><Title><![CDATA[testCallBackReplyVideo]]></Title><Description><![CDATA[testCallBackReplyVideo]]></Description></Video></xml>";
const V2_XML_ENCRYPT: &str = "jn1L23DB+6ELqJ+6bruv23M2GmYfkv0xBh2h+XTBOKVKcgDFHle6gqcZ1cZrk3e1qjPQ1F4RsLWzQRG9udbKWesxlkupqcEcW7ZQweImX9+wLMa0GaUzpkycA8+IamDBxn5loLgZpnS7fVAbExOkK5DYHBmv5tptA9tklE/fTIILHR8HLXa5nQvFb3tYPKAlHF3rtTeayNf0QuM+UW/wM9enGIDIJHF7CLHiDNAYxr+r+OrJCmPQyTy8cVWlu9iSvOHPT/77bZqJucQHQ04sq7KZI27OcqpQNSto2OdHCoTccjggX5Z9Mma0nMJBU+jLKJ38YB1fBIz+vBzsYjrTmFQ44YfeEuZ+xRTQwr92vhA9OxchWVINGC50qE/6lmkwWTwGX9wtQpsJKhP+oS7rvTY8+VdzETdfakjkwQ5/Xka042OlUb1/slTwo4RscuQ+RdxSGvDahxAJ6+EAjLt9d8igHngxIbf6YyqqROxuxqIeIch3CssH/LqRs+iAcILvApYZckqmA7FNERspKA5f8GoJ9sv8xmGvZ9Yrf57cExWtnX8aCMMaBropU/1k+hKP5LVdzbWCG0hGwx/dQudYR/eXp3P0XxjlFiy+9DMlaFExWUZQDajPkdPrEeOwofJb";

#[test]
fn v2_deterministic_encryption() {
    let c = Crypt::from_parts("pamtest", SAMPLE_KEY, "wxb11529c136998cb6").unwrap();
    let random = b"aaaabbbbccccdddd";
    let ct = c.encrypt_with_random("我是中文abcd123".as_bytes(), random, KeySlot::Current);
    assert_eq!(
        ct,
        "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg=="
    );
    assert_eq!(
        msg_signature("pamtest", "1409304348", "xxxxxx", &ct),
        "82c962d39941aa48552f90ef55aa323dc620cc10"
    );
    let ct2 = c.encrypt_with_random(V2_XML.as_bytes(), random, KeySlot::Current);
    assert_eq!(ct2, V2_XML_ENCRYPT);
    assert_eq!(c.decrypt(&ct2).unwrap().message_str().unwrap(), V2_XML);
}

const V3_KEY: &str = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";

fn v3() -> Crypt {
    Crypt::from_parts("123456", V3_KEY, "wx49f0ab532d5d035a").unwrap()
}

#[test]
fn v3a_wecom_url_verification() {
    let echostr =
        "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q==";
    let sig = "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96";
    assert_eq!(
        v3().verify_url_encrypted(sig, "1411443780", "437374425", echostr)
            .unwrap(),
        "5927782489442352469"
    );
    assert_eq!(
        v3().verify_url_encrypted(sig, "1411443780", "437374424", echostr)
            .unwrap_err(),
        CryptoError::Signature
    );
}

#[test]
fn v3b_deterministic_reply_ciphertext() {
    let reply = "<xml>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[test]]></Content>\n<FromUserName><![CDATA[wx49f0ab532d5d035a]]></FromUserName>\n<ToUserName><![CDATA[messense]]></ToUserName>\n<AgentID>1</AgentID>\n<CreateTime>1411525903</CreateTime>\n</xml>";
    let ct = v3().encrypt_with_random(reply.as_bytes(), b"1234567890123456", KeySlot::Current);
    assert_eq!(
        ct,
        "9s4gMv99m88kKTh/H8IdkOiMg6bisoy3ypwy9H4hvSPe9nsGaqyw5hhSjdYbcrKk+j3nba4HMOTzHrluLBYqxgNcBqGsL8GqxlhZgURnAtObvesEl5nZ+uBE8bviY0LWke8Zy9V/QYKxNV2FqllNXcfmstttyIkMKCCmVbCFM2JTF5wY0nFhHZSjPUL2Q1qvSUCUld+/WIXrx0oyKQmpB6o8NRrrNrsDf03oxI1p9FxUgMnwKKZeOA/uu+2IEvEBtb7muXsVbwbgX05UPPJvFurDXafG0RQyPR+mf1nDnAtQmmNOuiR5MIkdQ39xn1vWwi1O5oazPoQJz0nTYjxxEE8kv3kFxtAGVRe3ypD3WeK2XeFYFMNMpatF9XiKzHo3"
    );
    assert_eq!(
        msg_signature("123456", "1411525903", "461056294", &ct),
        "407518b7649e86ef23978113f92d27afa9296533"
    );
}

#[test]
fn v3c_decrypt_with_pad_one() {
    let encrypt = "RgqEoJj5A4EMYlLvWO1F86ioRjZfaex/gePD0gOXTxpsq5Yj4GNglrBb8I2BAJVODGajiFnXBu7mCPatfjsu6IHCrsTyeDXzF6Bv283dGymzxh6ydJRvZsryDyZbLTE7rhnus50qGPMfp2wASFlzEgMW9z1ef/RD8XzaFYgm7iTdaXpXaG4+BiYyolBug/gYNx410cvkKR2/nPwBiT+P4hIiOAQqGp/TywZBtDh1yCF2KOd0gpiMZ5jSw3e29mTvmUHzkVQiMS6td7vXUaWOMZnYZlF3So2SjHnwh4jYFxdgpkHHqIrH/54SNdshoQgWYEvccTKe7FS709/5t6NMxuGhcUGAPOQipvWTT4dShyqio7mlsl5noTrb++x6En749zCpQVhDpbV6GDnTbcX2e8K9QaNWHp91eBdCRxthuL0=";
    let d = v3()
        .verify_and_decrypt(
            "74d92dfeb87ba7c714f89d98870ae5eb62dff26d",
            "1411525903",
            "461056294",
            encrypt,
        )
        .unwrap();
    assert_eq!(
        d.message_str().unwrap(),
        "<xml><ToUserName><![CDATA[wx49f0ab532d5d035a]]></ToUserName>\n<FromUserName><![CDATA[messense]]></FromUserName>\n<CreateTime>1411525903</CreateTime>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[test]]></Content>\n<MsgId>4363689963896700987</MsgId>\n<AgentID>1</AgentID>\n</xml>"
    );
}

const V4_ENCRYPT: &str = "rTNFcsut4LfGuAFKEUVVpwcaCOTJzOd9twZdIW910jb3k+iicx2uvhttIZ3Qg9Qgty3BEF2xbOrz6boTfb30dMomcgrkTqdFPwnhqbk+kIQ7rZiwny9D7NUrTgA5kpX3KsZvrXzUZyP2x9YOlxbgm572lmxKvM7HAQQhIQ/p6HBmoY30bGXFK0BtIu1pW9TjhOYrLQoU18nWYjWqDA1ynkmOytpv7QRI1P1+0NoxL0q2zO1DgeSvnE8CZGo/o5Ap/WHK5W2RAsinpzN4/LjPnmB6U01I5XCoJoC0GK/yMZycd2Oh8Nq6+wBkC1U85oy0ktOY4nLvsQMLrourmMGdZHuTbqpeJ8Ao/5PRYJ+WBvRUwPfGKBL2+2IKZF49vAJqkcGWSHGE76ZN2erXeuNazf/o9o3lIE3q739o4c8t9QGPe31GT2Go/rOz1BsrASwvauNulCh+++yz+CQzBIuikA==";

#[test]
fn v4_easywechat_decrypt_and_appid_negative() {
    let c = Crypt::from_parts("pamtest", SAMPLE_KEY, "wxb11529c136998cb6").unwrap();
    let d = c
        .verify_and_decrypt(
            "4f3ad57b6989f09f4eb392acce4f9e93942ed890",
            "1458300676",
            "260774613",
            V4_ENCRYPT,
        )
        .unwrap();
    assert_eq!(
        d.message_str().unwrap(),
        "<xml><URL><![CDATA[http://wechat.laravel.so/server]]></URL><ToUserName><![CDATA[asdasdasd]]></ToUserName><FromUserName><![CDATA[asdasdasdsadasd]]></FromUserName><CreateTime>1234567898</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hello]]></Content><MsgId>12345</MsgId></xml>"
    );
    let wrong = Crypt::from_parts("pamtest", SAMPLE_KEY, "invalid appid").unwrap();
    assert!(matches!(
        wrong.decrypt(V4_ENCRYPT).unwrap_err(),
        CryptoError::AppId { .. }
    ));
}

const V6_KEY: &str = "qPcxoOmy62xVVzwSvp2OSVqg6UAzcHO1ORqg8PHVi8q";
const V6_ENCRYPT: &str = "oRoRDn1RFBlfwyYs33O4zkuMRjdhTZfrGj9H9tOYO3pIavNSeiJNQ1rE3vNKSVi0UsMaDynAenbfqLQoLIvYnbnTnmRcgnB3T2rs9PcFFyRP6RBgxce70xwDaeGNEdu+R+rQ7udMYiq727zYMOpjdW8ad1i76/NPv1Bh2en2+ifcBUe/zyh0SdHdC9NWX7cvjHsTYTuFQdQipkO+D6POEiB0OWMy+13Fue8KZtkabVRq2yEhcQnWf60cLtdEP+RgKP2mxi+ewPiblAC69+db04jRFpRYwLDgOJo/+sefoZVvdx7LQuAxsCrvi0cMuqsLxyt1I8/WLSxQH/zH0zfm1cdiETwczu52QLYu3ddXBasW8EeC09eIf5golfdvEvLRxOD5w/1s4oamzRzb3v9KQhpKPttGvizM1A44BWP5OODaJcoiqmNHI3iZFpI2gs2x2hOHpwimT4XKT4ANMpbgXg==";

#[test]
fn v6_real_component_ticket_push() {
    let c = Crypt::from_parts("wxPlatformZjj20180424", V6_KEY, "wx805ef435fca595d2").unwrap();
    let d = c
        .verify_and_decrypt(
            "2b36b2a70b4c59773d95b5a273a1a934a7eece8c",
            "1524734617",
            "49717202",
            V6_ENCRYPT,
        )
        .unwrap();
    assert_eq!(
        d.message_str().unwrap(),
        "<xml><AppId><![CDATA[wx805ef435fca595d2]]></AppId>\n<CreateTime>1524734617</CreateTime>\n<InfoType><![CDATA[component_verify_ticket]]></InfoType>\n<ComponentVerifyTicket><![CDATA[ticket@@@t_KixLUyGjV-ZnUYrUP58mbI5maqS_AcRWkJY9kNQ4tPj360c1kD5HWqQt7AiFowdBZQWBYeQwr-hvk2ja-oTQ]]></ComponentVerifyTicket>\n</xml>"
    );
    let opened = wxhub_crypto::open(&AesKey::parse(V6_KEY).unwrap(), V6_ENCRYPT).unwrap();
    assert_eq!(opened.random(), b"7ff40743037ee30d");
}

#[test]
fn plain_url_verification_official_example() {
    let c = Crypt::from_parts("AAAAA", SAMPLE_KEY, "wx1").unwrap();
    assert_eq!(
        c.verify_url_plain(
            "f464b24fc39322e44b38aa78f5edd27bd1441696",
            "1714036504",
            "1514711492",
            "4375120948345356249"
        )
        .unwrap(),
        "4375120948345356249"
    );
    assert_eq!(
        c.verify_url_plain(
            "f464b24fc39322e44b38aa78f5edd27bd1441697",
            "1714036504",
            "1514711492",
            "4375120948345356249"
        )
        .unwrap_err(),
        CryptoError::Signature
    );
}

#[test]
fn key_rotation_uses_the_previous_key_and_reports_it() {
    let old = AesKey::parse(SAMPLE_KEY).unwrap();
    let new = AesKey::parse(V3_KEY).unwrap();
    let before = Crypt::new("t", "wxapp", old.clone(), None);
    let ct = before.encrypt(b"<xml>rotated</xml>", KeySlot::Current);

    let after = Crypt::new("t", "wxapp", new.clone(), Some(old));
    let d = after.decrypt(&ct).unwrap();
    assert_eq!(d.message(), b"<xml>rotated</xml>");
    assert_eq!(d.slot(), KeySlot::Previous);
    // The reply goes back under the key that worked.
    let reply = after.encrypt(b"<xml>reply</xml>", d.slot());
    assert_eq!(
        before.decrypt(&reply).unwrap().message(),
        b"<xml>reply</xml>"
    );

    let without_previous = Crypt::new("t", "wxapp", new, None);
    assert!(without_previous.decrypt(&ct).is_err());
}

#[test]
fn another_tenants_key_is_never_accepted() {
    let a = Crypt::from_parts("t", SAMPLE_KEY, "wxaaaa").unwrap();
    let b = Crypt::from_parts("t", V3_KEY, "wxbbbb").unwrap();
    let same_key_other_appid = Crypt::from_parts("t", SAMPLE_KEY, "wxbbbb").unwrap();
    let ct = a.encrypt(b"<xml/>", KeySlot::Current);
    assert!(b.decrypt(&ct).is_err());
    assert_eq!(
        same_key_other_appid.decrypt(&ct).unwrap_err().code(),
        -40005
    );
}
