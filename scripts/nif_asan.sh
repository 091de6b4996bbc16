#!/usr/bin/env bash
# `make nif-asan`: the NIF built with AddressSanitizer + UBSan, and its EUnit suites run
# against it in a plain VM (the sanitizer runtimes are preloaded, as the BEAM itself is not
# instrumented; leak checking is off because the VM's own allocations are not ours).
set -euo pipefail
cd "$(dirname "$0")/.."
ERTS_INC=$(erl -noshell -eval 'io:format("~s",[filename:join([code:root_dir(),"erts-"++erlang:system_info(version),"include"])]),halt().')
APP=build/nif_asan/shoal
rm -rf "$APP" && mkdir -p "$APP/priv"
rebar3 as test compile >/dev/null
cp -r _build/test/lib/shoal/ebin "$APP/ebin"
${CC:-cc} -std=c11 -D_DEFAULT_SOURCE -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -O1 -g \
    -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined \
    -Iinclude -Ic_src/core -I"$ERTS_INC" -fPIC -fvisibility=hidden -shared \
    -o "$APP/priv/shoal_nif.so" c_src/nif/*.c c_src/core/*.c -pthread
LIBS="$(${CC:-cc} -print-file-name=libasan.so) $(${CC:-cc} -print-file-name=libubsan.so)"
LD_PRELOAD="$LIBS" ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    erl -noshell -pa "$APP/ebin" -pa _build/test/lib/shoal/test/erl -eval '
      Dir = code:priv_dir(shoal),
      true = lists:prefix(filename:absname("build/nif_asan"), filename:absname(Dir)),
      case eunit:test([shoal_nif_tests, shoal_nif_keys_tests, shoal_prop_tests,
                       shoal_keyhash_tests], []) of
          ok -> halt(0);
          _ -> halt(1)
      end.'
