# wxhub task runner. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
FUZZ_SECONDS ?= 20
# Every nextest run builds the whole workspace and picks its tests with a filter: `-p` would
# resolve features for those packages alone and recompile ~50 crates for each cluster phase.
# The chaos tests start the real binaries, which `--workspace` builds beside the test binaries.
WORKSPACE := --workspace --locked

.PHONY: help
help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

.PHONY: services
services: ## Install (apt) / start Redis and RabbitMQ when they are missing or stopped
	@./scripts/ensure-services.sh

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all

.PHONY: lint
lint: ## rustfmt check and clippy with warnings denied
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

.PHONY: test
test: services browser python lint deploy-check ## fmt check, clippy -D warnings, then every test (needs Redis + RabbitMQ, started if needed)
	@if command -v cargo-nextest >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --locked --profile ci -E 'not binary_id(wxhub-tests::chaos)'; \
	else \
		$(CARGO) test --workspace --locked -- --skip the_node_holding; \
	fi
	$(CARGO) test --workspace --locked --doc
	@$(MAKE) --no-print-directory test-rabbitmq-cluster
	@$(MAKE) --no-print-directory test-redis-cluster

# The suites whose behaviour depends on the broker, again against a local three-node RabbitMQ
# cluster (quorum queues replicated on every node; each service knows every node). The cluster
# runs beside the machine's broker and is stopped afterwards, even when a test fails.
.PHONY: test-rabbitmq-cluster
test-rabbitmq-cluster: ## bus, gateway, token-control and cross-service tests against a local 3-node RabbitMQ cluster
	@./scripts/rabbitmq-cluster.sh start >/dev/null
	@trap './scripts/rabbitmq-cluster.sh stop' EXIT; \
	export WXHUB_TEST_AMQP_URLS=$$(./scripts/rabbitmq-cluster.sh urls); \
	$(CARGO) nextest run $(WORKSPACE) --profile ci -E '(package(wxhub-bus) | package(wxhub-gateway) | package(wxhub-token-control) | package(wxhub-tests)) & not binary_id(wxhub-tests::chaos)' && \
	$(CARGO) nextest run $(WORKSPACE) --profile ci -E 'binary_id(wxhub-tests::chaos)' --no-capture

# Every fault-injection scenario (tests/chaos, one at a time) with longer load, the services on
# the local RabbitMQ cluster: broker nodes killed and paused; Redis Cluster primaries killed (a
# cluster the scenario starts itself) and a private Redis restarted empty; token-control
# replicas killed and paused; a worker and the gateway killed; network faults through the
# test kit's proxy and a netns partition (root). The binaries the scenarios run are built first
# (the same build as nextest's: --workspace --tests).
.PHONY: chaos
chaos: services ## Fault injection: every scenario of issue 15 under load, figures per scenario
	@./scripts/rabbitmq-cluster.sh start >/dev/null
	@trap './scripts/rabbitmq-cluster.sh stop' EXIT; \
	export WXHUB_TEST_AMQP_URLS=$$(./scripts/rabbitmq-cluster.sh urls) WXHUB_CHAOS_FULL=1; \
	$(CARGO) build $(WORKSPACE) -q --bins --tests && \
	$(CARGO) nextest run $(WORKSPACE) --profile chaos -E 'binary_id(wxhub-tests::chaos)' --run-ignored all --no-capture

# The suites whose behaviour depends on Redis, again against a local six-node Redis Cluster
# (three primaries, three replicas; every store and every service the harnesses start in cluster
# mode), then, alone and one at a time, the tests that change the cluster: a slot migrated
# between primaries (ASK, then MOVED) and the primary serving a tenant SIGKILLed during token
# refreshes (prints the failover's figures). The cluster runs beside the machine's Redis on
# free ports and is stopped afterwards, even when a test fails or the cluster does not come up.
.PHONY: test-redis-cluster
test-redis-cluster: ## store, gateway, token-control and cross-service tests against a local 6-node Redis Cluster, then a primary killed
	@trap './scripts/redis-cluster.sh stop' EXIT; \
	./scripts/redis-cluster.sh start >/dev/null && \
	export WXHUB_TEST_REDIS_CLUSTER=$$(./scripts/redis-cluster.sh urls) && \
	$(CARGO) nextest run $(WORKSPACE) --profile ci -E '(package(wxhub-store) | package(wxhub-gateway) | package(wxhub-token-control) | package(wxhub-tests)) & not binary_id(wxhub-tests::chaos)' && \
	$(CARGO) nextest run $(WORKSPACE) --profile ci --run-ignored only --no-capture --test-threads 1 \
		-E 'test(ask_and_moved_redirects_are_followed) | test(a_primary_killed_during_refreshes)'

.PHONY: browser
browser: ## Install (apt) Chromium, ChromeDriver and a CJK font for the browser test when missing
	@./scripts/ensure-browser.sh

.PHONY: python
python: ## Prepare the Python example consumer's virtualenv (pika, protobuf, generated classes) for its test
	@./scripts/ensure-python.sh

.PHONY: deploy-check
deploy-check: ## Render and validate the Kubernetes overlays, the compose file, the Dockerfile and the Helm chart
	@python3 scripts/check_deploy.py

.PHONY: demo
demo: services ## Run the whole stack with the simulator, end to end
	@./scripts/demo.sh

.PHONY: up
up: services ## Start the demo stack and leave it running; prints every address
	@./scripts/demo.sh up

.PHONY: down
down: ## Stop the stack `make up` started
	@./scripts/demo.sh down

.PHONY: bench
bench: services ## Run the benchmarks and print their figures
	@./scripts/bench.sh

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZ_SECONDS each (installs cargo-fuzz; needs nightly)
	@./scripts/fuzz.sh $(FUZZ_SECONDS)

.PHONY: proto
proto: ## Regenerate crates/proto/src/gen from /proto (checked in; a test fails when stale)
	WXHUB_BLESS=1 $(CARGO) test -p wxhub-proto --test bootstrap

.PHONY: clean
clean: ## Remove build output
	$(CARGO) clean
