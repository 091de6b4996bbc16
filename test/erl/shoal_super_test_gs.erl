%% @doc A gen_server group member for the shoal_super suites. Its state is a tag.
%%   call `block'            blocks the server (its mailbox fills) until it gets `unblock'
%%   call `whoami'           the member's shoal_super:my_group/0
%%   info `{ping, From}'     From ! {pong, Tag, self()}
%%   info `{inside, From, F}' From ! {inside, Tag, F()} (F runs inside the member)
%%   info `crash'            exits with `crash'
-module(shoal_super_test_gs).
-behaviour(gen_server).

-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

init(Tag) -> {ok, Tag}.

handle_call(block, _From, Tag) ->
    receive unblock -> ok end,
    {reply, ok, Tag};
handle_call(whoami, _From, Tag) ->
    {reply, shoal_super:my_group(), Tag}.

handle_cast(_Msg, Tag) -> {noreply, Tag}.

handle_info({ping, From}, Tag) -> From ! {pong, Tag, self()}, {noreply, Tag};
handle_info({inside, From, F}, Tag) -> From ! {inside, Tag, F()}, {noreply, Tag};
handle_info(crash, _Tag) -> exit(crash);
handle_info(_, Tag) -> {noreply, Tag}.
