//! Verify + decrypt + parse of a ~1.2 KB encrypted text-message callback on one core.
//!
//! `make bench` prints the messages/s figure (criterion's "thrpt" line).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use wxhub_crypto::{Crypt, KeySlot, msg_signature, signature};
use wxhub_message::{Inbound, Limits, parse, parse_envelope};

struct Callback {
    body: String,
    signature: String,
    msg_signature: String,
    timestamp: &'static str,
    nonce: &'static str,
}

fn callback(crypt: &Crypt) -> Callback {
    // A text message whose encrypted envelope is about 1.2 KB, like a typical user message.
    let content = "你好，我想查询一下订单的物流状态，订单号是 20261121000123，谢谢！".repeat(6);
    let xml = format!(
        "<xml><ToUserName><![CDATA[gh_3c884a361561]]></ToUserName><FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content><MsgId>6054768590064713728</MsgId></xml>"
    );
    let encrypt = crypt.encrypt(xml.as_bytes(), KeySlot::Current);
    let body = format!(
        "<xml><ToUserName><![CDATA[gh_3c884a361561]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    );
    let (timestamp, nonce) = ("1700000000", "1320562132");
    Callback {
        signature: signature(crypt.token(), timestamp, nonce),
        msg_signature: msg_signature(crypt.token(), timestamp, nonce, &encrypt),
        body,
        timestamp,
        nonce,
    }
}

fn handle(crypt: &Crypt, limits: &Limits, cb: &Callback) -> Inbound {
    crypt
        .verify_signature(&cb.signature, cb.timestamp, cb.nonce)
        .expect("signature");
    let envelope = parse_envelope(cb.body.as_bytes(), limits).expect("envelope");
    let encrypt = envelope.encrypt().expect("Encrypt");
    let plain = crypt
        .verify_and_decrypt(&cb.msg_signature, cb.timestamp, cb.nonce, encrypt)
        .expect("decrypt");
    parse(plain.message_str().expect("utf8")).expect("message")
}

fn bench(c: &mut Criterion) {
    let crypt = Crypt::from_parts(
        "wxhubtoken",
        "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        "wx805ef435fca595d2",
    )
    .expect("crypt");
    let cb = callback(&crypt);
    let limits = Limits::default();
    assert!(matches!(handle(&crypt, &limits, &cb), Inbound::Account(_)));
    let mut group = c.benchmark_group("callback");
    group.throughput(Throughput::Elements(1));
    group.bench_function(format!("verify_decrypt_parse_{}B", cb.body.len()), |b| {
        b.iter(|| black_box(handle(&crypt, &limits, black_box(&cb))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
