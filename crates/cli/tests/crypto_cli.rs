//! Runs the `wxhub` binary: `crypto decrypt|encrypt|verify-url|sign` on the protocol vectors,
//! and the failure contract (one line on stderr naming the problem, exit 2, empty stdout).

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn wxhub(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wxhub"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wxhub");
    // A command that refuses its input may exit before reading all of it: a broken pipe here is
    // the child's answer, which the assertions on its output then check.
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "writing stdin: {e}"
        );
    }
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty());
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Exit 2, empty stdout, exactly one stderr line containing `needle`.
fn fails_naming(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(out.stdout.is_empty(), "stdout must be empty on failure");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(
        stderr.to_lowercase().contains(needle),
        "{stderr:?} should name {needle}"
    );
}

const V6_KEY: &str = "qPcxoOmy62xVVzwSvp2OSVqg6UAzcHO1ORqg8PHVi8q";
const V6_BODY: &str = "<xml><AppId><![CDATA[wx805ef435fca595d2]]></AppId><Encrypt><![CDATA[oRoRDn1RFBlfwyYs33O4zkuMRjdhTZfrGj9H9tOYO3pIavNSeiJNQ1rE3vNKSVi0UsMaDynAenbfqLQoLIvYnbnTnmRcgnB3T2rs9PcFFyRP6RBgxce70xwDaeGNEdu+R+rQ7udMYiq727zYMOpjdW8ad1i76/NPv1Bh2en2+ifcBUe/zyh0SdHdC9NWX7cvjHsTYTuFQdQipkO+D6POEiB0OWMy+13Fue8KZtkabVRq2yEhcQnWf60cLtdEP+RgKP2mxi+ewPiblAC69+db04jRFpRYwLDgOJo/+sefoZVvdx7LQuAxsCrvi0cMuqsLxyt1I8/WLSxQH/zH0zfm1cdiETwczu52QLYu3ddXBasW8EeC09eIf5golfdvEvLRxOD5w/1s4oamzRzb3v9KQhpKPttGvizM1A44BWP5OODaJcoiqmNHI3iZFpI2gs2x2hOHpwimT4XKT4ANMpbgXg==]]></Encrypt></xml>";

fn v6_args<'a>(appid: &'a str, sig: &'a str) -> Vec<&'a str> {
    vec![
        "crypto",
        "decrypt",
        "--token",
        "wxPlatformZjj20180424",
        "--aes-key",
        V6_KEY,
        "--appid",
        appid,
        "--timestamp",
        "1524734617",
        "--nonce",
        "49717202",
        "--msg-signature",
        sig,
    ]
}

#[test]
fn decrypt_v6_ticket_push() {
    let out = wxhub(
        &v6_args(
            "wx805ef435fca595d2",
            "2b36b2a70b4c59773d95b5a273a1a934a7eece8c",
        ),
        V6_BODY,
    );
    let xml = ok(&out);
    assert!(xml.starts_with(
        "<xml><AppId><![CDATA[wx805ef435fca595d2]]></AppId>\n<CreateTime>1524734617</CreateTime>"
    ));
    assert!(xml.contains("<InfoType><![CDATA[component_verify_ticket]]></InfoType>"));
}

#[test]
fn decrypt_failures_name_the_problem() {
    let bad_sig = wxhub(
        &v6_args(
            "wx805ef435fca595d2",
            "2b36b2a70b4c59773d95b5a273a1a934a7eece8d",
        ),
        V6_BODY,
    );
    fails_naming(&bad_sig, "signature");
    let wrong_appid = wxhub(
        &v6_args(
            "wx0000000000000000",
            "2b36b2a70b4c59773d95b5a273a1a934a7eece8c",
        ),
        V6_BODY,
    );
    fails_naming(&wrong_appid, "appid");
    let not_xml = wxhub(
        &v6_args(
            "wx805ef435fca595d2",
            "2b36b2a70b4c59773d95b5a273a1a934a7eece8c",
        ),
        "<xml><Encrypt>",
    );
    fails_naming(&not_xml, "xml");
    let mut args = v6_args(
        "wx805ef435fca595d2",
        "2b36b2a70b4c59773d95b5a273a1a934a7eece8c",
    );
    args[5] = "tooshort";
    fails_naming(&wxhub(&args, V6_BODY), "encodingaeskey");
}

#[test]
fn decrypt_names_base64_and_padding() {
    let token = "t";
    let ts = "1";
    let nonce = "n";
    // Not base64.
    let enc = "!!!!";
    let sig = wxhub(
        &[
            "crypto",
            "sign",
            "--token",
            token,
            "--timestamp",
            ts,
            "--nonce",
            nonce,
            "--encrypt",
            enc,
        ],
        "",
    );
    let sig = ok(&sig);
    let body = format!("<xml><Encrypt><![CDATA[{enc}]]></Encrypt></xml>");
    let args = [
        "crypto",
        "decrypt",
        "--token",
        token,
        "--aes-key",
        V6_KEY,
        "--appid",
        "wx1",
        "--timestamp",
        ts,
        "--nonce",
        nonce,
        "--msg-signature",
        sig.trim(),
    ];
    fails_naming(&wxhub(&args, &body), "base64");
    // 32 bytes of zeros under this key: decrypts to garbage with bad padding.
    let enc = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let sig = ok(&wxhub(
        &[
            "crypto",
            "sign",
            "--token",
            token,
            "--timestamp",
            ts,
            "--nonce",
            nonce,
            "--encrypt",
            enc,
        ],
        "",
    ));
    let body = format!("<xml><Encrypt><![CDATA[{enc}]]></Encrypt></xml>");
    let args = [
        "crypto",
        "decrypt",
        "--token",
        token,
        "--aes-key",
        V6_KEY,
        "--appid",
        "wx1",
        "--timestamp",
        ts,
        "--nonce",
        nonce,
        "--msg-signature",
        sig.trim(),
    ];
    let out = wxhub(&args, &body);
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("padding") || stderr.contains("plaintext"),
        "{stderr}"
    );
}

