# Bulwark: `make demo` runs the main job, `make test` runs every check. Both install what
# they need (scripts/deps.sh) and say what they skip.
CARGO ?= cargo

.PHONY: all build fmt lint deps test demo bench bench-smoke fuzz clean

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

# The e2e tests start the real binaries, so they are built first. The bench harness's smoke
# mode runs after the tests: it checks that the harness works, not how fast anything is.
test: deps lint build
	@scripts/run-tests.sh
	@$(MAKE) --no-print-directory bench-smoke

# Bulwark, Envoy and a direct path side by side (release build; installs its tools when
# missing). Writes bench/results/. Not a test: nothing here fails on a slow figure.
bench:
	@scripts/bench.sh

bench-smoke: build
	@echo "bench-smoke: the harness end to end in a few seconds (debug build, no Envoy)"
	@target/debug/bulwark-bench --smoke > /dev/null
	@echo "bench-smoke: ok"

# Long mode of the policy checks: property tests with 100,000 cases, then coverage-guided
# fuzzing of the policy reader and the bootstrap file (FUZZ_SECONDS each, default 300).
fuzz:
	@scripts/fuzz.sh

demo: deps build
	$(CARGO) run --quiet -p bulwark-e2e --bin bulwark-demo

clean:
	$(CARGO) clean
