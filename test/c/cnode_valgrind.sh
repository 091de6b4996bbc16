#!/usr/bin/env bash
# Runs the real shoal_cnode under valgrind (--leak-check=full --error-exitcode=1) through a
# session driven by a real erl node: ping, echo calls of many term types, 1 MB binaries,
# C workers spawned/monitored/linked/stopped, C calling an Erlang gen_server, an outgoing
# connection, garbage on the listen port, failed handshakes past the log limit, a message
# over -max_frame (that connection drops, the driver reconnects), then SIGTERM. Fails on any
# valgrind error or leak and when the session itself fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
epmd -daemon >/dev/null 2>&1 || true
name="shoal_vg_$$"
cookie="shoal_vg"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
valgrind --leak-check=full --error-exitcode=1 --errors-for-leak-kinds=definite,indirect \
    --show-leak-kinds=definite,indirect priv/shoal_cnode -sname "$name" -setcookie "$cookie" \
    -max_frame 2M -hs_log_burst 3 -hs_log_period 1 >"$log" 2>&1 &
vg=$!
host=$(hostname -s)
erl -sname "vgdrv_$$" -setcookie "$cookie" -noshell -eval "
C = '$name@$host',
Wait = fun W(0) -> halt(3); W(N) -> case net_adm:ping(C) of pong -> ok; pang -> timer:sleep(200), W(N-1) end end,
Wait(150),
Terms = [ok, 'ü', 1 bsl 100, 2.5, <<1:3>>, #{a => [1|2]}, self(), make_ref(), list_to_binary(lists:duplicate(1 bsl 20, 7))],
[T = gen_server:call({echo, C}, T, 30000) || T <- Terms],
[begin {ok, W} = gen_server:call({shoal_ctl, C}, {spawn, undefined, true, self()}, 30000),
       M = monitor(process, W),
       E = spawn(fun() -> receive die -> exit(bye) end end),
       ok = gen_server:call({shoal_ctl, C}, {link, W, E}, 30000),
       E ! die,
       receive {'EXIT', E, bye} -> ok end,
       ok = gen_server:call({shoal_ctl, C}, {stop, W, {shutdown, I}}, 30000),
       receive {'DOWN', M, process, W, {shutdown, I}} -> ok end
 end || I <- lists:seq(1, 20)],
register(vgsrv, spawn(fun L() -> receive {'\$gen_call', {P, T}, R} -> P ! {T, R}, L() end end)),
{ok, hello} = gen_server:call({shoal_ctl, C}, {call, {vgsrv, node()}, hello, 5000}, 30000),
{error, noproc} = gen_server:call({shoal_ctl, C}, {call, {vgsrv_none_ever, node()}, x, 100}, 30000),
{'EXIT', {noproc, _}} = (catch gen_server:call({nobody, C}, x, 30000)),
{ok, Port, _} = case erl_epmd:port_please(\"$name\", \"$host\") of {port, P, V} -> {ok, P, V} end,
{ok, S} = gen_tcp:connect(\"localhost\", Port, [binary, {active, false}]),
ok = gen_tcp:send(S, <<0, 5, \"hello\">>),
{error, closed} = gen_tcp:recv(S, 0, 30000),
[gen_server:cast({echo, C}, {m, I}) || I <- lists:seq(1, 20000)],
pong = net_adm:ping(C),
BadCookie = fun(I) ->
    {ok, B} = gen_tcp:connect(\"localhost\", Port, [binary, {packet, 2}, {active, false}]),
    Me = list_to_binary(\"bad\" ++ integer_to_list(I) ++ \"@$host\"),
    ok = gen_tcp:send(B, <<\$N, 16#3070FBC:64, 7:32, (byte_size(Me)):16, Me/binary>>),
    {ok, <<\"sok\">>} = gen_tcp:recv(B, 0, 30000),
    {ok, <<\$N, _/binary>>} = gen_tcp:recv(B, 0, 30000),
    ok = gen_tcp:send(B, <<\$r, 1:32, 0:128>>),
    {error, closed} = gen_tcp:recv(B, 0, 30000) end,
[BadCookie(I) || I <- lists:seq(1, 10)],
true = erlang:monitor_node(C, true),
gen_server:cast({echo, C}, binary:copy(<<1>>, 3 bsl 20)),
receive {nodedown, C} -> ok after 30000 -> halt(4) end,
pong = net_adm:ping(C),
hi = gen_server:call({echo, C}, hi, 30000),
timer:sleep(2500), % the summary of the failed handshakes not logged (period 1 s)
halt(0)." || { echo "valgrind session: driver failed"; kill -TERM $vg; wait $vg || true; cat "$log"; exit 1; }
kill -TERM $vg
set +e
wait $vg
rc=$?
set -e
tail -25 "$log"
if [ $rc -ne 0 ]; then
  echo "valgrind session: FAILED (exit $rc)"
  exit 1
fi
grep -q "ERROR SUMMARY: 0 errors" "$log" || { echo "valgrind session: errors reported"; exit 1; }
grep -qE "handshake failures: [0-9]+ more not logged" "$log" ||
  { echo "valgrind session: no summary of the failed handshakes"; exit 1; }
echo "valgrind session: clean"
