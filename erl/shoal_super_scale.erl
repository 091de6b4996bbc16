%% @doc The auto-scaling policy of a chain step, as a pure function: given the step's
%% bounds, its latest sample and what earlier samples left, what to do now. The chain's
%% manager samples the step every `scale_interval' ms and carries out the decision.
%%
%% Growing: two samples in a row with more than `scale_up_queue' items waiting per worker
%% add half as many workers again (at least one, never beyond `max'). Shrinking: a step
%% that had nothing waiting and handled nothing for `idle_after' ms goes back to `min'.
-module(shoal_super_scale).

-export([decide/3]).

-export_type([policy/0, sample/0, memory/0, action/0]).

-type policy() :: #{min := pos_integer(), max := pos_integer(),
                    scale_up_queue := pos_integer(), idle_after := pos_integer(),
                    _ => _}.
-type sample() :: #{queue := non_neg_integer(), rate := number(),
                    workers := non_neg_integer(), now := integer()}.
-type memory() :: #{over := non_neg_integer(), idle_since := undefined | integer()}.
-type action() :: none | {grow, pos_integer()} | {shrink, pos_integer()}.

%% @doc What to do with a step (Policy) after Sample, given Memory from the previous
%% decision; returns the action and the memory to pass next time.
-spec decide(policy(), sample(), memory()) -> {action(), memory()}.
decide(#{min := Min, max := Max, scale_up_queue := UpQ, idle_after := IdleAfter},
       #{queue := Q, rate := Rate, workers := W, now := Now},
       #{over := Over, idle_since := Idle}) ->
    Over1 = case Q > UpQ * max(W, 1) of
                true -> Over + 1;
                false -> 0
            end,
    Idle1 = case Q =:= 0 andalso Rate == 0 of
                true when Idle =:= undefined -> Now;
                true -> Idle;
                false -> undefined
            end,
    if
        Over1 >= 2, W < Max ->
            {{grow, min(Max - W, max(1, W div 2))}, #{over => 0, idle_since => Idle1}};
        Idle1 =/= undefined, Now - Idle1 >= IdleAfter, W > Min ->
            {{shrink, W - Min}, #{over => Over1, idle_since => Now}};
        true ->
            {none, #{over => Over1, idle_since => Idle1}}
    end.