#[test]
fn encrypt_then_decrypt_round_trip_with_given_timestamp_and_nonce() {
    let message = "<xml><ToUserName><![CDATA[o]]></ToUserName><FromUserName><![CDATA[gh]]></FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi ]]]]><![CDATA[> 你好]]></Content></xml>";
    let key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    let common = ["--token", "tok", "--aes-key", key, "--appid", "wxc"];
    let mut args = vec!["crypto", "encrypt"];
    args.extend(common);
    args.extend(["--timestamp", "1700000000", "--nonce", "abc"]);
    let envelope = ok(&wxhub(&args, &format!("{message}\n")));
    assert!(envelope.contains("<TimeStamp>1700000000</TimeStamp>"));
    assert!(envelope.contains("<Nonce><![CDATA[abc]]></Nonce>"));
    let sig_start = envelope.find("<MsgSignature><![CDATA[").unwrap() + 23;
    let sig = &envelope[sig_start..sig_start + 40];
    let mut args = vec!["crypto", "decrypt"];
    args.extend(common);
    args.extend([
        "--timestamp",
        "1700000000",
        "--nonce",
        "abc",
        "--msg-signature",
        sig,
    ]);
    assert_eq!(ok(&wxhub(&args, &envelope)), format!("{message}\n"));
}

#[test]
fn encrypt_rejects_non_xml_and_defaults_timestamp_and_nonce() {
    let key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    let args = [
        "crypto",
        "encrypt",
        "--token",
        "t",
        "--aes-key",
        key,
        "--appid",
        "wx1",
    ];
    fails_naming(&wxhub(&args, "not xml at all"), "xml");
    let out = ok(&wxhub(&args, "<xml/>"));
    assert!(out.contains("<TimeStamp>") && out.contains("<Nonce>"));
}

#[test]
fn verify_url_plain_and_wecom() {
    let out = wxhub(
        &[
            "crypto",
            "verify-url",
            "--token",
            "AAAAA",
            "--timestamp",
            "1714036504",
            "--nonce",
            "1514711492",
            "--signature",
            "f464b24fc39322e44b38aa78f5edd27bd1441696",
            "--echostr",
            "4375120948345356249",
        ],
        "",
    );
    assert_eq!(ok(&out), "4375120948345356249\n");
    let bad = wxhub(
        &[
            "crypto",
            "verify-url",
            "--token",
            "AAAAA",
            "--timestamp",
            "1714036504",
            "--nonce",
            "1514711493",
            "--signature",
            "f464b24fc39322e44b38aa78f5edd27bd1441696",
            "--echostr",
            "4375120948345356249",
        ],
        "",
    );
    fails_naming(&bad, "signature");
    let wecom = wxhub(
        &[
            "crypto",
            "verify-url",
            "--token",
            "123456",
            "--timestamp",
            "1411443780",
            "--nonce",
            "437374425",
            "--msg-signature",
            "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96",
            "--aes-key",
            "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR",
            "--appid",
            "wx49f0ab532d5d035a",
            "--echostr",
            "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q==",
        ],
        "",
    );
    assert_eq!(ok(&wecom), "5927782489442352469\n");
    // --msg-signature without the key is a usage error (exit 2, nothing on stdout).
    let usage = wxhub(
        &[
            "crypto",
            "verify-url",
            "--token",
            "t",
            "--timestamp",
            "1",
            "--nonce",
            "n",
            "--msg-signature",
            "x",
            "--echostr",
            "e",
        ],
        "",
    );
    assert_eq!(usage.status.code(), Some(2));
    assert!(usage.stdout.is_empty());
}

#[test]
fn sign_plain_and_msg_signature() {
    let plain = wxhub(
        &[
            "crypto",
            "sign",
            "--token",
            "test",
            "--timestamp",
            "1410685589",
            "--nonce",
            "test",
        ],
        "",
    );
    assert_eq!(ok(&plain), "f21891de399b4e33a1a93c9a7b8a8fffb5a443ff\n");
    let msg = wxhub(
        &[
            "crypto",
            "sign",
            "--token",
            "wxPlatformZjj20180424",
            "--timestamp",
            "1524734617",
            "--nonce",
            "49717202",
            "--encrypt",
            "oRoRDn1RFBlfwyYs33O4zkuMRjdhTZfrGj9H9tOYO3pIavNSeiJNQ1rE3vNKSVi0UsMaDynAenbfqLQoLIvYnbnTnmRcgnB3T2rs9PcFFyRP6RBgxce70xwDaeGNEdu+R+rQ7udMYiq727zYMOpjdW8ad1i76/NPv1Bh2en2+ifcBUe/zyh0SdHdC9NWX7cvjHsTYTuFQdQipkO+D6POEiB0OWMy+13Fue8KZtkabVRq2yEhcQnWf60cLtdEP+RgKP2mxi+ewPiblAC69+db04jRFpRYwLDgOJo/+sefoZVvdx7LQuAxsCrvi0cMuqsLxyt1I8/WLSxQH/zH0zfm1cdiETwczu52QLYu3ddXBasW8EeC09eIf5golfdvEvLRxOD5w/1s4oamzRzb3v9KQhpKPttGvizM1A44BWP5OODaJcoiqmNHI3iZFpI2gs2x2hOHpwimT4XKT4ANMpbgXg==",
        ],
        "",
    );
    assert_eq!(ok(&msg), "2b36b2a70b4c59773d95b5a273a1a934a7eece8c\n");
}
