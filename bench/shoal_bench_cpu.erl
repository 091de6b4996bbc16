%% shoal_bench_cpu: the CPU time an Erlang node has used, for the benches that compare what
%% the nodes of a cluster spend (shoal_member_bench, shoal_drain_ab_bench); run on each node.
-module(shoal_bench_cpu).

-export([ticks/0]).

%% @doc utime + stime of this OS process, in clock ticks (1/100 s on Linux;
%% /proc/self/stat fields 14 and 15).
-spec ticks() -> non_neg_integer().
ticks() ->
    {ok, Stat} = file:read_file("/proc/" ++ os:getpid() ++ "/stat"),
    [_, Rest] = binary:split(Stat, <<") ">>),
    Fields = binary:split(Rest, <<" ">>, [global]),
    binary_to_integer(lists:nth(12, Fields)) + binary_to_integer(lists:nth(13, Fields)).
