# hookgate: `make run` starts it with the example configuration, `make test` runs the whole suite.
# Both bring up PostgreSQL and Redis first (scripts/services.sh), installing them when missing; `make test` also
# installs headless Chromium and chromedriver for the console's browser test (scripts/chromium.sh).

CARGO ?= cargo
CONFIG ?= config/hookgate.example.toml

.PHONY: run test validate-deploy services browser console-screenshots build release fmt lint bench bench-ingest bench-delivery bench-verify fuzz chaos chaos-quick

services:
	@scripts/services.sh

browser:
	@scripts/chromium.sh

# Refreshes the console's screenshots in docs/console/ (the browser test, writing there instead of a temp folder).
console-screenshots: services browser
	HOOKGATE_UPDATE_SCREENSHOTS=1 $(CARGO) test -p hookgate --test api -- console_browser::

run: services
	@scripts/createdb.sh hookgate
	$(CARGO) run --release -- --config $(CONFIG) serve

test: services browser
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs)"; exit 1; }
	$(CARGO) test --workspace --all-targets
	scripts/schemathesis.sh
	scripts/validate-manifests.sh
	@for f in $$(find config deploy -name '*.toml'); do $(CARGO) run -q -p hookgate -- check-config $$f || exit 1; done
	$(MAKE) chaos-quick

# Kubernetes manifests against the schemas, compose and Dockerfile checks (offline after the first run).
validate-deploy:
	scripts/validate-manifests.sh

build:
	$(CARGO) build --workspace --all-targets

release:
	$(CARGO) build --release

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Ingest throughput and latency with wrk, beside raw PostgreSQL COPY of the same rows (see docs/benchmarks.md).
bench-ingest: services release
	@scripts/bench-ingest.sh

# Delivery throughput and ingest-to-delivered latency beside the sink's own capacity (see docs/benchmarks.md).
bench-delivery: services
	$(CARGO) build --release -p hookgate -p hookgate-bench
	@scripts/bench-delivery.sh

# Verification cost per scheme (criterion; figures in the README's "Verification cost").
bench-verify:
	$(CARGO) bench -p hookgate-core --bench verify

# A bounded cargo-fuzz run of every target (needs a nightly toolchain and `cargo install cargo-fuzz`).
FUZZ_SECONDS ?= 60
fuzz:
	cd fuzz && for t in $$($(CARGO) +nightly fuzz list); do \
		$(CARGO) +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=16384 || exit 1; done

# The standard set with hookgate-bench (closed loop 16/64/256, open loop, delivery, overload, raw PostgreSQL
# baseline): starts a release hookgate on a fresh database and the built-in receiver; about 2 minutes.
# Tune through the environment, e.g. `HOOKGATE_WRITER__BATCH_MAX=128 make bench`. See docs/benchmarks.md.
BENCH_TARGET ?= $(or $(CARGO_TARGET_DIR),target)
BENCH_OUT ?= $(BENCH_TARGET)/hookgate-bench.json
bench: services
	$(CARGO) build --release -p hookgate -p hookgate-bench
	$(BENCH_TARGET)/release/hookgate-bench standard --hookgate-bin $(BENCH_TARGET)/release/hookgate --out $(BENCH_OUT)

# The chaos suite (see the README's "Chaos suite"): kill -9 cycles, PostgreSQL and Redis outages, bad destinations,
# an orphan delivery and a slow jq route, each under load, against a release hookgate with its own PostgreSQL
# cluster (initdb on a spare port) and its own redis-server; the machine's PostgreSQL and Redis are not used.
# Prints one table and `N passed, N failed`; exits non-zero if any scenario failed. Full run: about 3.5 minutes.
CHAOS_TARGET ?= $(or $(CARGO_TARGET_DIR),target)
chaos:
	$(CARGO) build --release -p hookgate -p hookgate-bench
	$(CHAOS_TARGET)/release/hookgate-bench chaos --hookgate-bin $(CHAOS_TARGET)/release/hookgate $(CHAOS_ARGS)

# The reduced run (5 kill cycles, shorter loads; scenario 4's latency reported, not asserted): about 2 minutes.
chaos-quick:
	$(CARGO) build --release -p hookgate -p hookgate-bench
	$(CHAOS_TARGET)/release/hookgate-bench chaos --quick --hookgate-bin $(CHAOS_TARGET)/release/hookgate $(CHAOS_ARGS)
