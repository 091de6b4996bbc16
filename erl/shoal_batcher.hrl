%% The record of a shoal_batcher, kept in persistent_term under ?BATCHER_KEY(Name) by the
%% batcher's accumulator (shoal_batcher_acc), read by push/2 and the handler.
-define(BATCHER_KEY(Name), {shoal_batcher, Name}).

-record(shoal_batcher, {
          acc :: pid(),                        % the accumulator: push/2 sends to it
          pending :: atomics:atomics_ref(),    % 1: batches cut and not yet handled
          max_pending :: pos_integer() | infinity,
          stats :: counters:counters_ref()}).  % see ?B_* below

-define(B_BATCHES, 1).   % batches cut
-define(B_HANDLED, 2).   % batches handled
-define(B_FAILED, 3).    % batches given up after their retries
-define(B_RETRIES, 4).
-define(B_N, 4).
