# pyroagent: the agent (build/libpyroagent.so), the aggregator (build/aggregator),
# their tests and benchmarks. Plain GNU make; user CFLAGS/LDFLAGS respected.

CC       ?= cc
CXX      ?= c++
BUILD    := build
GEN      := $(BUILD)/gen
PYTEST   := /usr/bin/python3 -m pytest

# Project flags are kept apart from the user's CFLAGS/LDFLAGS.
WARN     := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
            -Wformat=2 -Wvla -Werror
PA_CFLAGS := -std=gnu11 -D_GNU_SOURCE -g -O2 -fPIC -fvisibility=hidden \
            -fno-omit-frame-pointer -ftls-model=initial-exec $(WARN) \
            -MMD -MP -I$(GEN) -Iagent
SAN      ?=
CFLAGS   ?=
# Compile jobs for the builds the test and sanitizer targets start.
JOBS     ?= $(shell nproc 2>/dev/null || echo 2)
LDFLAGS  ?=

AGENT_LIBS := -lunwind-x86_64 -lunwind -lprotobuf-c -lcurl -lzstd -lz -lpthread -ldl -lrt -lm

PROTOS      := $(wildcard agent/*.proto)
GEN_SRCS    := $(PROTOS:agent/%.proto=$(GEN)/%.pb-c.c)
GEN_OBJS    := $(GEN_SRCS:$(GEN)/%.c=$(BUILD)/agent/%.o)
AGENT_SRCS  := $(wildcard agent/*.c)
AGENT_OBJS  := $(AGENT_SRCS:agent/%.c=$(BUILD)/agent/%.o) $(GEN_OBJS)
# The core is every module a unit test may call: all but the libc front
# (preload.c) and the load-time lifecycle (agent.c).
CORE_OBJS   := $(filter-out $(BUILD)/agent/preload.o $(BUILD)/agent/agent.o,$(AGENT_OBJS))

TARGET_SRCS := $(wildcard target/*.c)
TARGET_OBJS := $(TARGET_SRCS:target/%.c=$(BUILD)/target/%.o)

UNIT_SRCS   := $(wildcard tests/unit/*.c)
UNIT_OBJS   := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/unit/%.o)

PROG_C      := $(wildcard tests/programs/*.c)
PROG_CXX    := $(wildcard tests/programs/*.cc)
PROGRAMS    := $(PROG_C:tests/programs/%.c=$(BUILD)/programs/%) \
               $(PROG_CXX:tests/programs/%.cc=$(BUILD)/programs/%)
BENCH_C     := $(filter-out tests/bench/passthrough.c,$(wildcard tests/bench/*.c))
BENCHES     := $(BENCH_C:tests/bench/%.c=$(BUILD)/bench/%) $(BUILD)/bench/passthrough.so

.PHONY: all deps test unit integration bench demo asan ubsan clean format \
        fuzz fuzz-replay tsan check-sanitizers asan-integration \
        compose-up compose-down
.SECONDARY: $(GEN_SRCS)

all: $(BUILD)/libpyroagent.so $(BUILD)/aggregator $(BUILD)/unit-tests $(PROGRAMS)

deps:
	@scripts/setup-deps.sh

# --- generated protobuf-c code -------------------------------------------
$(GEN)/%.pb-c.c $(GEN)/%.pb-c.h: agent/%.proto
	@mkdir -p $(GEN)
	protoc-c --proto_path=agent --c_out=$(GEN) $<

$(BUILD)/agent/%.pb-c.o: $(GEN)/%.pb-c.c
	@mkdir -p $(@D)
	$(CC) $(PA_CFLAGS) -Wno-missing-prototypes $(SAN) $(CFLAGS) -c $< -o $@

# --- the agent -------------------------------------------------------------
$(BUILD)/agent/%.o: agent/%.c | $(GEN_SRCS)
	@mkdir -p $(@D)
	$(CC) $(PA_CFLAGS) $(SAN) $(CFLAGS) -c $< -o $@

$(BUILD)/libpyroagent.so: $(AGENT_OBJS) agent/agent.map
	$(CC) -shared -g -Wl,--version-script=agent/agent.map -Wl,-z,nodelete \
	    -Wl,-z,now -Wl,--disable-new-dtags -Wl,-rpath,'$$ORIGIN/lib' \
	    $(SAN) $(LDFLAGS) -o $@ $(AGENT_OBJS) $(AGENT_LIBS)

$(BUILD)/libpyroagent-core.a: $(CORE_OBJS)
	@rm -f $@
	ar rcs $@ $^

# --- the aggregator (never links or includes the agent) -------------------
$(BUILD)/target/%.o: target/%.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -D_GNU_SOURCE -g -O2 $(WARN) -MMD -MP $(SAN) $(CFLAGS) -c $< -o $@

$(BUILD)/aggregator: $(TARGET_OBJS)
	$(CC) -g $(SAN) $(LDFLAGS) -o $@ $^ -lmicrohttpd -lpthread -lm

# --- unit tests --------------------------------------------------------------
$(BUILD)/unit/%.o: tests/unit/%.c | $(GEN_SRCS)
	@mkdir -p $(@D)
	$(CC) $(PA_CFLAGS) -Wno-missing-prototypes -Itests/unit $(SAN) $(CFLAGS) -c $< -o $@

$(BUILD)/unit-tests: $(UNIT_OBJS) $(BUILD)/libpyroagent-core.a
	$(CC) -g $(SAN) $(LDFLAGS) -o $@ $(UNIT_OBJS) $(BUILD)/libpyroagent-core.a $(AGENT_LIBS)

# --- fuzz targets (tests/fuzz/fuzz_<name>.c, seeds in tests/fuzz/corpus/<name>/)
# make test replays every corpus through gcc-built drivers (tests/fuzz/
# replay.c); make fuzz runs the real libFuzzer binaries (clang).
FUZZ_NAMES   := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_REPLAYS := $(FUZZ_NAMES:%=$(BUILD)/fuzz/replay-%)
.PRECIOUS: $(BUILD)/fuzz/%.o

$(BUILD)/fuzz/%.o: tests/fuzz/%.c | $(GEN_SRCS)
	@mkdir -p $(@D)
	$(CC) $(PA_CFLAGS) -Itests/fuzz $(SAN) $(CFLAGS) -c $< -o $@

$(BUILD)/fuzz/replay-%: $(BUILD)/fuzz/fuzz_%.o $(BUILD)/fuzz/replay.o $(BUILD)/libpyroagent-core.a
	$(CC) -g $(SAN) $(LDFLAGS) -o $@ $^ $(AGENT_LIBS)

$(BUILD)/fuzz/fuzz-%: $(BUILD)/fuzz/fuzz_%.o $(BUILD)/libpyroagent-core.a
	$(CC) -g $(SAN) -fsanitize=fuzzer $(LDFLAGS) -o $@ $^ $(AGENT_LIBS)

# --- test programs (ordinary hosts: no agent headers) -----------------------
$(BUILD)/programs/%: tests/programs/%.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -D_GNU_SOURCE -g -O2 -Wall -Wextra $(CFLAGS) -o $@ $< -lpthread -ldl -lm

# *_nopie: a non-PIE executable (canonical PLT entries, as Debian's python3).
$(BUILD)/programs/%_nopie: tests/programs/%_nopie.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -D_GNU_SOURCE -g -O2 -Wall -Wextra -fno-pie -no-pie $(CFLAGS) -o $@ $< -lpthread -ldl -lm

$(BUILD)/programs/%: tests/programs/%.cc
	@mkdir -p $(@D)
	$(CXX) -g -O2 -Wall -Wextra $(CXXFLAGS) -o $@ $< -lpthread

# --- benchmark programs --------------------------------------------------------
$(BUILD)/bench/%: tests/bench/%.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -D_GNU_SOURCE -g -O2 -Wall -Wextra $(CFLAGS) -o $@ $< -lpthread

$(BUILD)/bench/passthrough.so: tests/bench/passthrough.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -D_GNU_SOURCE -g -O2 -fPIC -shared $(CFLAGS) -o $@ $< -ldl

# --- tests -------------------------------------------------------------------
test: deps
	@$(MAKE) --no-print-directory -j$(JOBS) all
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory fuzz-replay
	@$(MAKE) --no-print-directory integration
	@set -e; for t in $(TEST_SANITIZERS); do \
	    $(MAKE) --no-print-directory $$t; done

unit: $(BUILD)/unit-tests
	$(BUILD)/unit-tests

integration: all
	$(PYTEST) -q tests/integration tests/receiver

bench: deps
	@$(MAKE) --no-print-directory all $(BENCHES)
	scripts/bench.sh

# Sizes of the replay: make demo METERS=20000000 CAP=256m
METERS ?=
SMALL  ?=
CAP    ?=
demo: deps
	@$(MAKE) --no-print-directory all
	METERS="$(METERS)" SMALL="$(SMALL)" CAP="$(CAP)" scripts/demo.sh

# Sanitizer builds (their own directories; helpers may point them elsewhere).
ASAN_BUILD  ?= build-asan
UBSAN_BUILD ?= build-ubsan
TSAN_BUILD  ?= build-tsan
asan:
	$(MAKE) -j$(JOBS) BUILD=$(ASAN_BUILD) SAN="-fsanitize=address -fno-omit-frame-pointer" \
	    $(ASAN_BUILD)/unit-tests $(ASAN_BUILD)/aggregator $(FUZZ_NAMES:%=$(ASAN_BUILD)/fuzz/replay-%)
	ASAN_OPTIONS=detect_leaks=1 $(ASAN_BUILD)/unit-tests
	ASAN_OPTIONS=detect_leaks=1 $(MAKE) --no-print-directory BUILD=$(ASAN_BUILD) \
	    SAN="-fsanitize=address -fno-omit-frame-pointer" fuzz-replay

ubsan:
	$(MAKE) -j$(JOBS) BUILD=$(UBSAN_BUILD) SAN="-fsanitize=undefined -fno-sanitize-recover=all" \
	    $(UBSAN_BUILD)/unit-tests $(UBSAN_BUILD)/aggregator $(FUZZ_NAMES:%=$(UBSAN_BUILD)/fuzz/replay-%)
	$(UBSAN_BUILD)/unit-tests
	UBSAN_OPTIONS=print_stacktrace=1 $(MAKE) --no-print-directory BUILD=$(UBSAN_BUILD) \
	    SAN="-fsanitize=undefined -fno-sanitize-recover=all" fuzz-replay

# The aggregator's integration tests against its ASan build.
asan-integration:
	$(MAKE) BUILD=$(ASAN_BUILD) SAN="-fsanitize=address -fno-omit-frame-pointer" \
	    $(ASAN_BUILD)/aggregator
	ASAN_OPTIONS=detect_leaks=1 AGGREGATOR_BIN=$(ASAN_BUILD)/aggregator \
	    $(PYTEST) -q tests/integration/test_aggregator.py

# ThreadSanitizer over the unit tests of every module that needs no
# preload. Skipped: the unwinder's signal-handler captures (TSan defers
# signals), a test that lowers RLIMIT_AS (TSan's shadow cannot map), and
# one that ends a thread which used libunwind (its TLS destructor runs
# after TSan has let go of the thread). die_after_fork=0: the agent starts
# threads in forked children, which TSan otherwise refuses.
TSAN_SKIP  ?= unwind_% oom_override_and_rlimits symbols_libc_debug_file
TEST_NAME_SED := 's/^TEST\(_TIMEOUT\)\{0,1\}(\([a-z0-9_]*\).*/\2/p'
TSAN_TESTS ?= $(filter-out $(TSAN_SKIP),\
              $(shell sed -n $(TEST_NAME_SED) tests/unit/*.c))
tsan:
	$(MAKE) -j$(JOBS) BUILD=$(TSAN_BUILD) SAN="-fsanitize=thread" $(TSAN_BUILD)/unit-tests
	TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 die_after_fork=0" \
	    $(TSAN_BUILD)/unit-tests $(TSAN_TESTS)

# make test runs all four (under 10 minutes on two cores with the builds
# in parallel); make check-sanitizers runs them alone.
TEST_SANITIZERS ?= asan ubsan asan-integration tsan
check-sanitizers:
	@$(MAKE) --no-print-directory asan
	@$(MAKE) --no-print-directory ubsan
	@$(MAKE) --no-print-directory asan-integration
	@$(MAKE) --no-print-directory tsan

# Every corpus through its replay driver: fast, any compiler, in make test.
fuzz-replay: $(FUZZ_REPLAYS)
	@set -e; for t in $(FUZZ_NAMES); do \
	    $(BUILD)/fuzz/replay-$$t tests/fuzz/corpus/$$t; done

# libFuzzer with ASan+UBSan (clang): each target for FUZZ_SECONDS, new
# inputs kept in build-fuzz/corpus/<name>, crashes in build-fuzz/crashes/.
# A crash found: copy it into tests/fuzz/corpus/<name>/ with the fix.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= $(FUZZ_NAMES)
FUZZ_SAN     := -fsanitize=fuzzer-no-link,address,undefined \
                -fno-sanitize-recover=undefined -fno-omit-frame-pointer
fuzz:
	@command -v clang >/dev/null 2>&1 || { \
	    echo "make fuzz needs clang (libFuzzer): apt-get install clang"; \
	    exit 1; }
	@$(MAKE) --no-print-directory BUILD=build-fuzz CC=clang \
	    SAN="$(FUZZ_SAN)" CFLAGS="$(CFLAGS) -Wno-missing-field-initializers" \
	    $(FUZZ_TARGETS:%=build-fuzz/fuzz/fuzz-%)
	@set -e; for t in $(FUZZ_TARGETS); do \
	    mkdir -p build-fuzz/corpus/$$t build-fuzz/crashes; \
	    echo "fuzz $$t for $(FUZZ_SECONDS) s"; \
	    build-fuzz/fuzz/fuzz-$$t -max_total_time=$(FUZZ_SECONDS) \
	        -print_final_stats=1 -artifact_prefix=build-fuzz/crashes/$$t- \
	        build-fuzz/corpus/$$t tests/fuzz/corpus/$$t \
	        2> build-fuzz/$$t.log || { tail -40 build-fuzz/$$t.log; \
	        echo "fuzz $$t failed: see build-fuzz/$$t.log"; exit 1; }; \
	    grep -E '^stat::(number_of_executed_units|new_units_added)' build-fuzz/$$t.log; \
	done

# --- the compose demo (needs a Docker engine) ---------------------------------
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

compose-up:
	$(COMPOSE) -f compose/docker-compose.yml up -d --build
	@echo "Grafana http://localhost:3000  Pyroscope http://localhost:4040  aggregator http://localhost:8080"

compose-down:
	$(COMPOSE) -f compose/docker-compose.yml down

format:
	clang-format -i agent/*.c agent/*.h target/*.c target/*.h tests/unit/*.c tests/unit/*.h tests/programs/*.c \
	    tests/fuzz/*.c tests/fuzz/*.h

clean:
	rm -rf build build-asan build-ubsan build-tsan build-fuzz

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
