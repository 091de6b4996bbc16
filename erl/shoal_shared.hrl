%% The record of a shoal_shared pool, kept in persistent_term under ?SHARED_KEY(Name) by
%% the pool's owner (shoal_shared_owner) and read by callers (shoal_shared) and workers
%% (shoal_shared_worker).
-define(SHARED_KEY(Name), {shoal_shared, Name}).

-record(shoal_shared, {
          name :: atom(),
          module :: module(),
          size :: pos_integer(),
          queue :: ets:tid(),              % ordered_set {Seq, Kind, Req, From, Deadline}
          state :: ets:tid() | undefined,  % {state, Vsn, State} and {lock, Pid}; shared only
          serving :: ets:tid(),            % {WorkerPid, From}: the call a worker runs
          atomics :: atomics:atomics_ref(),% see ?A_* below
          stats :: counters:counters_ref(),% see ?S_* below
          pids :: tuple(),                 % worker I at element I (undefined until started)
          order :: fifo | filo,
          queue_timeout :: timeout(),
          max :: non_neg_integer() | infinity,
          owner :: pid()}).

%% atomics: the queue's length, the number of idle workers, then worker I's idle flag at
%% ?A_IDLE_FLAG(I) (1 = idle and not yet claimed by a waker).
-define(A_QUEUED, 1).
-define(A_IDLE, 2).
-define(A_IDLE_FLAG(I), (2 + (I))).

%% counters
-define(S_CALLS, 1).      % calls handled
-define(S_CASTS, 2).      % casts handled
-define(S_REJECTED, 3).   % refused with too_many_requests
-define(S_EXPIRED, 4).    % dropped after queue_timeout
-define(S_RERUNS, 5).     % callbacks run again after a conflicting write
-define(S_CRASHES, 6).    % workers that died
-define(S_N, 6).
