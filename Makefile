# Two commands for users (see README): `make run` and `make test`.
# Everything a target needs is installed by the target itself, idempotently: a warm run only
# checks versions and stamp files, then goes straight to the build.

SHELL := /bin/bash
.SHELLFLAGS := -e -o pipefail -c

# `cargo install` puts binaries here; cargo-leptos runs the `wasm-bindgen` it finds on PATH.
CARGO_HOME ?= $(HOME)/.cargo
export PATH := $(CARGO_HOME)/bin:$(PATH)

# Versions that work together (see the toolchain notes): wasm-bindgen CLI == the crate, exactly.
CARGO_LEPTOS_VERSION := 0.3.11
WASM_BINDGEN_VERSION := 0.2.130

# Root privileges for apt-get (CI runs as root; elsewhere use sudo).
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

NODE_SMOKE := embedded-db/tests/node
# pymongo for embedded-db's Python driver smoke test (embedded-db/tests/drivers.rs).
PYMONGO_VERSION := 4.20.1
E2E := end2end

# `cargo leptos build` (debug) compiles with RUSTFLAGS="--cfg erase_components" and
# LEPTOS_OUTPUT_NAME=<name> (read by leptos at compile time). `cargo test` gets the same two, so
# the dependency graph the server shares with the tests is compiled once, not twice.
CARGO_TEST_ENV := RUSTFLAGS="--cfg erase_components" LEPTOS_OUTPUT_NAME=realtime

.PHONY: run test test-rust test-e2e build-site tools wasm-target cargo-leptos wasm-bindgen \
	npm-deps e2e-deps chromium lint db bench bench-app bench-edge bench-page screenshot node-deps py-deps fuzz \
	fuzz-http

## Install the tools, build, serve http://127.0.0.1:3000 on the embedded database (./data/db).
run: tools npm-deps
	cargo leptos serve

## Every test: the Rust suites, then the Playwright suite against a debug build of the site.
test: tools npm-deps e2e-deps chromium node-deps py-deps
	$(MAKE) test-rust
	$(MAKE) build-site
	$(MAKE) test-e2e

## Unit and integration tests of every crate (the driver smoke tests need node-deps, py-deps).
## `frontend` (the WASM entry point, no tests) is left out: in the same cargo invocation it would
## unify `app/hydrate` and `leptos/hydrate` into the server's build, and the server would then run
## browser-only effects while rendering (panic: `spawn_local` outside a LocalSet).
test-rust: node-deps py-deps
	$(CARGO_TEST_ENV) cargo test --workspace --exclude frontend --locked

## Debug build of the site: target/debug/server and target/site (WASM, JS, CSS, favicon).
build-site: tools npm-deps
	cargo leptos build --cargo-locked

## The Playwright suite; it starts target/debug/server itself, on free ports and a temp dir.
test-e2e: e2e-deps chromium
	cd $(E2E) && npx playwright test

## Formatting and lints, as CI checks them: host crates, then the browser crates for wasm32.
lint: wasm-target
	cargo fmt --all --check
	cargo clippy --workspace --exclude frontend --all-targets --locked -- -D warnings
	cargo clippy -p frontend -p app --target wasm32-unknown-unknown --locked -- -D warnings

## Run the embedded database on its own (EMBEDDED_DB_ADDR, EMBEDDED_DB_PATH).
db:
	cargo run --release --locked -p embedded-db

## Print the live feed's load figures (release build): RSS per idle stream at 15,000 streams,
## memory given back, 10 connect/leave cycles of 8,000, then 1,000 clients refetching per event.
bench-app:
	cargo bench --locked -p server --bench load

## Print the edge figures (release build, default settings): 20,000 idle or half-sent
## connections from 8 addresses, 10,000 streams from one address beside a browser, a reader
## that stopped, SIGTERM under 1,000 streams.
bench-edge:
	LOAD_SUITE=edge cargo bench --locked -p server --bench load

## Print the page's figures (release build, assets precompressed with brotli and gzip): the
## bytes of WASM + JS + CSS on the wire per encoding, and the time from a submit in one browser
## to the change showing in another, over 50 edits.
bench-page: tools npm-deps e2e-deps chromium
	cargo leptos build --release --precompress --cargo-locked
	cd $(E2E) && SERVER_BIN=target/release/server npx playwright test --config bench.config.ts

## Refresh docs/screenshot.png (the picture in README) from the debug build.
screenshot: build-site e2e-deps chromium
	cd $(E2E) && SCREENSHOT=../docs/screenshot.png npx playwright test tests/screenshot.spec.ts

## Print the embedded database's throughput and latency figures (release build).
bench:
	cargo bench --locked -p embedded-db --bench throughput

