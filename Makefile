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

# --- test programs (ordinary hosts: no agent headers) -----------------------
$(BUILD)/programs/%: tests/programs/%.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 -D_GNU_SOURCE -g -O2 -Wall -Wextra $(CFLAGS) -o $@ $< -lpthread -ldl -lm

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
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory integration

unit: $(BUILD)/unit-tests
	$(BUILD)/unit-tests

integration: all
	$(PYTEST) -q tests/integration tests/receiver

bench: deps
	@$(MAKE) --no-print-directory all $(BENCHES)
	scripts/bench.sh

demo: deps all
	scripts/demo.sh

asan:
	$(MAKE) BUILD=build-asan SAN="-fsanitize=address -fno-omit-frame-pointer" \
	    build-asan/unit-tests build-asan/aggregator
	ASAN_OPTIONS=detect_leaks=1 build-asan/unit-tests

ubsan:
	$(MAKE) BUILD=build-ubsan SAN="-fsanitize=undefined -fno-sanitize-recover=all" \
	    build-ubsan/unit-tests build-ubsan/aggregator
	build-ubsan/unit-tests

# --- the compose demo (needs a Docker engine) ---------------------------------
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

compose-up:
	$(COMPOSE) -f compose/docker-compose.yml up -d --build
	@echo "Grafana http://localhost:3000  Pyroscope http://localhost:4040  aggregator http://localhost:8080"

compose-down:
	$(COMPOSE) -f compose/docker-compose.yml down

format:
	clang-format -i agent/*.c agent/*.h target/*.c target/*.h tests/unit/*.c tests/unit/*.h tests/programs/*.c

clean:
	rm -rf build build-asan build-ubsan

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
