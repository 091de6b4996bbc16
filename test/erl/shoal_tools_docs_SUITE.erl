%% @doc The examples of docs/tools.md, run as written: every ```erlang block of a tool's
%% section, in order. A block with `-module(' is compiled and loaded; any other block is
%% a sequence of shell expressions, evaluated in a fresh process (its pattern matches are
%% the example's assertions). A doc example that no longer runs fails here.
-module(shoal_tools_docs_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

all() ->
    [shoal_fixed_example_runs, shoal_cron_example_runs, shoal_batcher_example_runs,
     shoal_tasks_example_runs, shoal_shared_example_runs, every_tool_section_has_an_example].

init_per_suite(Config) ->
    {ok, _} = application:ensure_all_started(shoal),
    [{sections, sections(read_doc())} | Config].

end_per_suite(_Config) -> ok.

shoal_fixed_example_runs(Config) -> run_section("shoal_fixed", Config).
shoal_cron_example_runs(Config) -> run_section("shoal_cron", Config).
shoal_batcher_example_runs(Config) -> run_section("shoal_batcher", Config).
shoal_tasks_example_runs(Config) -> run_section("shoal_tasks", Config).
shoal_shared_example_runs(Config) -> run_section("shoal_shared", Config).

every_tool_section_has_an_example(Config) ->
    Sections = ?config(sections, Config),
    [?assertMatch([_ | _], proplists:get_value(T, Sections, []), T)
     || T <- ["shoal_fixed", "shoal_cron", "shoal_batcher", "shoal_tasks", "shoal_shared"]].

%%% Running -------------------------------------------------------------------------------

run_section(Tool, Config) ->
    Blocks = proplists:get_value(Tool, ?config(sections, Config)),
    ?assertNotEqual(undefined, Blocks),
    lists:foreach(fun run_block/1, Blocks).

run_block({Line, Code}) ->
    case string:find(Code, "-module(") of
        nomatch -> eval_block(Line, Code);
        _ -> load_module_block(Line, Code)
    end.

load_module_block(Line, Code) ->
    {ok, Tokens, _} = erl_scan:string(Code, Line),
    Forms = [case erl_parse:parse_form(F) of
                 {ok, Form} -> Form;
                 {error, E} -> ct:fail({doc_parse_error, E})
             end || F <- split_forms(Tokens, [])],
    case compile:forms(Forms, [return_errors, binary]) of
        {ok, Mod, Bin} ->
            {module, Mod} = code:load_binary(Mod, "docs/tools.md", Bin),
            ct:pal("docs/tools.md:~b: loaded module ~p", [Line, Mod]);
        {error, Errors, _} ->
            ct:fail({doc_module_does_not_compile, Line, Errors})
    end.

split_forms([], []) -> [];
split_forms([{dot, _} = Dot | Rest], Acc) -> [lists:reverse([Dot | Acc]) | split_forms(Rest, [])];
split_forms([T | Rest], Acc) -> split_forms(Rest, [T | Acc]).

eval_block(Line, Code) ->
    {ok, Tokens, _} = erl_scan:string(Code, Line),
    {ok, Exprs} = erl_parse:parse_exprs(Tokens),
    Parent = self(),
    {Pid, Mon} = spawn_monitor(fun() ->
                                       {value, V, _} = erl_eval:exprs(Exprs, erl_eval:new_bindings()),
                                       Parent ! {block_done, self(), V}
                               end),
    receive
        {block_done, Pid, V} ->
            erlang:demonitor(Mon, [flush]),
            ct:pal("docs/tools.md:~b: ran, last value ~p", [Line, V]);
        {'DOWN', Mon, process, Pid, Reason} ->
            ct:fail({doc_example_failed, Line, Reason})
    after 30000 ->
            exit(Pid, kill),
            ct:fail({doc_example_hangs, Line})
    end.

%%% Reading the doc -----------------------------------------------------------------------

read_doc() ->
    Src = proplists:get_value(source, ?MODULE:module_info(compile)),
    Root = filename:dirname(filename:dirname(filename:dirname(Src))),
    {ok, Bin} = file:read_file(filename:join([Root, "docs", "tools.md"])),
    string:split(unicode:characters_to_list(Bin), "\n", all).

%% [{ToolName, [{LineOfBlock, Code}]}] for every "## tool: ..." section.
sections(Lines) -> sections(Lines, 1, undefined, [], []).

sections([], _N, Cur, Blocks, Acc) -> lists:reverse(close(Cur, Blocks, Acc));
sections(["## " ++ Title | Rest], N, Cur, Blocks, Acc) ->
    [Tool | _] = string:split(Title, ":"),
    sections(Rest, N + 1, string:trim(Tool), [], close(Cur, Blocks, Acc));
sections(["```erlang" | Rest], N, Cur, Blocks, Acc) ->
    {Code, Rest1, Used} = block(Rest, []),
    sections(Rest1, N + 1 + Used, Cur, [{N + 1, Code} | Blocks], Acc);
sections([_ | Rest], N, Cur, Blocks, Acc) ->
    sections(Rest, N + 1, Cur, Blocks, Acc).

block(["```" | Rest], Acc) -> {lists:flatten(lists:join("\n", lists:reverse(Acc))), Rest, length(Acc) + 1};
block([L | Rest], Acc) -> block(Rest, [L | Acc]).

close(undefined, _Blocks, Acc) -> Acc;
close(Cur, Blocks, Acc) -> [{Cur, lists:reverse(Blocks)} | Acc].
