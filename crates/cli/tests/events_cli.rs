//! `wxhub events peek` against the real RabbitMQ: prints what waits in a queue, decoded, and
//! leaves every message where it was.

use std::process::{Command, Output};
use std::time::Duration;

use prost::Message as _;
use tokio_util::sync::CancellationToken;
use wxhub_bus::{Outgoing, Topology};
use wxhub_proto::events::v1::CallbackEvent;
use wxhub_testkit::Namespace;

fn wxhub(args: &[&str], ns: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wxhub"))
        .args(args)
        .env_remove("WXHUB_CONFIG")
        .env("WXHUB_NAMESPACE", ns)
        .env("WXHUB_AMQP__URL", wxhub_testkit::amqp_url())
        // Same delivery limit as the testkit's topology, so the declarations agree.
        .env("WXHUB_AMQP__DELIVERY_LIMIT", "5")
        .output()
        .expect("spawn wxhub")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_shows_unrouted_events_and_dead_letter_reasons_without_consuming() {
    let ns = Namespace::new("cli-peek");
    let cancel = CancellationToken::new();
    let bus = ns.bus(&cancel).await;
    let t = ns.topology();
    for (i, content) in ["first", "second"].iter().enumerate() {
        let event = CallbackEvent {
            tenant: "acme".into(),
            appid: "wxshop".into(),
            kind: "text".into(),
            xml: format!("<xml><Content><![CDATA[{content}]]></Content></xml>"),
            dedupe_key: format!("acme:wxshop:msg:{i}"),
            ..Default::default()
        };
        let body = event.encode_to_vec();
        let events = t.events_exchange();
        bus.publish(&Outgoing {
            exchange: &events,
            routing_key: &Topology::event_key("acme", "wxshop", "text"),
            body: &body,
            message_id: &event.dedupe_key,
            message_type: "wxhub.events.v1.CallbackEvent",
            headers: &[],
        })
        .await
        .unwrap();
    }
    let dead = t.dead_exchange();
    let reason = vec![(
        "x-wxhub-reason".to_string(),
        "cannot parse body".to_string(),
    )];
    bus.publish(&Outgoing {
        exchange: &dead,
        routing_key: "acme.component.authorized",
        body: b"junk",
        message_id: "m-dead",
        message_type: "",
        headers: &reason,
    })
    .await
    .unwrap();

    let out = tokio::task::spawn_blocking({
        let name = ns.name().to_owned();
        move || wxhub(&["events", "peek", "unrouted", "--count", "10"], &name)
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["routing_key"], "acme.wxshop.text");
    assert_eq!(lines[0]["message_id"], "acme:wxshop:msg:0");
    assert_eq!(
        lines[1]["body"]["xml"],
        "<xml><Content><![CDATA[second]]></Content></xml>"
    );

    let out = tokio::task::spawn_blocking({
        let name = ns.name().to_owned();
        move || wxhub(&["events", "peek", "dead"], &name)
    })
    .await
    .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let dead: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(dead["headers"]["x-wxhub-reason"], "cannot parse body");
    assert_eq!(dead["body"]["bytes"], 4);

    // Peeking consumed nothing.
    let still = ns
        .drain_queue(&bus, &t.unrouted_queue(), Duration::from_secs(5))
        .await;
    assert_eq!(still.len(), 2);
    // A queue that does not exist is a clear failure (exit 2, one line).
    let missing = tokio::task::spawn_blocking({
        let name = ns.name().to_owned();
        move || wxhub(&["events", "peek", "no-such-queue"], &name)
    })
    .await
    .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no-such-queue"));
    ns.cleanup(Some(&bus), &[]).await;
}
