%% @doc Options and small shared helpers of the pool tools (shoal_fixed, shoal_cron, shoal_batcher, shoal_tasks,
%% shoal_shared): each accepts a map or a proplist (an Elixir keyword list is one), so a thin
%% Elixir `use' macro can pass its options straight through. This module turns either into
%% a map, rejects unknown keys, and checks single values.
-module(shoal_tools_opts).

-export([to_map/2, get/4, callback_module/3, split_name/1, erase_own/2]).

-export_type([opts/0]).

-type opts() :: map() | [{atom(), term()} | atom()].

%% @doc `Opts' as a map. A proplist's bare atom `A' means `{A, true}'; a later duplicate key
%% in a proplist is ignored, like proplists:get_value/2 does. `{error, {unknown_option, K}}'
%% for a key not in `Known', `{error, {bad_options, Opts}}' for anything but a map or a list
%% of `{Key, Value}' pairs and atoms.
-spec to_map(term(), [atom()]) -> {ok, map()} | {error, term()}.
to_map(Opts, Known) when is_map(Opts) ->
    check_known(maps:keys(Opts), Opts, Known);
to_map(Opts, Known) when is_list(Opts) ->
    try lists:foldr(fun({K, V}, M) when is_atom(K) -> M#{K => V};
                       (K, M) when is_atom(K) -> M#{K => true};
                       (_, _) -> throw(bad)
                    end, #{}, Opts) of
        Map -> check_known(maps:keys(Map), Map, Known)
    catch _:_ -> {error, {bad_options, Opts}}      % an element that is no pair, or an improper list
    end;
to_map(Opts, _Known) ->
    {error, {bad_options, Opts}}.

check_known(Keys, Map, Known) ->
    case [K || K <- Keys, not lists:member(K, Known)] of
        [] -> {ok, Map};
        [K | _] -> {error, {unknown_option, K}}
    end.

%% @doc The value of `Key' in `Opts' (a map), `Default' when absent; throws
%% `{bad_option, Key, Value}' when `Valid(Value)' is false. For use inside a `try' that
%% turns the throw into `{error, Reason}'.
-spec get(atom(), map(), term(), fun((term()) -> boolean())) -> term().
get(Key, Opts, Default, Valid) ->
    case maps:find(Key, Opts) of
        error -> Default;
        {ok, V} ->
            case Valid(V) of
                true -> V;
                false -> throw({bad_option, Key, V})
            end
    end.

%% @doc Check that `Key' in `Opts' names a loadable module exporting every `{F, A}' in
%% `Required'; returns the module. Throws `{missing_option, Key}', `{bad_option, Key, V}',
%% `{module_not_loadable, M, Why}' or `{missing_callback, M, F, A}'.
-spec callback_module(atom(), map(), [{atom(), arity()}]) -> module().
callback_module(Key, Opts, Required) ->
    Mod = case maps:find(Key, Opts) of
              {ok, M} when is_atom(M) -> M;
              {ok, M} -> throw({bad_option, Key, M});
              error -> throw({missing_option, Key})
          end,
    case code:ensure_loaded(Mod) of
        {module, Mod} -> ok;
        {error, Why} -> throw({module_not_loadable, Mod, Why})
    end,
    [throw({missing_callback, Mod, F, A})
     || {F, A} <- Required, not erlang:function_exported(Mod, F, A)],
    Mod.

%% @doc `{Name, OtherOptions}' from options that carry the instance's `name' (the argument
%% of child_spec/1 in Elixir's `{Module, Opts}' child shape). Throws nothing: a missing
%% name is `undefined', which start_link then refuses as a bad name.
-spec split_name(map() | list()) -> {term(), map() | list()}.
split_name(Opts) when is_map(Opts) -> {maps:get(name, Opts, undefined), maps:remove(name, Opts)};
split_name(Opts) when is_list(Opts) -> {proplists:get_value(name, Opts), proplists:delete(name, Opts)}.

%% @doc Erase the persistent_term `Key' if the record there names the calling process in
%% field `Field' (a record field index): a tool's process cleaning up its own record at
%% termination, never one a successor published since.
-spec erase_own(term(), pos_integer()) -> ok.
erase_own(Key, Field) ->
    Self = self(),
    case persistent_term:get(Key, undefined) of
        T when is_tuple(T), tuple_size(T) >= Field, element(Field, T) =:= Self ->
            _ = persistent_term:erase(Key),
            ok;
        _ ->
            ok
    end.
