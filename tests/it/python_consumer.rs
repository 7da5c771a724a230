//! The bus contract from another language: README's Python consumer
//! (`examples/python/consume.py`, pika + classes that `grpc_tools.protoc` generates from
//! `proto/wxhub/events/v1/events.proto`) declares its own queue, binds it to the events exchange
//! and decodes what the real gateway published. `scripts/ensure-python.sh` (run by `make test`)
//! prepares its virtualenv under the target dir.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use wxhub_sim::{MessageSpec, PushRequest};
use wxhub_tests::{AUTH1, COMPONENT, Stack, TENANT, user};

/// The consumer process, killed on drop (a failed test leaves nothing running).
struct Consumer {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Consumer {
    fn start(ns: &str, queue: &str, binding: &str, count: usize) -> Self {
        let exe = std::env::current_exe().expect("current exe");
        // {target}/debug/deps/it-… → {target}
        let target = exe.ancestors().nth(3).expect("target dir").to_path_buf();
        let venv = target.join("python");
        let python = venv.join("bin/python");
        assert!(
            python.exists() && venv.join("gen/wxhub/events/v1/events_pb2.py").exists(),
            "{} is not prepared: run scripts/ensure-python.sh (make test does)",
            venv.display()
        );
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/python/consume.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(["--amqp", &wxhub_testkit::amqp_url(), "--namespace", ns])
            .args(["--queue", queue, "--bind", binding])
            .args(["--count", &count.to_string()])
            .env("PYTHONPATH", venv.join("gen"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the Python consumer starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    fn next(&self, what: &str) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the Python consumer printed no {what} within 30 s"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{what}: {e}: {line}"))
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_consumer_of_the_readme_decodes_what_the_gateway_published() {
    let stack = Stack::start("python-consumer").await.unwrap();
    let ns = stack.ns.name().to_owned();
    let queue = format!("{ns}.python-crm");
    stack.ns.track_queue(queue.clone());
    let mut consumer = Consumer::start(&ns, &queue, &format!("{TENANT}.*.text"), 2);
    assert_eq!(consumer.next("ready line")["ready"], true);

    let alice = user(0);
    let text = |content: &str| {
        PushRequest::to_authorizer(COMPONENT, AUTH1, &alice, MessageSpec::text(content))
    };
    let first = stack
        .sim
        .push_message(&text("你好 from WeChat"))
        .await
        .unwrap();
    assert_eq!(first.attempts.last().and_then(|a| a.status), Some(200));
    // Not bound (an event), then a second text: the consumer sees the two texts only.
    let subscribe =
        PushRequest::to_authorizer(COMPONENT, AUTH1, &alice, MessageSpec::event("subscribe"));
    stack.sim.push_message(&subscribe).await.unwrap();
    stack.sim.push_message(&text("second")).await.unwrap();

    let events = [consumer.next("first event"), consumer.next("second event")];
    for e in &events {
        assert_eq!(e["routing_key"], format!("{TENANT}.{AUTH1}.text"), "{e}");
        assert_eq!(e["type"], "wxhub.events.v1.CallbackEvent", "{e}");
        assert_eq!(e["tenant"], TENANT, "{e}");
        assert_eq!(e["appid"], AUTH1, "{e}");
        assert_eq!(e["kind"], "text", "{e}");
        assert_eq!(e["msg_type"], "text", "{e}");
        assert_eq!(e["from_user_name"], alice, "{e}");
        assert_eq!(e["xml_has_content"], true, "{e}");
        assert!(
            e["message_id"].as_str().is_some_and(|m| !m.is_empty()),
            "message_id is the dedupe key: {e}"
        );
        assert!(
            e["traceparent"]
                .as_str()
                .is_some_and(|t| t.starts_with("00-")),
            "traceparent: {e}"
        );
    }
    assert_ne!(events[0]["message_id"], events[1]["message_id"]);
    // --count 2: it acked both and exits cleanly.
    let status = tokio::task::spawn_blocking(move || {
        for _ in 0..300 {
            if let Some(status) = consumer.child.try_wait().expect("wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    })
    .await
    .unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "the consumer exited with {status:?}"
    );
    let left = stack
        .ns
        .drain_queue(&stack.bus, &queue, Duration::from_millis(200))
        .await;
    assert!(
        left.is_empty(),
        "both events were acked, {} left",
        left.len()
    );
    stack.stop().await;
}
