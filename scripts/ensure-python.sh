#!/usr/bin/env bash
# Prepares the Python example consumer (examples/python/consume.py) for its test: a virtualenv
# under the target dir with pika, protobuf and grpcio-tools from PyPI, and the classes generated
# from proto/wxhub/events/v1/events.proto. Idempotent; `make test` runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
venv="$target/python"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import pika, google.protobuf, grpc_tools' 2>/dev/null; then
  echo "[python] creating $venv with pika, protobuf and grpcio-tools" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'pika>=1.3,<2' 'protobuf>=5,<7' 'grpcio-tools>=1.60,<2'
fi
mkdir -p "$venv/gen"
"$venv/bin/python" -m grpc_tools.protoc -I proto --python_out="$venv/gen" proto/wxhub/events/v1/events.proto
echo "[python] $venv ready (events_pb2 in $venv/gen)" >&2
