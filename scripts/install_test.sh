#!/usr/bin/env bash
# `make install-test`: Shoal installed the ways the README tells users to, each in a real
# throw-away project under a temp dir, built offline with Debian's tools and nothing set:
#   rebar3 app, Shoal as a git dependency (file:// URL of this repo at HEAD)
#   rebar3 app, Shoal in _checkouts (a symlink to this checkout)
#   Mix app, {:shoal, path: ...}
#   Mix app, {:shoal, git: ...} (file:// URL at HEAD)
#   C: `make install DESTDIR=...`, then docs/cnode.md's embedding example built with the doc's
#      own build lines (pkg-config against the installed files, and in-tree) and called from a
#      real Erlang node.
# Each app starts a pool and gets an answer from a worker. The git cases build what is
# committed (HEAD); the others build the working tree. SHOAL_INSTALL_KEEP=1 keeps the dir.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
SHA=$(git rev-parse HEAD)
URL="file://$REPO"
T=$(mktemp -d "${TMPDIR:-/tmp}/shoal_install.XXXXXX")
[ "${SHOAL_INSTALL_KEEP:-}" = 1 ] || trap 'rm -rf "$T"' EXIT
# What a user's shell has: no MIX_REBAR3 (make exports one), no ERL_LIBS, no Hex.
unset MIX_REBAR3 ERL_LIBS
export MIX_HOME="$T/mix_home" HEX_OFFLINE=1
UNIQ="$$_$RANDOM"
ok() { echo "install-test: $1 ok ($(( $(date +%s) - start )) s)"; }
# A dependency build makes the NIF and nothing else: no C node, so no libuv needed.
nif_only() {
  [ -f "$1/priv/shoal_nif.so" ] || { echo "install-test: no NIF in $1/priv" >&2; exit 1; }
  if [ -e "$1/priv/libshoal_cnode.a" ] || [ -e "$1/priv/shoal_cnode" ]; then
    echo "install-test: the dependency build made the C node ($1/priv)" >&2; exit 1
  fi
}

# --- rebar3 -------------------------------------------------------------------------------
# A user's rebar3 app with a worker; $1 = project dir, $2 = the shoal dependency term.
rebar3_app() {
  local dir=$1
  mkdir -p "$dir/src"
  cat > "$dir/rebar.config" <<EOF
{erl_opts, [debug_info]}.
{deps, [$2]}.
EOF
  cat > "$dir/src/myapp.app.src" <<'EOF'
{application, myapp,
 [{description, "A user's app"}, {vsn, "0.1.0"},
  {applications, [kernel, stdlib, shoal]}, {env, []}]}.
EOF
  cat > "$dir/src/myapp_counter.erl" <<'EOF'
-module(myapp_counter).
-behaviour(shoal_worker).
-export([init/2, handle_call/3, handle_cast/2]).
init(_Key, _Args) -> {ok, 0}.
handle_call(get, _From, N) -> {reply, N, N}.
handle_cast(incr, N) -> {noreply, N + 1}.
EOF
}

