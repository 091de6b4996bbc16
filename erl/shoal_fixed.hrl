%% The dispatch record of a shoal_fixed pool, kept in persistent_term under ?FIXED_KEY(Name)
%% by the pool's table owner (shoal_fixed_table) and read by every caller (shoal_fixed).
-define(FIXED_KEY(Name), {shoal_fixed, Name}).

-record(shoal_fixed, {
          name :: atom(),
          size :: pos_integer(),                 % configured number of workers
          mode :: shoal_fixed:mode(),
          slots :: tuple(),                      % element Index+1: the worker's pid, or
                                                 % undefined once it exited for good
          live :: tuple(),                       % the pids that take work now, by index
          rr :: atomics:atomics_ref(),           % the round-robin counter
          stats :: counters:counters_ref(),      % see ?ST_* below
          owner :: pid(),                        % the table owner
          sup :: pid()}).                        % the pool's top supervisor

%% Counters in #shoal_fixed.stats.
-define(ST_DONE, 1).      % jobs that completed
-define(ST_FAILED, 2).    % jobs that failed for good
-define(ST_RETRIES, 3).   % retries run
-define(ST_RESTARTS, 4).  % workers restarted after a crash
-define(ST_EXITED, 5).    % workers that left for good ({exit, S})
-define(ST_N, 5).

%% A job as it travels to a worker (a call's request or a cast's message).
-define(JOB(Job), {'$shoal_job', Job}).
