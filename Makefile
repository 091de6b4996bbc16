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
# -Werror in our own builds (make, make test, CI). The rebar3 and Mix hooks that build Shoal
# as someone's dependency run `make nif WERROR=`: a newer compiler's new warning must not
# break a user's build.
WERROR     ?= -Werror
WARN       := -Wall -Wextra $(WERROR)
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

.PHONY: all deps c nif erl doc-chunks rebar3-doc-chunks install uninstall install-test test c-test \
        c-test-asan erl-test elixir-test dialyzer demo bench bench-nif nif-asan clean fmt chaos \
        bench-tools bench-call model model-full model-mutants

deps:
	@bash scripts/deps.sh

all: deps
	@$(MAKE) --no-print-directory c
	@$(MAKE) --no-print-directory erl

# C artefacts only.
c: $(NIF_SO) cnode

# The NIF alone: what the rebar3 and Mix compile hooks build (no libuv, no C node needed).
nif: $(NIF_SO)
	@:

$(NIF_SO): $(NIF_SRC) $(CORE_SRC) $(CORE_HDR) $(wildcard c_src/nif/*.h)
	@mkdir -p priv
	$(CC) $(CFLAGS_COMMON) -fPIC -fvisibility=hidden -I$(ERTS_INC) -shared \
	    -o $@ $(NIF_SRC) $(CORE_SRC) -pthread

erl: $(NIF_SO)
	rebar3 compile

# EEP-48 doc chunks from the edoc, into $(DOC_DIR)/chunks beside the built application's
# ebin, where `h :shoal.call` (IEx) and `h(shoal, call)` (erl) look. The Mix compiler passes
# its app path; rebar3's post-compile hook runs rebar3-doc-chunks, which picks the app's
# output dir ($$REBAR_DEPS_DIR/shoal, or $$REBAR_CHECKOUTS_OUT_DIR/shoal when the user's project
# has _checkouts/shoal: rebar3 then builds that one, wherever the link points).
DOC_DIR ?= _build/default/lib/shoal/doc
doc-chunks: $(DOC_DIR)/chunks/.stamp

$(DOC_DIR)/chunks/.stamp: $(wildcard erl/*.erl erl/*.hrl) scripts/doc_chunks.escript
	@escript scripts/doc_chunks.escript "$(DOC_DIR)"
	@mkdir -p "$(DOC_DIR)/chunks" && touch "$@"

REBAR_OUT = $(if $(wildcard $(REBAR_CHECKOUTS_DIR)/shoal),$(REBAR_CHECKOUTS_OUT_DIR),$(REBAR_DEPS_DIR))/shoal
rebar3-doc-chunks:
	@$(MAKE) --no-print-directory doc-chunks DOC_DIR="$(REBAR_OUT)/doc"

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

# The NIF built with ASan + UBSan and its EUnit suites run against it.
nif-asan: all
	bash scripts/nif_asan.sh

# --- The Promela model of the member protocol (test/model, docs/protocol.md "The model") ----
# `model' (a stage of `make test'): the quick configurations, each an exhaustive search;
# `model-full': the larger ones; `model-mutants': each fix turned off must fail the check.
model: deps
	bash scripts/model_check.sh quick

model-full: deps
	bash scripts/model_check.sh full

model-mutants: deps
	bash scripts/model_check.sh mutants

# --- Erlang: EUnit + Common Test ------------------------------------------------------------
erl-test: all
	bash scripts/erl_test.sh

# The chaos suite for longer (default 10 minutes), with a seed to replay a run:
#   make chaos SHOAL_CHAOS_SECONDS=1800 SHOAL_CHAOS_SEED=123456
chaos: all
	SHOAL_CHAOS_SECONDS=$${SHOAL_CHAOS_SECONDS:-600} bash scripts/ct_suite.sh shoal_chaos_SUITE

elixir-test: all
	bash scripts/elixir_test.sh

# Shoal as a dependency of real throw-away rebar3 and Mix projects, and the C install.
install-test: all
	bash scripts/install_test.sh

# Type analysis of the application (fails on any warning).
dialyzer: all
	rebar3 dialyzer

test: all
	@bash scripts/test_all.sh

demo: all
	bash scripts/demo.sh

# Single node, cluster, C node, then the plots (scripts/bench.sh runs cnode-bench itself, so a
# reduced run sends all of them to the scratch folder).
bench: all
	bash scripts/bench.sh

# The NIF table alone: whereis of remote against local keys, ETS beside them, bytes per
# replica (bench/results/nif.md). SHOAL_NIF_BENCH_N="100000,1000000" and friends scale it.
bench-nif: all
	@mkdir -p build/bench
	erlc -o build/bench +debug_info bench/shoal_nif_bench.erl
	erl -noshell -pa _build/default/lib/shoal/ebin -pa build/bench \
	    -eval "try shoal_nif_bench:main() of ok -> halt(0) \
	           catch C:R:S -> io:format(standard_error, \"nif bench crashed: ~p:~p~n~p~n\", [C, R, S]), halt(1) end."

# The member protocol on three local nodes (bench/results/member.md): synchronous spawns
# against pg (12 and 48 callers), a remote-home spawn against a call round trip, remote
# against local whereis.
# SHOAL_MEMBER_N (default 60000 spawns a round), SHOAL_MEMBER_ROUNDS (default 5);
# SHOAL_SYN_EBIN=/path/to/syn/ebin adds syn (not packaged for Debian) as a side.
.PHONY: bench-member
bench-member: all
	@mkdir -p build/bench
	erlc -o build/bench +debug_info bench/shoal_bench_cpu.erl bench/shoal_member_bench.erl
	@epmd -daemon >/dev/null 2>&1 || true
	erl -noshell -sname "shoal_member_bench_$$$$" +P 2000000 -pa _build/default/lib/shoal/ebin -pa build/bench \
	    -eval "try shoal_member_bench:main() of ok -> halt(0) \
	           catch C:R:S -> io:format(standard_error, \"member bench crashed: ~p:~p~n~p~n\", [C, R, S]), halt(1) end."

# A drain, this checkout against another (built) one, the sides taking turns round by round
# on fresh peers (build/bench/scratch/drain_ab.md, drain_ab_load.md): make bench-drain-ab BASE=../other.
# SHOAL_DRAIN_AB_ROUNDS (4), SHOAL_DRAIN_AB_N (100000 keys from each node),
# SHOAL_DRAIN_AB_GRACE (2000 ms), SHOAL_DRAIN_AB_LOAD=1 (clients call meanwhile).
.PHONY: bench-drain-ab
bench-drain-ab: all
	@test -n "$(BASE)" || { echo "usage: make bench-drain-ab BASE=/path/to/another/built/checkout" >&2; exit 2; }
	@mkdir -p build/bench
	erlc -o build/bench +debug_info bench/shoal_bench_cpu.erl bench/shoal_drain_ab_bench.erl
	@epmd -daemon >/dev/null 2>&1 || true
	SHOAL_DRAIN_AB_BASE="$(BASE)" erl -noshell -sname "shoal_drain_ab_$$$$" -pa build/bench \
	    -eval "try shoal_drain_ab_bench:main() of ok -> halt(0) \
	           catch C:R:S -> io:format(standard_error, \"drain bench crashed: ~p:~p~n~p~n\", [C, R, S]), halt(1) end."

# What the [shoal, call] telemetry span costs shoal:call when nobody listens, against the
# shoal.erl of before the span, in one VM (scripts/call_overhead.escript).
bench-call: all
	escript scripts/call_overhead.escript

# The pool tools alone (also part of `make bench`): bench/results/tools.md.
bench-tools: all
	bash scripts/bench_tools.sh

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

# --- make install: the C node for embedders (include/shoal.h, the static library, shoal.pc) --
#   make install PREFIX=/usr/local DESTDIR=/tmp/stage
PREFIX       ?= /usr/local
LIBDIR       ?= $(PREFIX)/lib
INCLUDEDIR   ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
SHOAL_VSN    := $(shell sed -n 's/.*{vsn, *"\([^"]*\)"}.*/\1/p' erl/shoal.app.src)
# Paths under PREFIX are written relative to ${prefix}, so the .pc file can be relocated.
pc_rel = $(patsubst $(PREFIX)/%,$${prefix}/%,$(1))

install: cnode
	install -d "$(DESTDIR)$(INCLUDEDIR)" "$(DESTDIR)$(LIBDIR)" "$(DESTDIR)$(PKGCONFIGDIR)"
	install -m 644 include/shoal.h "$(DESTDIR)$(INCLUDEDIR)/shoal.h"
	install -m 644 priv/libshoal_cnode.a "$(DESTDIR)$(LIBDIR)/libshoal_cnode.a"
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@INCLUDEDIR@|$(call pc_rel,$(INCLUDEDIR))|' \
	    -e 's|@LIBDIR@|$(call pc_rel,$(LIBDIR))|' -e 's|@EI_DIR@|$(EI_DIR)|' \
	    -e 's|@VERSION@|$(SHOAL_VSN)|' c_src/cnode/shoal.pc.in > "$(DESTDIR)$(PKGCONFIGDIR)/shoal.pc"
	chmod 644 "$(DESTDIR)$(PKGCONFIGDIR)/shoal.pc"

uninstall:
	rm -f "$(DESTDIR)$(INCLUDEDIR)/shoal.h" "$(DESTDIR)$(LIBDIR)/libshoal_cnode.a" \
	    "$(DESTDIR)$(PKGCONFIGDIR)/shoal.pc"
