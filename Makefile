# Two commands for users (see README): `make run` and `make test`.
# Everything a target needs is installed by the target itself, idempotently.

SHELL := /bin/bash
NODE_SMOKE := embedded-db/tests/node

.PHONY: test lint db bench node-deps

## Run every test: unit, integration (official drivers against embedded-db), Node driver smoke test.
test: node-deps
	cargo test --workspace --locked

## Formatting and lints, as CI checks them.
lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

## Run the embedded database on its own (EMBEDDED_DB_ADDR, EMBEDDED_DB_PATH).
db:
	cargo run --release --locked -p embedded-db

## Print the embedded database's throughput and latency figures (release build).
bench:
	cargo bench --locked -p embedded-db --bench throughput

node-deps: $(NODE_SMOKE)/node_modules/.package-lock.json

$(NODE_SMOKE)/node_modules/.package-lock.json: $(NODE_SMOKE)/package-lock.json
	npm ci --prefix $(NODE_SMOKE) --no-audit --no-fund
