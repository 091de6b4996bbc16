#!/usr/bin/env escript
%% Writes EEP-48 doc chunks (Dir/chunks/Module.chunk) for every module in erl/ from its edoc,
%% so `h :shoal.call` (IEx) and `h(shoal, call)` (erl) show the docs. Run from the repository
%% root: `escript scripts/doc_chunks.escript Dir`. Without edoc installed (Debian's elixir
%% package does not pull it in) it says so and exits 0: docs are optional for a build.
main([Dir]) ->
    case code:which(edoc) of
        non_existing ->
            io:format("shoal: edoc is not installed; no doc chunks for h/1~n");
        _ ->
            Opts = [{doclet, edoc_doclet_chunks}, {layout, edoc_layout_chunks},
                    {dir, Dir}, {preprocess, true}, {includes, ["erl", "include"]}],
            try edoc:files(filelib:wildcard("erl/*.erl"), Opts) of
                ok -> ok
            catch C:R ->
                io:format(standard_error, "shoal: edoc failed: ~p:~p~n", [C, R]),
                halt(1)
            end
    end.
