//! Against the real RabbitMQ on 127.0.0.1:5672: confirmed publishing and routing, the alternate
//! exchange, unroutable jobs, dead-lettering with a reason, requeue counting, and recovery after
//! the connection is killed. Each test uses its own namespace and deletes it afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions};
use tokio_util::sync::CancellationToken;
use wxhub_bus::{AmqpConfig, Bus, BusError, Outcome, Outgoing, Topology, consume};

fn amqp_url() -> String {
    std::env::var("WXHUB_TEST_AMQP_URL")
        .ok()
        .or_else(|| {
            std::env::var("WXHUB_TEST_AMQP_URLS")
                .ok()
                .and_then(|v| v.split(',').next().map(str::to_owned))
        })
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The test broker: the local one, or every node of `WXHUB_TEST_AMQP_URLS` (a cluster).
fn config() -> AmqpConfig {
    let mut config = AmqpConfig::new(amqp_url());
    if let Ok(nodes) = std::env::var("WXHUB_TEST_AMQP_URLS") {
        config.urls = nodes
            .split(',')
            .filter(|u| !u.trim().is_empty())
            .map(|u| wxhub_domain::SecretUrl::new(u.trim()))
            .collect();
    }
    config
}

async fn bus(test: &str) -> (Bus, CancellationToken) {
    let ns = format!("t-{test}-{:08x}", rand::random::<u32>());
    let cancel = CancellationToken::new();
    let bus = Bus::start(config(), Topology::new(ns, 3), "bus-test", cancel.clone());
    assert!(
        bus.wait_connected(Duration::from_secs(20)).await,
        "RabbitMQ at {} is not reachable",
        amqp_url()
    );
    (bus, cancel)
}

async fn cleanup(bus: &Bus, extra: &[String]) {
    // Not right after the queues were declared: a quorum queue with at-least-once
    // dead-lettering deleted while its dead-letter worker still registers crashes that worker,
    // and two such crashes take the broker's rabbit_fifo_dlx_sup down (see testkit's
    // MIN_QUEUE_AGE).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ch = bus.channel().await.unwrap();
    bus.topology().delete(&ch, extra).await.unwrap();
    bus.close().await;
}

async fn get_all(bus: &Bus, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
    let ch = bus.channel().await.unwrap();
    let mut out = Vec::new();
    // Confirmed messages are in the queue already; a short retry loop absorbs nothing but noise.
    for _ in 0..20 {
        match ch
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            Some(m) => {
                m.delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .unwrap();
                out.push(m);
            }
            None if out.is_empty() => tokio::time::sleep(Duration::from_millis(25)).await,
            None => break,
        }
    }
    out
}

fn msg<'a>(
    exchange: &'a str,
    key: &'a str,
    id: &'a str,
    headers: &'a [(String, String)],
) -> Outgoing<'a> {
    Outgoing {
        exchange,
        routing_key: key,
        body: b"payload",
        message_id: id,
        message_type: "test.v1",
        headers,
    }
}

#[tokio::test]
async fn confirmed_publishes_route_to_their_queues() {
    let (bus, _cancel) = bus("route").await;
    let t = bus.topology().clone();
    let headers = vec![(
        "traceparent".to_string(),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string(),
    )];
    bus.publish(&msg(
        &t.events_exchange(),
        &Topology::component_key("acme", "component_verify_ticket"),
        "m1",
        &headers,
    ))
    .await
    .unwrap();
    bus.publish(&msg(
        &t.events_exchange(),
        &Topology::event_key("acme", "wx1", "text"),
        "m2",
        &[],
    ))
    .await
    .unwrap();

    let tc = get_all(&bus, &t.token_control_queue()).await;
    assert_eq!(tc.len(), 1);
    let props = &tc[0].delivery.properties;
    assert_eq!(props.message_id().as_ref().unwrap().as_str(), "m1");
    assert_eq!(props.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        props.content_type().as_ref().unwrap().as_str(),
        wxhub_bus::PROTOBUF
    );
    let h = props.headers().as_ref().unwrap();
    assert!(h.inner().contains_key("traceparent"));

    // No binding wants a text message: the alternate exchange keeps it.
    let unrouted = get_all(&bus, &t.unrouted_queue()).await;
    assert_eq!(unrouted.len(), 1);
    assert_eq!(
        unrouted[0]
            .delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .as_str(),
        "m2"
    );
    cleanup(&bus, &[]).await;
}

