# cnode.mk - build, test, fuzz and bench targets of the Shoal C node (included by Makefile).
SHOAL_CNODE_MK := 1

CN_DIR     := c_src/cnode
CN_BUILD   := $(BUILD)/cnode
CN_LIB_SRC := $(CN_DIR)/md5.c $(CN_DIR)/wire.c $(CN_DIR)/map.c $(CN_DIR)/ratelog.c \
              $(CN_DIR)/node.c \
              $(CN_DIR)/ctrl.c $(CN_DIR)/proc.c $(CN_DIR)/dist.c $(CN_DIR)/cnode.c \
              $(CN_DIR)/echo.c
CN_HDR     := $(wildcard $(CN_DIR)/*.h) include/shoal.h c_src/core/keyhash.h
CN_CFLAGS  := $(CFLAGS_COMMON) -fvisibility=hidden -I$(CN_DIR) -I$(EI_DIR)/include
CN_LIBS    := -L$(EI_DIR)/lib -lei -luv -pthread
CN_OBJ     := $(patsubst $(CN_DIR)/%.c,$(CN_BUILD)/%.o,$(CN_LIB_SRC))
CN_LIB     := priv/libshoal_cnode.a
CN_BIN     := priv/shoal_cnode
CN_TEST_SRC := $(wildcard test/c/test_cnode*.c)
CN_TEST_HDR := $(wildcard test/c/test_cnode*.h)
# Fuzz smoke runs inside make test: parsers, then the connection state machine (40 s at most
# together). `make fuzz` runs each FUZZ_SECS (600) with longer inputs.
CN_FUZZ_SECS ?= 10
CN_FUZZ_CONN_SECS ?= 15
CN_FUZZ_CFLAGS := $(CSTD) $(WARN) -g -O1 -I$(CN_DIR) -Iinclude -Ic_src/core -I$(EI_DIR)/include \
                  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
CN_TC_SRC  := $(CN_DIR)/testconn.c

.PHONY: cnode cnode-test cnode-unit cnode-asan cnode-symbols cnode-fuzz-smoke cnode-valgrind \
        cnode-bench fuzz fuzz-conn cnode-fuzz-seeds

cnode: $(CN_LIB) $(CN_BIN)

$(CN_BUILD)/%.o: $(CN_DIR)/%.c $(CN_HDR)
	@mkdir -p $(CN_BUILD)
	$(CC) $(CN_CFLAGS) -c -o $@ $<

# One relocatable object whose hidden (internal, shoal__*) symbols are made local, so an
# embedder linking the archive sees only the API of include/shoal.h.
$(CN_LIB): $(CN_OBJ)
	@mkdir -p priv
	ld -r -o $(CN_BUILD)/shoal_cnode_lib.o $^
	objcopy --localize-hidden $(CN_BUILD)/shoal_cnode_lib.o
	rm -f $@ && ar rcs $@ $(CN_BUILD)/shoal_cnode_lib.o

$(CN_BIN): $(CN_BUILD)/main.o $(CN_LIB)
	$(CC) -o $@ $^ $(CN_LIBS)

# The plain unit tests link the library's own objects (internal symbols and all).
$(CN_BUILD)/test_cnode: $(CN_TEST_SRC) $(CN_TEST_HDR) $(CN_TC_SRC) $(CN_OBJ) $(CN_HDR)
	@mkdir -p $(CN_BUILD)
	$(CC) $(CN_CFLAGS) -o $@ $(CN_TEST_SRC) $(CN_TC_SRC) $(CN_OBJ) -lcunit $(CN_LIBS)

$(CN_BUILD)/test_cnode_asan: $(CN_TEST_SRC) $(CN_TEST_HDR) $(CN_TC_SRC) $(CN_LIB_SRC) $(CN_HDR)
	@mkdir -p $(CN_BUILD)
	$(CC) $(CN_CFLAGS) $(SAN) -o $@ $(CN_TEST_SRC) $(CN_TC_SRC) $(CN_LIB_SRC) -lcunit $(CN_LIBS)

$(CN_BUILD)/fuzz_frame: $(CN_DIR)/fuzz_frame.c $(CN_DIR)/wire.c $(CN_DIR)/md5.c $(CN_HDR)
	@mkdir -p $(CN_BUILD)
	clang $(CN_FUZZ_CFLAGS) -o $@ $(CN_DIR)/fuzz_frame.c $(CN_DIR)/wire.c $(CN_DIR)/md5.c \
	    -L$(EI_DIR)/lib -lei -pthread

$(CN_BUILD)/fuzz_conn: $(CN_DIR)/fuzz_conn.c $(CN_TC_SRC) $(CN_LIB_SRC) $(CN_HDR)
	@mkdir -p $(CN_BUILD)
	clang $(CN_FUZZ_CFLAGS) -o $@ $(CN_DIR)/fuzz_conn.c $(CN_TC_SRC) $(CN_LIB_SRC) $(CN_LIBS)

cnode-unit: $(CN_BUILD)/test_cnode
	$(CN_BUILD)/test_cnode

cnode-asan: $(CN_BUILD)/test_cnode_asan
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 $(CN_BUILD)/test_cnode_asan

cnode-fuzz-smoke: $(CN_BUILD)/fuzz_frame $(CN_BUILD)/fuzz_conn
	@mkdir -p $(CN_BUILD)/corpus $(CN_BUILD)/corpus_conn
	$(CN_BUILD)/fuzz_frame -max_total_time=$(CN_FUZZ_SECS) -max_len=4096 \
	    -artifact_prefix=$(CN_BUILD)/ $(CN_BUILD)/corpus $(CN_DIR)/fuzz_seeds
	$(CN_BUILD)/fuzz_conn -max_total_time=$(CN_FUZZ_CONN_SECS) -max_len=4096 -timeout=10 \
	    -artifact_prefix=$(CN_BUILD)/ $(CN_BUILD)/corpus_conn $(CN_DIR)/fuzz_conn_seeds

# The archive defines exactly the functions include/shoal.h declares: no internal name leaks
# into an embedder's namespace, and no declared function is missing.
cnode-symbols: $(CN_LIB)
	@nm -g --defined-only $(CN_LIB) | awk 'NF == 3 {print $$3}' | sort >$(CN_BUILD)/exported.txt
	@grep -oE '\bshoal_[a-z][a-z0-9_]*\(' include/shoal.h | tr -d '(' | sort -u \
	    >$(CN_BUILD)/declared.txt
	@if ! diff -u $(CN_BUILD)/declared.txt $(CN_BUILD)/exported.txt; then \
	    echo "cnode-symbols: $(CN_LIB) exports other symbols than include/shoal.h declares"; \
	    exit 1; fi
	@echo "cnode-symbols: $(CN_LIB) exports the $$(wc -l <$(CN_BUILD)/declared.txt)" \
	    "functions of include/shoal.h, nothing else"

cnode-valgrind: $(CN_BIN)
	bash test/c/cnode_valgrind.sh

cnode-test: cnode cnode-symbols cnode-unit cnode-asan cnode-fuzz-smoke cnode-valgrind

fuzz: $(CN_BUILD)/fuzz_frame
	@mkdir -p $(CN_BUILD)/corpus
	$(CN_BUILD)/fuzz_frame -max_total_time=$${FUZZ_SECS:-600} -max_len=65536 \
	    -artifact_prefix=$(CN_BUILD)/ $(CN_BUILD)/corpus $(CN_DIR)/fuzz_seeds
	@$(MAKE) --no-print-directory fuzz-conn

# Writes the seeds of fuzz_conn (committed; rerun after changing the generator).
cnode-fuzz-seeds:
	escript $(CN_DIR)/fuzz_conn_seeds.escript $(CN_DIR)/fuzz_conn_seeds

fuzz-conn: $(CN_BUILD)/fuzz_conn
	@mkdir -p $(CN_BUILD)/corpus_conn
	$(CN_BUILD)/fuzz_conn -max_total_time=$${FUZZ_SECS:-600} -max_len=16384 -timeout=10 \
	    -artifact_prefix=$(CN_BUILD)/ $(CN_BUILD)/corpus_conn $(CN_DIR)/fuzz_conn_seeds

cnode-bench: cnode
	bash bench/cnode_bench.sh
