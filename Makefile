# The two commands a newcomer needs: `make run` and `make test`. Both set up first.
# One cargo profile (release) serves run, test and bench, so polars and tch build once.
# The workspace builds two binaries: `pipe` (no libtorch) and its worker `pipe-torch`.

export LIBTORCH_USE_PYTORCH := 1
# tch 0.24 pins an older libtorch; 2.11's C++ API is what it needs (see README, troubleshooting).
export LIBTORCH_BYPASS_VERSION_CHECK := 1
export PATH := $(CURDIR)/.venv/bin:$(PATH)
CARGO := cargo
# Where cargo builds: $CARGO_TARGET_DIR when the user sets one, else ./target.
PIPE := $(or $(CARGO_TARGET_DIR),target)/release/pipe

.PHONY: setup build run test bench clean-store

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --release --locked

run: build
	$(PIPE) run

# The binaries first: the end-to-end tests run `pipe`, which starts `pipe-torch` beside it.
# Tests run side by side, and each torch worker uses every core: OpenMP's idle threads then
# spin on cores the other test needs (tests/pipeline.rs on 2 cores: 521 s, against 154 s
# with passive waiting and 184 s one test at a time). A lone run spins faster (25 s against
# 32 s passive), so only the tests wait passively.
test: setup
	$(CARGO) build --release --locked
	OMP_WAIT_POLICY=PASSIVE $(CARGO) test --release --locked

bench: build
	scripts/bench.sh
