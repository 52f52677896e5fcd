# Bulwark: `make demo` runs the main job, `make test` runs every check. Both install what
# they need (scripts/deps.sh) and say what they skip.
CARGO ?= cargo

.PHONY: all build fmt lint deps test demo clean

all: build

build:
	$(CARGO) build --workspace --bins

fmt:
	$(CARGO) fmt --all

# fmt check + clippy with warnings as errors, on every target (tests included).
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

deps:
	@scripts/deps.sh

# The e2e tests start the real binaries, so they are built first.
test: deps lint build
	@scripts/run-tests.sh

demo: deps build
	$(CARGO) run --quiet -p bulwark-e2e --bin bulwark-demo

clean:
	$(CARGO) clean
