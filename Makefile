# pg_jobs: `make demo` shows it working, `make test` runs every test.
PG_MAJOR ?= 15
PG_CONFIG ?= /usr/lib/postgresql/$(PG_MAJOR)/bin/pg_config
PGRX_TEST_DATA ?= /tmp/pg_jobs-pgrx-test
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup build install released server demo demo-stop test unit-test pg-test e2e-test server-test lint

setup:
	@scripts/setup.sh

install: setup
	$(SUDO) env "PATH=$$PATH" cargo pgrx install --release --pg-config $(PG_CONFIG)

# The package of the released 0.1.0, for the upgrade test (built once, into
# target/released/; after `install`, whose compiled dependencies it reuses).
released: setup
	scripts/released.sh 0.1.0 >/dev/null

# The dashboard server, `pg-jobs serve` (target/release/pg-jobs).
server: setup
	cargo build --release -p pg_jobs_server

demo: install server
	@scripts/demo.sh

demo-stop:
	@scripts/demo.sh stop

# Pure logic, then the SQL API in one backend, then end-to-end scenarios on
# real clusters, then the dashboard's handlers and its pages in Chromium.
test: setup unit-test pg-test e2e-test server-test

unit-test:
	cargo test --lib

pg-test:
	$(SUDO) install -d -o postgres $(PGRX_TEST_DATA)
	cargo pgrx test pg$(PG_MAJOR) --runas postgres --pgdata $(PGRX_TEST_DATA)/data

# `cargo pgrx test` installs its own test build; install the real one first.
e2e-test: install released
	cargo test -p pg_jobs_e2e

server-test: install
	cargo test -p pg_jobs_server

lint: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --features pg_test --all-targets -- -D warnings
