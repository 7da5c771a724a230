#!/usr/bin/env python3
"""A business consumer of wxhub's callback events, in Python (pika + protobuf).

wxhub's gateway publishes every verified, decrypted WeChat callback to the topic exchange
`{namespace}.events` as a `wxhub.events.v1.CallbackEvent` (proto/wxhub/events/v1/events.proto),
routing key `{tenant}.{appid}.{kind}`, AMQP message_id = the callback's dedupe key. A business
system needs nothing from wxhub but this contract: it declares its own queue, binds it, and acks
after its work. `make test` runs this script against the real gateway
(tests/it/python_consumer.rs); scripts/ensure-python.sh prepares its packages and generates
`events_pb2` with:

    python -m grpc_tools.protoc -I proto --python_out=OUT proto/wxhub/events/v1/events.proto

Prints one JSON line per event; with --count N it exits after N events.
"""
import argparse
import json
import sys

import pika
from wxhub.events.v1 import events_pb2


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    p.add_argument("--namespace", default="wxhub", help="the services' `namespace`")
    p.add_argument("--queue", required=True, help="this consumer's own queue")
    p.add_argument("--bind", action="append", required=True,
                   help="a routing key pattern, e.g. acme.*.text, acme.#, *.*.event.#")
    p.add_argument("--count", type=int, default=0, help="exit after this many events (0: never)")
    args = p.parse_args()
    ns = args.namespace

    conn = pika.BlockingConnection(pika.URLParameters(args.amqp))
    ch = conn.channel()
    ch.queue_declare(args.queue, durable=True, arguments={
        "x-queue-type": "quorum",
        "x-delivery-limit": 20,                      # a poison message ends in {ns}.dead
        "x-dead-letter-exchange": f"{ns}.dead",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",              # required by at-least-once dead-lettering
    })
    for key in args.bind:
        ch.queue_bind(args.queue, f"{ns}.events", routing_key=key)
    ch.basic_qos(prefetch_count=32)
    print(json.dumps({"ready": True, "queue": args.queue}), flush=True)

    seen = 0

    def on_message(ch, method, props, body):
        nonlocal seen
        event = events_pb2.CallbackEvent()
        event.ParseFromString(body)
        # At least once: a real consumer skips a message_id it already applied (for example a
        # Redis SET NX with a TTL) before doing its work.
        print(json.dumps({
            "routing_key": method.routing_key,
            "message_id": props.message_id,
            "type": props.type,
            "traceparent": (props.headers or {}).get("traceparent"),
            "tenant": event.tenant,
            "appid": event.appid,
            "kind": event.kind,
            "from_user_name": event.from_user_name,
            "msg_type": event.msg_type,
            "xml_has_content": "<Content>" in event.xml,
        }, ensure_ascii=False), flush=True)
        ch.basic_ack(method.delivery_tag)            # after the work: a crash before it redelivers
        seen += 1
        if args.count and seen >= args.count:
            ch.stop_consuming()

    ch.basic_consume(args.queue, on_message)
    ch.start_consuming()
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
