# Shoal build. `make` builds everything; `make test`, `make demo`, `make bench` are the
# entry points the README gives. Every entry point first runs `make deps`, which installs
# missing Debian packages (as root or with password-less sudo).
SHELL := /bin/bash
.DEFAULT_GOAL := all

ERL        ?= erl
ERL_ROOT   := $(shell $(ERL) -noshell -eval 'io:format("~s",[code:root_dir()]),halt().' 2>/dev/null)
ERTS_INC   := $(wildcard $(ERL_ROOT)/erts-*/include)
EI_DIR     := $(shell $(ERL) -noshell -eval 'io:format("~s",[code:lib_dir(erl_interface)]),halt().' 2>/dev/null)

CC         ?= cc
WARN       := -Wall -Wextra -Werror
CSTD       := -std=c11 -D_DEFAULT_SOURCE -D_POSIX_C_SOURCE=200809L
OPT        ?= -O2 -g
CFLAGS_COMMON := $(CSTD) $(WARN) $(OPT) -Iinclude -Ic_src/core
SAN        := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
BUILD      := build

CORE_SRC   := $(wildcard c_src/core/*.c)
CORE_HDR   := $(wildcard c_src/core/*.h) $(wildcard include/*.h)
NIF_SRC    := $(wildcard c_src/nif/*.c)
NIF_SO     := priv/shoal_nif.so

export MIX_REBAR3 := $(shell command -v rebar3 2>/dev/null)
export ERL_LIBS :=

.PHONY: all deps c nif erl test c-test c-test-asan erl-test elixir-test dialyzer demo bench clean fmt

deps:
	@bash scripts/deps.sh

all: deps
	@$(MAKE) --no-print-directory c
	@$(MAKE) --no-print-directory erl

# C artefacts only (rebar3's pre-compile hook calls this one).
c: $(NIF_SO) cnode

$(NIF_SO): $(NIF_SRC) $(CORE_SRC) $(CORE_HDR) $(wildcard c_src/nif/*.h)
	@mkdir -p priv
	$(CC) $(CFLAGS_COMMON) -fPIC -fvisibility=hidden -I$(ERTS_INC) -shared \
	    -o $@ $(NIF_SRC) $(CORE_SRC) -pthread

erl: $(NIF_SO)
	rebar3 compile

# --- C unit tests (CUnit): plain build and AddressSanitizer + UBSan build -----------------
CTEST_SRC := $(wildcard test/c/test_core*.c)

$(BUILD)/test_core: $(CTEST_SRC) $(CORE_SRC) $(CORE_HDR)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) -o $@ $(CTEST_SRC) $(CORE_SRC) -lcunit -pthread

$(BUILD)/test_core_asan: $(CTEST_SRC) $(CORE_SRC) $(CORE_HDR)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) $(SAN) -o $@ $(CTEST_SRC) $(CORE_SRC) -lcunit -pthread

c-test: deps $(BUILD)/test_core
	$(BUILD)/test_core test/vectors/keyhash.txt

c-test-asan: deps $(BUILD)/test_core_asan
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	    $(BUILD)/test_core_asan test/vectors/keyhash.txt

# --- Erlang: EUnit + Common Test ------------------------------------------------------------
erl-test: all
	bash scripts/erl_test.sh

elixir-test: all
	bash scripts/elixir_test.sh

# Type analysis of the application (fails on any warning).
dialyzer: all
	rebar3 dialyzer

test: all
	@bash scripts/test_all.sh

demo: all
	bash scripts/demo.sh

bench: all
	bash scripts/bench.sh
	@$(MAKE) --no-print-directory cnode-bench

# shoal_super chains only (bench/results/super.md); `make bench` runs it too.
.PHONY: bench-super
bench-super: all
	bash scripts/bench_super.sh

fmt:
	clang-format -i c_src/*/*.[ch] include/*.h test/c/*.c

clean:
	rm -rf $(BUILD) _build priv/*.so priv/shoal_cnode priv/*.a test/elixir/_build test/elixir/deps logs

-include c_src/cnode/cnode.mk
# Until the C node lands, `cnode` and `cnode-test` are no-ops.
ifndef SHOAL_CNODE_MK
cnode:
	@true
cnode-test:
	@true
cnode-bench:
	@true
.PHONY: cnode cnode-test cnode-bench
endif