# Fuzzing bounds: whichever comes first (FUZZ_SECONDS=0 with FUZZ_INPUTS for a count only);
# FUZZ_SEED replays a run's inputs (default: a seed from the clock, printed).
FUZZ_SECONDS ?= 120
FUZZ_INPUTS ?=
FUZZ_SEED ?=

## Fuzz the release embedded-db binary over TCP for FUZZ_SECONDS (120) or FUZZ_INPUTS inputs;
## findings go to embedded-db/fuzz/findings/ and make the target fail. Not part of `make test`.
fuzz:
	cargo build --release --locked -p embedded-db
	cargo run --release --locked -p embedded-db-fuzz -- --seconds $(FUZZ_SECONDS) \
		$(if $(FUZZ_INPUTS),--inputs $(FUZZ_INPUTS)) $(if $(FUZZ_SEED),--seed $(FUZZ_SEED))

# The HTTP fuzzer's trickle mode (heads and bodies sent too slowly or left unfinished, which
# the server must cut within its deadlines): on, or off for a server without those deadlines.
FUZZ_TRICKLE ?= on

## Fuzz the release server binary over HTTP for FUZZ_SECONDS (120) or FUZZ_INPUTS requests
## (FUZZ_SEED, FUZZ_TRICKLE=on|off): fails on any 5xx, a hang past the deadlines or a dead
## process; findings go to server/fuzz/findings/. Not part of `make test`.
fuzz-http:
	cargo build --release --locked -p server
	cargo run --release --locked -p server-fuzz -- --seconds $(FUZZ_SECONDS) \
		$(if $(FUZZ_INPUTS),--requests $(FUZZ_INPUTS)) $(if $(FUZZ_SEED),--seed $(FUZZ_SEED)) \
		$(if $(filter off,$(FUZZ_TRICKLE)),--no-trickle)

# ---- tools ---------------------------------------------------------------------------------

tools: wasm-target cargo-leptos wasm-bindgen

wasm-target:
	@case " $$(rustup target list --installed | tr '\n' ' ')" in \
		*" wasm32-unknown-unknown "*) ;; \
		*) rustup target add wasm32-unknown-unknown ;; \
	esac

# Plain --locked stops on rustc 1.95 (a locked crate declares rust-version 1.96, which
# --ignore-rust-version lets through); without --locked a newer dependency needs rustc 1.97.
# The thin release profile (no LTO, 16 codegen units) takes ~9-20 min instead of ~27.
cargo-leptos:
	@case "$$(cargo leptos --version 2>/dev/null || true)" in \
		*" $(CARGO_LEPTOS_VERSION)") ;; \
		*) echo "installing cargo-leptos $(CARGO_LEPTOS_VERSION) (about 20 minutes)"; \
		   CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
		   cargo install cargo-leptos --version $(CARGO_LEPTOS_VERSION) --locked --ignore-rust-version ;; \
	esac

# Without --locked: its lock file names a crate version the registry lacks.
wasm-bindgen:
	@case "$$(wasm-bindgen --version 2>/dev/null || true)" in \
		*" $(WASM_BINDGEN_VERSION)") ;; \
		*) echo "installing wasm-bindgen-cli $(WASM_BINDGEN_VERSION) (about 4 minutes)"; \
		   cargo install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION) ;; \
	esac

# Debian's chromium for Playwright (never `npx playwright install`: no browser downloads here).
chromium: /usr/bin/chromium

/usr/bin/chromium:
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y chromium

# ---- npm packages (stamps: npm ci rewrites node_modules/.package-lock.json) ------------------

## tailwindcss 3 and binaryen (wasm-opt); cargo-leptos puts node_modules/.bin first on PATH.
npm-deps: node_modules/.package-lock.json

node_modules/.package-lock.json: package-lock.json package.json
	npm ci --no-audit --no-fund

## @playwright/test and the Node mongodb driver for the end-to-end suite.
e2e-deps: $(E2E)/node_modules/.package-lock.json

$(E2E)/node_modules/.package-lock.json: $(E2E)/package-lock.json $(E2E)/package.json
	npm ci --prefix $(E2E) --no-audit --no-fund

## The Node mongodb driver for embedded-db's smoke test.
node-deps: $(NODE_SMOKE)/node_modules/.package-lock.json

$(NODE_SMOKE)/node_modules/.package-lock.json: $(NODE_SMOKE)/package-lock.json
	npm ci --prefix $(NODE_SMOKE) --no-audit --no-fund

## pymongo for embedded-db's Python driver smoke test (kept when a pymongo 4 is already there).
py-deps:
	@python3 -c 'import sys, pymongo; sys.exit(pymongo.version_tuple[0] != 4)' 2>/dev/null \
		|| python3 -m pip install --no-input 'pymongo==$(PYMONGO_VERSION)'
