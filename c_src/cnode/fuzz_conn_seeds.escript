#!/usr/bin/env escript
%% fuzz_conn_seeds.escript DIR - writes the seed inputs of fuzz_conn.c into DIR: byte 0 picks
%% the scenario (see fuzz_conn.c), the rest is what a peer sends. Each seed reaches a deep
%% state: a valid handshake (digests computed for the fixed challenge and cookie of
%% testconn.h) as acceptor, initiator, simultaneous connect or restarted peer, followed by
%% frames that exercise ticks, gen_server calls and casts, links, monitors, exits, trace
%% tokens, net_kernel, replies to the node's own calls, and the scripted fz processes.
%% Terms are made by term_to_binary, so they are what a BEAM peer sends.
-mode(compile).

-define(NAME, 'fuzz@host').          % TC_NAME
-define(PEER, 'peer@host').          % TC_PEER
-define(PEER2, 'alpha@host').        % TC_PEER2: sorts before us, so we win against it
-define(COOKIE, "fuzzcookie").       % TC_COOKIE
-define(CREATION, 1).                % TC_CREATION
-define(SALT, 16#5eed).              % TC_SALT
-define(CHALLENGE, 16#12345678).     % TC_CHALLENGE
-define(FLAGS, (16#1070F94 bor 16#08 bor 16#20 bor 16#1000 bor 16#2000000 bor 16#4000000
                bor (4 bsl 32))).
-define(ECHO, 2).
-define(FZ, 3).
-define(FZ2, 4).

main([Dir]) ->
    ok = filelib:ensure_path(Dir),
    Seeds = seeds(),
    [ok = file:write_file(filename:join(Dir, Name), Bytes) || {Name, Bytes} <- Seeds],
    io:format("~b seeds in ~s~n", [length(Seeds), Dir]);
main(_) ->
    io:format(standard_error, "usage: fuzz_conn_seeds.escript DIR~n", []),
    halt(2).

%% ---- scenarios (byte 0 of a seed) ----------------------------------------------------------

-define(ACCEPT, 0).
-define(INITIATE, 1).
-define(UP, 2).
-define(SIMULTANEOUS, 3).    % accept while our initiation to the same peer is pending
-define(RESTARTED, 7).       % accept while a connection to the same peer is up
-define(BYTE_READS, 1 bsl 3).
-define(SMALL_READS, 5 bsl 3).
-define(TICK_LATER, 16#40).
-define(SMALL_FRAMES, 16#80).

seeds() ->
    Sets = [{"echo", echo_frames()}, {"links", link_frames()}, {"monitors", monitor_frames()},
            {"fz", fz_frames()}, {"replies", reply_frames()}, {"tokens", token_frames()}],
    Handshakes = [{"accept", ?ACCEPT, accept_hs()},
                  {"initiate", ?INITIATE, initiate_hs(<<"ok">>)},
                  {"initiate_alive", ?INITIATE, initiate_hs(<<"alive">>)},
                  {"up", ?UP, <<>>},
                  {"simultaneous", ?SIMULTANEOUS, accept_hs()},
                  {"restarted", ?RESTARTED, restarted_hs(true)}],
    [{HsName ++ "_" ++ SetName, <<Sc, Hs/binary, (iolist_to_binary(Frames))/binary>>}
     || {HsName, Sc, Hs} <- Handshakes, {SetName, Frames} <- Sets] ++
        [{"accept_bytewise_echo", <<(?ACCEPT bor ?BYTE_READS), (accept_hs())/binary,
                                    (iolist_to_binary(echo_frames()))/binary>>},
         {"up_smallreads_fz_tick", <<(?UP bor ?SMALL_READS bor ?TICK_LATER),
                                     (iolist_to_binary(fz_frames()))/binary>>},
         {"restarted_false", <<?RESTARTED, (restarted_hs(false))/binary>>},
         {"simultaneous_win", <<?SIMULTANEOUS, (accept_hs(?PEER2))/binary>>},
         {"accept_wrong_cookie", <<?ACCEPT, (hs(send_name()))/binary,
                                   (hs(<<$r, 1:32, (erlang:md5("nope"))/binary>>))/binary>>},
         {"accept_silent_tick", <<(?ACCEPT bor ?TICK_LATER), (hs(send_name()))/binary>>},
         {"up_over_max_frame", <<(?UP bor ?SMALL_FRAMES),
                                 (reg_send(echo, {'$gen_cast', binary:copy(<<1>>, 5000)}))/binary,
                                 (tick())/binary>>}].

%% ---- handshakes ------------------------------------------------------------------------------

hs(Body) -> <<(byte_size(Body)):16, Body/binary>>.

name_bin(N) -> atom_to_binary(N, utf8).

send_name() -> send_name(?PEER).

send_name(Peer) ->
    N = name_bin(Peer),
    <<$N, ?FLAGS:64, 7:32, (byte_size(N)):16, N/binary>>.

digest(Challenge) -> erlang:md5([?COOKIE, integer_to_list(Challenge)]).

%% we accept: peer sends send_name, then its reply to our challenge
accept_hs() -> accept_hs(?PEER).

accept_hs(Peer) ->
    <<(hs(send_name(Peer)))/binary, (hs(<<$r, 4711:32, (digest(?CHALLENGE))/binary>>))/binary>>.

%% we accept while a connection to the peer is up: status alive, the peer says true or false
restarted_hs(true) ->
    <<(hs(send_name()))/binary, (hs(<<"strue">>))/binary,
      (hs(<<$r, 4711:32, (digest(?CHALLENGE))/binary>>))/binary>>;
restarted_hs(false) ->
    <<(hs(send_name()))/binary, (hs(<<"sfalse">>))/binary>>.

%% we initiate: the peer answers the status, its challenge, then acks our reply
initiate_hs(Status) ->
    N = name_bin(?PEER),
    <<(hs(<<$s, Status/binary>>))/binary,
      (hs(<<$N, ?FLAGS:64, 999:32, 7:32, (byte_size(N)):16, N/binary>>))/binary,
      (hs(<<$a, (digest(?CHALLENGE))/binary>>))/binary>>.

%% ---- terms -----------------------------------------------------------------------------------

%% A pid of the fuzz node (creation 1) or of the peer (creation 7), as the wire has it.
pid(Node, Num) ->
    N = name_bin(Node),
    Cr = case Node of ?NAME -> ?CREATION; _ -> 7 end,
    binary_to_term(<<131, 88, 119, (byte_size(N)), N/binary, Num:32, 0:32, Cr:32>>).

peer_pid() -> pid(?PEER, 42).

%% One of the node's own refs (ref number RefNo), as dist_dec_our_ref expects it.
our_ref(RefNo) ->
    N = name_bin(?NAME),
    binary_to_term(<<131, 90, 3:16, 119, (byte_size(N)), N/binary, ?CREATION:32,
                     (RefNo band 16#3ffff):32, (RefNo bsr 18):32, ?SALT:32>>).

peer_ref() ->
    N = name_bin(?PEER),
    binary_to_term(<<131, 90, 3:16, 119, (byte_size(N)), N/binary, 7:32, 1:32, 2:32, 3:32>>).

%% ---- frames ----------------------------------------------------------------------------------

tick() -> <<0:32>>.

frame(Ctrl) ->
    Body = <<$p, (term_to_binary(Ctrl))/binary>>,
    <<(byte_size(Body)):32, Body/binary>>.

frame(Ctrl, Msg) ->
    Body = <<$p, (term_to_binary(Ctrl))/binary, (term_to_binary(Msg))/binary>>,
    <<(byte_size(Body)):32, Body/binary>>.

reg_send(To, Msg) -> frame({6, peer_pid(), '', To}, Msg).
send(ToNum, Msg) -> frame({2, '', pid(?NAME, ToNum)}, Msg).
call(Msg) -> {'$gen_call', {peer_pid(), peer_ref()}, Msg}.

echo_frames() ->
    [tick(),
     reg_send(echo, call(hello)),
     reg_send(echo, call(self)),
     reg_send(echo, {'$gen_cast', {count, 1}}),
     reg_send(echo, call(cast_count)),
     send(?ECHO, call(#{a => [1, 2.5, <<"bin">>]})),
     send(?ECHO, plain),
     reg_send(nobody, call(x)),
     reg_send(net_kernel, call({is_auth, ?PEER})),
     tick()].

link_frames() ->
    P = peer_pid(),
    [frame({1, P, pid(?NAME, ?FZ)}),
     frame({1, P, pid(?NAME, ?FZ2)}),
     frame({1, P, pid(?NAME, 99)}),                % no such process: EXIT noproc back
     frame({3, P, pid(?NAME, ?FZ), boom}),
     frame({35, 1, P, pid(?NAME, ?FZ2)}),
     frame({4, P, pid(?NAME, ?FZ2)}),
     frame({1, P, pid(?NAME, ?FZ2)}),
     frame({8, P, pid(?NAME, ?FZ2), kill}),
     frame({8, P, pid(?NAME, ?FZ), normal}),
     frame({3, P, pid(?NAME, ?FZ2), normal}),
     frame({5, P, pid(?NAME, ?FZ)}),
     frame({7, P, pid(?NAME, ?FZ)})].

monitor_frames() ->
    P = peer_pid(),
    [frame({19, P, pid(?NAME, ?FZ), peer_ref()}),
     frame({19, P, fz2, peer_ref()}),
     frame({19, P, nobody, peer_ref()}),
     frame({19, P, net_kernel, peer_ref()}),
     frame({19, P, pid(?NAME, 77), peer_ref()}),
     frame({20, P, pid(?NAME, ?FZ), peer_ref()}),
     frame({20, P, fz2, peer_ref()}),
     reg_send(fz2, stop),
     reg_send(fz, {exit, {shutdown, why}})].

fz_frames() ->
    P = peer_pid(),
    [reg_send(fz, {link, P}),
     reg_send(fz, {link, pid(?NAME, ?FZ2)}),
     reg_send(fz, {link, pid(?NAME, 55)}),
     reg_send(fz, {monitor, P}),
     reg_send(fz, {monitor, pid(?NAME, ?ECHO)}),
     reg_send(fz, {monitor, {srv, ?PEER}}),
     reg_send(fz, {monitor, fz2}),
     reg_send(fz, {monitor, {nobody, ?NAME}}),
     reg_send(fz, {demonitor, 1}),
     reg_send(fz, {call, {srv, ?PEER}, req, 100}),
     reg_send(fz, {call, echo, req, 0}),
     reg_send(fz, {call, nobody, req, 0}),
     reg_send(fz, {call, pid(?NAME, ?ECHO), req, 50}),
     reg_send(fz, {send, pid(?NAME, ?FZ2), {'$gen_call', {pid(?NAME, ?FZ), make_ref()}, x}}),
     reg_send(fz, {send, P, hi}),
     reg_send(fz, {send, {srv, ?PEER}, hi}),
     reg_send(fz, {send, fz2, {'$gen_cast', {link, P}}}),
     reg_send(fz, {spawn, w1, true}),
     reg_send(w1, {link, P}),
     reg_send(fz, {register, fzz}),
     reg_send(fz, {timer, 0}),
     reg_send(fz, {connect, ?PEER}),
     reg_send(fz, {connect, 'other@elsewhere'}),
     reg_send(fz, call(later)),
     reg_send(fz, {answer, done}),
     reg_send(fz, {kill, fz2, die}),
     reg_send(fz, {kill, w1, kill}),
     reg_send(fz, {exit, bye}),
     reg_send(echo, call(after_exits))].

reply_frames() ->
    %% the fz calls of fz_frames use ref numbers 1, 2, ...: answer and fail some of them
    P = peer_pid(),
    [reg_send(fz, {call, {srv, ?PEER}, req, 1000}),
     reg_send(fz, {call, {srv, ?PEER}, req2, 0}),
     reg_send(fz, {monitor, P}),
     send(?FZ, {our_ref(1), reply}),
     frame({21, {srv, ?PEER}, pid(?NAME, ?FZ), our_ref(2), noproc}),
     frame({21, P, pid(?NAME, ?FZ), our_ref(3), gone}),
     frame({21, P, pid(?NAME, ?FZ), our_ref(99), gone}),
     frame({21, P, pid(?NAME, ?FZ), peer_ref(), gone}),
     send(?FZ, {our_ref(1), late_reply})].

token_frames() ->
    P = peer_pid(),
    Token = {0, 1, 2, self(), 3},
    [frame({12, '', pid(?NAME, ?ECHO), Token}, call(traced)),
     frame({16, P, '', echo, Token}, call(traced_named)),
     frame({1, P, pid(?NAME, ?FZ)}),
     frame({13, P, pid(?NAME, ?FZ), Token, traced_exit}),
     frame({1, P, pid(?NAME, ?FZ2)}),
     frame({18, P, pid(?NAME, ?FZ2), Token, traced_exit2}),
     frame({99, P})].
