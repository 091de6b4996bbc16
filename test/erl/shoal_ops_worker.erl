%% @doc The worker of shoal_ops_SUITE: what its init/2 and load/2 do depends on the key,
%% and it exports format_status/1 (hiding its `secret') and code_change/3.
%%
%% Keys: `{raise, _}' raises in init/2, `{throw_ok, _}' throws `{ok, State}' from init/2
%% (gen_server's rule: a throw is a return value), `{no_load, _}' is refused by load/2;
%% any other key starts with `#{key => Key, n => 0, secret => hidden}'.
-module(shoal_ops_worker).
-behaviour(shoal_worker).

-export([init/2, load/2, handle_call/3, handle_cast/2, code_change/3, format_status/1]).

init({raise, _}, _Args) -> error(boom);
init({throw_ok, _} = Key, _Args) -> throw({ok, #{key => Key, n => 0, secret => hidden}});
init(Key, _Args) -> {ok, #{key => Key, n => 0, secret => hidden}}.

load({no_load, _}, _St) -> {error, not_in_store};
load(_Key, St) -> {ok, St}.

handle_call(get, _From, St) -> {reply, St, St};
handle_call(incr, _From, #{n := N} = St) -> {reply, N + 1, St#{n := N + 1}};
handle_call(crash, _From, _St) -> error(crashed);
handle_call({sleep, Ms}, _From, St) -> timer:sleep(Ms), {reply, ok, St}.

handle_cast(_Msg, St) -> {noreply, St}.

code_change(Old, St, Extra) -> {ok, St#{upgraded_from => Old, extra => Extra}}.

format_status(#{state := St} = Status) -> Status#{state := St#{secret := '***'}}.