# Starts the app's node from its build dir (as a release would: every app's ebin on the path)
# and checks a worker answers and the docs are there; $1 = project dir.
rebar3_run() {
  (cd "$1" && erl -noshell -pa _build/default/lib/*/ebin _build/default/checkouts/*/ebin -eval '
    {ok, Started} = application:ensure_all_started(myapp),
    true = lists:member(shoal, Started),
    {ok, _} = shoal:start_pool(counters, #{worker => myapp_counter}),
    ok = shoal:cast(counters, {user, 42}, incr),
    1 = shoal:call(counters, {user, 42}, get),
    {ok, {docs_v1, _, _, _, _, _, Docs}} = code:get_doc(shoal),
    [_] = [D || {{function, call, 4}, _, _, #{<<"en">> := D}, _} <- Docs],
    io:format("  worker answered 1; h(shoal, call) has docs~n"),
    halt(0).')
}

start=$(date +%s)
rebar3_app "$T/r3_git" "{shoal, {git, \"$URL\", {ref, \"$SHA\"}}}"
(cd "$T/r3_git" && rebar3 compile)
nif_only "$T/r3_git/_build/default/lib/shoal"
rebar3_run "$T/r3_git"
ok "rebar3, git dependency"

# The same app as a release (relx, as docs/operations.md shows it), started as a daemon.
start=$(date +%s)
mkdir -p "$T/r3_git/config"
printf -- '-sname myapp_rel_%s\n-setcookie shoal_install_test\n+P 2000000\n' "$UNIQ" > "$T/r3_git/config/vm.args"
cat >> "$T/r3_git/rebar.config" <<'EOF'
{relx, [{release, {myapp, "0.1.0"}, [myapp]},
        {vm_args, "config/vm.args"}, {dev_mode, false}, {include_erts, false}]}.
EOF
(cd "$T/r3_git" && rebar3 release >/dev/null)
REL="$T/r3_git/_build/default/rel/myapp/bin/myapp"
"$REL" daemon
trap '"$REL" stop >/dev/null 2>&1 || true; [ "${SHOAL_INSTALL_KEEP:-}" = 1 ] || rm -rf "$T"' EXIT
for _ in $(seq 1 50); do "$REL" ping >/dev/null 2>&1 && break; sleep 0.2; done
answer=$("$REL" eval '{ok, _} = shoal:start_pool(p, #{worker => myapp_counter}),
  ok = shoal:cast(p, k, incr), {shoal:call(p, k, get), erlang:system_info(process_limit)}.')
[ "${answer// /}" = "{1,2097152}" ] || { echo "install-test: the release answered $answer" >&2; exit 1; }
"$REL" stop >/dev/null
echo "  the release's worker answered 1 (+P from vm.args: process_limit 2097152)"
ok "rebar3 release (relx), vm.args"

start=$(date +%s)
rebar3_app "$T/r3_checkouts" "{shoal, {git, \"$URL\", {ref, \"$SHA\"}}}"
mkdir -p "$T/r3_checkouts/_checkouts" && ln -s "$REPO" "$T/r3_checkouts/_checkouts/shoal"
(cd "$T/r3_checkouts" && rebar3 compile)
[ -d "$T/r3_checkouts/_build/default/checkouts/shoal/ebin" ]   # built from _checkouts, not fetched
[ ! -e "$T/r3_checkouts/_build/default/lib/shoal" ]
rebar3_run "$T/r3_checkouts"
ok "rebar3, _checkouts"

# --- Mix ----------------------------------------------------------------------------------
# A user's Mix app with a worker written with `use Shoal.Worker`; $1 = dir, $2 = the dep.
mix_app() {
  local dir=$1
  mkdir -p "$dir/lib"
  cat > "$dir/mix.exs" <<EOF
defmodule MyApp.MixProject do
  use Mix.Project
  def project, do: [app: :my_app, version: "0.1.0", elixir: "~> 1.14", deps: [$2]]
  def application, do: [extra_applications: [:logger]]
end
EOF
  cat > "$dir/lib/counter.ex" <<'EOF'
defmodule MyApp.Counter do
  use Shoal.Worker
  @impl true
  def init(_key, _args), do: {:ok, 0}
  @impl true
  def handle_call(:get, _from, n), do: {:reply, n, n}
  @impl true
  def handle_cast(:incr, n), do: {:noreply, n + 1}
end
EOF
}

mix_run() {
  (cd "$1" && mix run -e '
    {:ok, _} = Shoal.start_pool(:counters, worker: MyApp.Counter)
    :ok = Shoal.cast(:counters, {:user, 42}, :incr)
    1 = Shoal.call(:counters, {:user, 42}, :get)
    nil = Shoal.whereis(:counters, :nobody)
    1 = GenServer.call({:via, Shoal, {:counters, {:user, 42}}}, :get)
    {:docs_v1, _, _, _, _, _, _} = Code.fetch_docs(:shoal)
    IO.puts("  worker answered 1; :shoal has doc chunks")
  ')
}

start=$(date +%s)
mix_app "$T/mix_path" "{:shoal, path: \"$REPO\"}"
mix_run "$T/mix_path"
ok "Mix, path dependency"

start=$(date +%s)
mix_app "$T/mix_git" "{:shoal, git: \"$URL\", ref: \"$SHA\"}"
(cd "$T/mix_git" && mix deps.get >"$T/deps_get.log" 2>&1) || { cat "$T/deps_get.log"; exit 1; }
mix_run "$T/mix_git"
nif_only "$T/mix_git/deps/shoal"
ok "Mix, git dependency"

# --- C: make install, then the doc's example with the doc's build lines ---------------------
start=$(date +%s)
STAGE="$T/stage"
make --no-print-directory install DESTDIR="$STAGE" PREFIX=/usr/local >/dev/null
for f in include/shoal.h lib/libshoal_cnode.a lib/pkgconfig/shoal.pc; do
  [ -f "$STAGE/usr/local/$f" ] || { echo "install-test: make install did not install $f" >&2; exit 1; }
done
mkdir -p "$T/c" "$T/c_tree"
# The second C block after "And a program that embeds a node", and the two ```sh build lines.
doc_block() { awk -v start="$1" -v fence="$2" \
  'index($0, start) == 1 {f = 1} f && $0 == "```" fence {g = 1; next} g && $0 == "```" {exit} g {print}' \
  docs/cnode.md; }
doc_block "And a program that embeds a node" c > "$T/c/prog.c"
doc_block "Build it against an installed Shoal" sh > "$T/c/build_installed.sh"
doc_block "or straight from a built checkout" sh > "$T/c_tree/build_tree.sh"
[ -s "$T/c/prog.c" ] && [ -s "$T/c/build_installed.sh" ] && [ -s "$T/c_tree/build_tree.sh" ]
cp "$T/c/prog.c" "$T/c_tree/prog.c"
# The installed files are staged under DESTDIR: point pkg-config there (what a packager does).
(cd "$T/c" && export PKG_CONFIG_PATH="$STAGE/usr/local/lib/pkgconfig" &&
   pkg-config() { command pkg-config --define-variable=prefix="$STAGE/usr/local" "$@"; } &&
   source ./build_installed.sh)
# The in-tree line, run from a dir that has the checkout's include/ and priv/.
EI=$(erl -noshell -eval 'io:format("~s", [code:lib_dir(erl_interface)]), halt().')
ln -s "$REPO/include" "$T/c_tree/include" && ln -s "$REPO/priv" "$T/c_tree/priv"
(cd "$T/c_tree" && EI="$EI" source ./build_tree.sh)
[ -x "$T/c/prog" ] && [ -x "$T/c_tree/prog" ]

epmd -daemon >/dev/null 2>&1 || true
CNAME="shoal_it_c_$UNIQ"
"$T/c/prog" "$CNAME" &
CPID=$!
erl -noshell -sname "shoal_it_drv_$UNIQ" -setcookie secret -eval "
  Node = list_to_atom(\"$CNAME@\" ++ lists:nth(2, string:split(atom_to_list(node()), \"@\"))),
  Ping = fun Ping(0) -> pang; Ping(N) -> case net_adm:ping(Node) of pong -> pong; pang -> timer:sleep(100), Ping(N - 1) end end,
  pong = Ping(50),
  {hello, <<\"world\">>} = gen_server:call({echo, Node}, {hello, <<\"world\">>}),
  P = gen_server:call({echo, Node}, self),
  true = is_pid(P) andalso node(P) =:= Node,
  io:format(\"  the doc's C node answered gen_server:call from ~s~n\", [node()]),
  halt(0)." || { kill "$CPID" 2>/dev/null; exit 1; }
kill -TERM "$CPID"
wait "$CPID"   # the example exits 0 on SIGTERM once the node has closed
ok "C, make install + the doc's example"
echo "install-test: all ok"