#[tokio::test]
async fn a_publish_past_its_send_deadline_is_never_sent_and_the_pool_stays_whole() {
    let (bus, _cancel) = bus("expired").await;
    let t = bus.topology().clone();
    let key = Topology::event_key("acme", "wx1", "text");
    let past = tokio::time::Instant::now();
    let late = bus
        .publish_by(&msg(&t.events_exchange(), &key, "late", &[]), past)
        .await;
    assert_eq!(late, Err(BusError::Expired));
    // Every channel is still usable (the abandoned publish left nothing outstanding), and a
    // publish with time left goes through.
    let soon = tokio::time::Instant::now() + Duration::from_secs(10);
    for i in 0..(AmqpConfig::new(amqp_url()).publisher_channels + 1) {
        bus.publish_by(
            &msg(&t.events_exchange(), &key, &format!("on-time-{i}"), &[]),
            soon,
        )
        .await
        .unwrap();
    }
    let got = get_all(&bus, &t.unrouted_queue()).await;
    let ids: Vec<_> = got
        .iter()
        .map(|m| {
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(!ids.iter().any(|id| id == "late"), "{ids:?}");
    assert_eq!(
        ids.len(),
        AmqpConfig::new(amqp_url()).publisher_channels + 1
    );
    cleanup(&bus, &[]).await;
}

#[tokio::test]
async fn unroutable_job_is_an_error_not_a_silent_drop() {
    let (bus, _cancel) = bus("unroutable").await;
    let t = bus.topology().clone();
    let err = bus
        .publish(&msg(&t.jobs_exchange(), "no-such-job", "j1", &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::Unroutable { .. }), "{err:?}");
    bus.publish(&msg(
        &t.jobs_exchange(),
        wxhub_bus::topology::RELEASE_CHECK_KEY,
        "j2",
        &[],
    ))
    .await
    .unwrap();
    assert_eq!(get_all(&bus, &t.release_check_queue()).await.len(), 1);
    cleanup(&bus, &[]).await;
}

/// A returned (unroutable) message must be reported to *its* publisher, also when many publishes
/// share a channel and the broker confirms them with one multiple-ack. lapin hands a return to
/// whichever confirm of that ack it completes first; trusting that would report the unroutable
/// message as stored (a lost callback answered 200) and a stored one as unroutable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_returns_reach_their_own_publishers() {
    let ns = format!("t-returns-{:08x}", rand::random::<u32>());
    let cancel = CancellationToken::new();
    let mut config = AmqpConfig::new(amqp_url());
    config.publisher_channels = 1;
    let bus = Bus::start(config, Topology::new(ns, 3), "bus-test", cancel.clone());
    assert!(bus.wait_connected(Duration::from_secs(20)).await);
    let t = bus.topology().clone();
    let jobs = t.jobs_exchange();
    // Publishes abandoned before their confirm (a caller's deadline) leave that confirm, or a
    // return, due on their channel; it must not be handed to a later publish.
    for i in 0..20 {
        let id = format!("abandoned{i}");
        let events = t.events_exchange();
        for outgoing in [
            msg(&events, "acme.wx1.text", &id, &[]),
            msg(&jobs, "no-such-job", &id, &[]),
        ] {
            let _ = tokio::time::timeout(Duration::from_micros(50), bus.publish(&outgoing)).await;
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..600u32 {
        let (bus, jobs) = (bus.clone(), jobs.clone());
        tasks.spawn(async move {
            let routable = i % 5 != 0;
            let key = if routable {
                wxhub_bus::topology::RELEASE_CHECK_KEY
            } else {
                "no-such-job"
            };
            let id = format!("m{i}");
            let result = bus.publish(&msg(&jobs, key, &id, &[])).await;
            (i, routable, result)
        });
    }
    let (mut stored, mut wrong) = (0, Vec::new());
    while let Some(joined) = tasks.join_next().await {
        let (i, routable, result) = joined.unwrap();
        match (routable, &result) {
            (true, Ok(())) => stored += 1,
            (false, Err(BusError::Unroutable { .. })) => {}
            _ => wrong.push(format!("m{i} routable={routable}: {result:?}")),
        }
    }
    assert!(wrong.is_empty(), "misattributed: {wrong:?}");
    assert_eq!(stored, 480);
    let ch = bus.channel().await.unwrap();
    let queue = ch
        .queue_declare(
            t.release_check_queue().as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        queue.message_count(),
        480,
        "every confirmed publish is queued"
    );
    cleanup(&bus, &[]).await;
}

#[tokio::test]
async fn recovers_after_the_connection_dies() {
    let (bus, _cancel) = bus("recover").await;
    let t = bus.topology().clone();
    let key = Topology::component_key("acme", "authorized");
    bus.publish(&msg(&t.events_exchange(), &key, "before", &[]))
        .await
        .unwrap();
    bus.kill_connection().await;
    // While down, publishing fails fast (the gateway turns this into a 503).
    let during = bus
        .publish(&msg(&t.events_exchange(), &key, "during", &[]))
        .await;
    assert!(
        matches!(during, Err(BusError::Unavailable(_))),
        "{during:?}"
    );
    assert!(
        bus.wait_connected(Duration::from_secs(20)).await,
        "supervisor must reconnect"
    );
    // Retried like WeChat would, it gets through.
    let mut ok = false;
    for _ in 0..50 {
        if bus
            .publish(&msg(&t.events_exchange(), &key, "after", &[]))
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok);
    let ids: Vec<String> = get_all(&bus, &t.token_control_queue())
        .await
        .iter()
        .map(|m| {
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, vec!["before".to_string(), "after".to_string()]);
    cleanup(&bus, &[]).await;
}

#[tokio::test]
async fn consumer_acks_requeues_and_dead_letters_with_a_reason() {
    let (bus, cancel) = bus("consume").await;
    let t = bus.topology().clone();
    let key = Topology::component_key("acme", "unauthorized");
    for id in ["ok", "flaky", "poison"] {
        bus.publish(&msg(&t.events_exchange(), &key, id, &[]))
            .await
            .unwrap();
    }
    let seen = Arc::new(AtomicUsize::new(0));
    let flaky_deliveries = Arc::new(AtomicUsize::new(0));
    let (s, f) = (seen.clone(), flaky_deliveries.clone());
    let consumer_cancel = cancel.child_token();
    let task = tokio::spawn(consume(
        bus.clone(),
        t.token_control_queue(),
        2,
        Duration::from_secs(2),
        move |r| {
            let (s, f) = (s.clone(), f.clone());
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                match r.message_id.as_deref() {
                    Some("flaky") if f.fetch_add(1, Ordering::SeqCst) == 0 => Outcome::Requeue,
                    Some("poison") => Outcome::DeadLetter("cannot parse body".into()),
                    _ => Outcome::Ack,
                }
            }
        },
        consumer_cancel.clone(),
    ));
    for _ in 0..100 {
        if seen.load(Ordering::SeqCst) >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumer_cancel.cancel();
    task.await.unwrap();
    assert_eq!(
        flaky_deliveries.load(Ordering::SeqCst),
        2,
        "requeued once, then acked"
    );
    let dead = get_all(&bus, &t.dead_queue()).await;
    assert_eq!(dead.len(), 1);
    let headers = dead[0].delivery.properties.headers().as_ref().unwrap();
    let Some(lapin::types::AMQPValue::LongString(reason)) = headers.inner().get("x-wxhub-reason")
    else {
        panic!("no reason header: {headers:?}")
    };
    assert_eq!(reason.as_bytes(), b"cannot parse body");
    assert!(
        get_all(&bus, &t.token_control_queue()).await.is_empty(),
        "everything was settled"
    );
    cleanup(&bus, &[]).await;
}

/// A dependency down for longer than the delivery limit's requeues took at a fixed 200 ms
/// (3 here: about 0.6 s) loses nothing: while every delivery fails the pauses grow, and the
/// message is handled once the dependency is back instead of being dead-lettered.
#[tokio::test]
async fn requeues_while_a_dependency_is_down_outlast_the_delivery_limit() {
    let (bus, cancel) = bus("requeue-outage").await;
    let t = bus.topology().clone();
    let key = Topology::component_key("acme", "unauthorized");
    bus.publish(&msg(&t.events_exchange(), &key, "waits", &[]))
        .await
        .unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let deliveries = Arc::new(AtomicUsize::new(0));
    let (h, d) = (handled.clone(), deliveries.clone());
    let down_until = std::time::Instant::now() + Duration::from_millis(1200);
    let consumer_cancel = cancel.child_token();
    let task = tokio::spawn(consume(
        bus.clone(),
        t.token_control_queue(),
        1,
        Duration::from_secs(2),
        move |_| {
            let (h, d) = (h.clone(), d.clone());
            async move {
                d.fetch_add(1, Ordering::SeqCst);
                if std::time::Instant::now() < down_until {
                    Outcome::Requeue
                } else {
                    h.fetch_add(1, Ordering::SeqCst);
                    Outcome::Ack
                }
            }
        },
        consumer_cancel.clone(),
    ));
    for _ in 0..100 {
        if handled.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumer_cancel.cancel();
    task.await.unwrap();
    assert_eq!(
        handled.load(Ordering::SeqCst),
        1,
        "handled once the dependency was back ({} deliveries)",
        deliveries.load(Ordering::SeqCst)
    );
    assert!(
        get_all(&bus, &t.dead_queue()).await.is_empty(),
        "nothing was dead-lettered"
    );
    cleanup(&bus, &[]).await;
}

/// With several nodes (a cluster), a node that refuses connections is passed over, and after a
/// lost connection the bus tries the following node first.
#[tokio::test]
async fn the_first_reachable_node_is_used_and_a_lost_connection_moves_on() {
    let ns = format!("t-nodes-{:08x}", rand::random::<u32>());
    let cancel = CancellationToken::new();
    let mut config = config();
    let live = config
        .nodes()
        .into_iter()
        .map(|u| u.expose().to_owned())
        .collect::<Vec<_>>();
    // A node that refuses every connection, first in the list and again between the live ones.
    let dead = "amqp://guest:guest@127.0.0.1:1/%2f".to_owned();
    let mut nodes = vec![dead.clone()];
    for url in live {
        nodes.push(url);
        nodes.push(dead.clone());
    }
    config.urls = nodes
        .into_iter()
        .map(wxhub_domain::SecretUrl::new)
        .collect();
    let bus = Bus::start(config, Topology::new(ns, 3), "bus-test", cancel.clone());
    assert!(
        bus.wait_connected(Duration::from_secs(20)).await,
        "connected past the dead node"
    );
    let exchange = bus.topology().events_exchange();
    let publish = |id: &'static str| Outgoing {
        exchange: &exchange,
        routing_key: "acme.wx1.text",
        body: b"x",
        message_id: id,
        message_type: "test",
        headers: &[],
    };
    bus.publish(&publish("m1")).await.expect("stored");
    // Lost: the next attempt starts with the node after the one in use (a dead one), and moves
    // on to a live one.
    bus.kill_connection().await;
    let mut reconnected = false;
    for _ in 0..200 {
        if bus.is_connected() && bus.publish(&publish("m2")).await.is_ok() {
            reconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reconnected, "reconnected to a live node");
    let stored = get_all(&bus, &bus.topology().unrouted_queue()).await;
    assert_eq!(stored.len(), 2, "both publishes stored");
    cleanup(&bus, &[]).await;
    cancel.cancel();
}

#[test]
fn every_node_must_be_an_amqp_url() {
    let mut config = AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f");
    config.urls = vec![
        wxhub_domain::SecretUrl::new("amqp://u:secret@a:5672/%2f"),
        wxhub_domain::SecretUrl::new("http://b:5672"),
    ];
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("amqp.urls[1]"), "{err}");
    assert!(!err.contains("secret"), "{err}");
}
