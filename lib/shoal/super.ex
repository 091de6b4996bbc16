defmodule Shoal.Super do
  @moduledoc """
  One supervisor for groups, chains and standalone workers, added at run time or declared
  up front, on one node or placed over a Shoal cluster: the Elixir face of `:shoal_super`
  (see its docs and `docs/tools.md`, "Groups, chains and standalone workers").

    * **groups**: workers that live and die together (`restart: :one_for_all`) or are
      restarted one by one (`:one_for_one`), each group with its own restart intensity;
      messages to one member, a random member, or all of them;
    * **chains**: pipelines; what a step returns goes to the next step, the last step's
      result to `:on_finish`; bounded (`send_to_chain/4` waits for room, then says
      `{:error, :overloaded}`), auto-scaled per step, and every item accepted reaches
      `:on_finish` exactly once;
    * **standalone workers**, each with its own restart policy.

  The functions are those of `:shoal_super` with the supervisor's name first. Options are
  keyword lists (or maps) at every level, including the nested `workers: [min: 1, max: 4]`
  of a step and `placement: [node: node]`; `nil` stands for Erlang's `:undefined` (in
  `group_workers/2`'s answer, and for `:on_finish` and `:cluster`). Every call returns
  `:ok`, `{:ok, _}` or `{:error, reason}`; an unknown supervisor, group, chain, step or
  worker is `{:error, {:no_such_supervisor | :no_such_group | :no_such_chain |
  :no_such_step | :no_such_worker, id}}`. Messages are plain sends: they never wait.

      {:ok, _} = Shoal.Super.start_link(:shop)
      me = self()
      :ok = Shoal.Super.add_chain(:shop, :orders, on_finish: &send(me, &1), max_queue: 100)
      :ok = Shoal.Super.add_chain_step(:shop, :orders, &(&1 * 2), id: :double)
      :ok = Shoal.Super.add_chain_step(:shop, :orders, {Integer, :to_string, []},
              id: :format, workers: [min: 1, max: 4])
      :ok = Shoal.Super.send_to_chain(:shop, :orders, 21)
      # me receives {:ok, "42"}

      :ok = Shoal.Super.add_group(:shop, :lobby, restart: :one_for_all)
      {:ok, _pid} = Shoal.Super.add_group_worker(:shop, :lobby, {MyApp.Player, :ann}, id: :ann)
      :ok = Shoal.Super.broadcast(:shop, :lobby, {:ping, self()})

  ## Worker and step specs

  A group member or standalone worker (`t:worker_spec/0`) is, as from Erlang, a
  zero-arity fun or `{module, function, args}` (the body of a process started with
  `:proc_lib`, so it gets crash reports and `$ancestors`), or `{:gen_server, module,
  arg}`; and, in Elixir spelling, a GenServer callback module `module` or `{module, arg}`
  (a module that exports `init/1`, e.g. with `use GenServer`): started as
  `GenServer.start_link(module, arg)` would start it (no name; `arg` is `[]` for a bare
  module). Anything else is `{:error, {:bad_worker_spec, spec}}`.

  A chain step (`t:step_spec/0`) is a one-argument fun or `{module, function, args}`
  (called with the data prepended to `args`). It returns `{:next, data}` (pass `data`
  on), `{:drop, reason}`, `{:error, reason}`, `{:stop, reason}` (end this item, and for
  `:stop` the chain), or any other value (passed on as the data). A step that raises is
  run again on the same item once, then the item ends `{:crashed, step, {kind, reason},
  data}`. See `t:outcome/0` for what `:on_finish` gets.

  ## Declared up front, and `use Shoal.Super`

  `start_link/2` (and the child spec) take the declarations in the shapes the run-time
  calls take: `groups: [{group, group_opts, [{worker_spec, worker_opts}]}]`,
  `chains: [{chain, chain_opts, [{step_spec, step_opts}]}]`,
  `workers: [{worker_spec, worker_opts}]`, and `cluster: pool` (the Shoal pool, started
  with `start_host_pool/1` on every node, that hosts members and steps placed on other
  nodes). A bad spec or option in a declaration fails the start with the error the
  run-time call would give (`{:error, {:bad_worker_spec, spec}}`, ...), before anything
  starts; one refused while loading (a duplicate id) with `{:error, {:declaration, what,
  reason}}`, and the supervisor is stopped again.

      defmodule MyApp.Game do
        use Shoal.Super,
          name: :game,
          groups: [{:lobby, [restart: :one_for_all], [{MyApp.Player, [id: :host]}]}],
          chains: [{:events, [on_finish: &MyApp.Stats.outcome/1],
                    [{&MyApp.Events.enrich/1, [id: :enrich, workers: 2]}]}],
          workers: [{MyApp.Janitor, [id: :janitor, restart: :transient]}]
      end

      children = [MyApp.Game]                  # or {MyApp.Game, cluster: :game_hosts}
      :ok = MyApp.Game.send_to_chain(:events, %{type: :join})
      {:ok, [host: pid]} = MyApp.Game.group_workers(:lobby)

  `use Shoal.Super` defines, in the module, `start_link(opts \\\\ [])` and
  `child_spec(opts)` (the options given to `use`, with `opts` over them; a key given at
  start replaces the one of `use`, e.g. the whole `:groups` list), `super_name/0`,
  `stop/0`, and every function below that takes the supervisor's name, without it, on
  the supervisor named by `:name` (default: the module's name). The options of `use` are
  evaluated when the supervisor starts, so they may hold anonymous functions and runtime
  values. `:shoal_super` has no callback module (what you write are the workers' and
  steps' specs), so `use Shoal.Super` sets no behaviour and asks for no callbacks.

  The calls made from inside a group member (`my_group/0`, `send_to_my_group/2`,
  `send_to_random_sibling/1`, `broadcast_to_my_group/1`) address the caller's own group,
  whichever supervisor it belongs to, so they are only here, not in `use` modules.
  """

  @typedoc "A supervisor's name: an atom, under which its top process is registered."
  @type sup :: atom()
  @typedoc "Options: a keyword list or a map."
  @type options :: keyword() | map()
  @typedoc """
  A group member or standalone worker: a zero-arity fun or `{module, function, args}`
  (the process body), `{:gen_server, module, arg}`, or a GenServer callback module
  `module` / `{module, arg}`.
  """
  @type worker_spec ::
          (-> term())
          | {module(), atom(), [term()]}
          | {:gen_server, module(), term()}
          | module()
          | {module(), term()}
  @typedoc "A chain step: a one-argument fun, or `{module, function, args}` (data first)."
  @type step_spec :: (term() -> term()) | {module(), atom(), [term()]}
  @typedoc """
  What `:on_finish` gets for each item the chain accepted, exactly once: `{:ok, result}`,
  `{:dropped, step, reason, data}`, `{:error, step, reason, data}`, `{:crashed, step,
  {kind, reason}, data}`, `{:stopped, step, reason, data}`, or (a worker or node lost
  with `delivery: :at_most_once`) `{:lost, step, reason, entry_data}`.
  """
  @type outcome :: :shoal_super.outcome()
  @typedoc "What a call that only acts answers."
  @type result :: :ok | {:error, term()}

  @default_timeout 5000

  @doc false
  defmacro __using__(opts) do
    name = Shoal.Face.name_ast(opts)

    quote location: :keep do
      @doc false
      def __shoal_options__, do: unquote(opts)

      @doc "The name of the supervisor this module's functions address."
      @spec super_name() :: atom()
      def super_name, do: unquote(name)

      @doc "The child spec of this supervisor: the options given to `use`, `opts` over them."
      @spec child_spec(keyword()) :: Supervisor.child_spec()
      def child_spec(opts \\ []), do: Shoal.Super.child_spec(__shoal_opts__(opts))

      @doc "Starts this supervisor (and what it declares) and links it to the caller."
      @spec start_link(keyword()) :: {:ok, pid()} | {:error, term()}
      def start_link(opts \\ []), do: Shoal.Super.start_link(__shoal_opts__(opts))

      @doc "Stops this supervisor and everything under it (see `Shoal.Super.stop/1`)."
      @spec stop() :: Shoal.Super.result()
      def stop, do: Shoal.Super.stop(super_name())

      @doc "Adds group `group` (see `Shoal.Super.add_group/3`)."
      @spec add_group(term(), Shoal.Super.options()) :: Shoal.Super.result()
      def add_group(group, opts \\ []), do: Shoal.Super.add_group(super_name(), group, opts)

      @doc "Stops group `group` and its members."
      @spec remove_group(term()) :: Shoal.Super.result()
      def remove_group(group), do: Shoal.Super.remove_group(super_name(), group)

      @doc "Starts a member of group `group` (see `Shoal.Super.add_group_worker/4`)."
      @spec add_group_worker(term(), Shoal.Super.worker_spec(), Shoal.Super.options()) ::
              {:ok, pid()} | {:error, term()}
      def add_group_worker(group, spec, opts),
        do: Shoal.Super.add_group_worker(super_name(), group, spec, opts)

      @doc "Stops member `id` of group `group` and forgets it."
      @spec remove_group_worker(term(), term()) :: Shoal.Super.result()
      def remove_group_worker(group, id),
        do: Shoal.Super.remove_group_worker(super_name(), group, id)

      @doc "The members of group `group`: `{:ok, [{id, pid | :restarting | nil}]}`."
      @spec group_workers(term()) :: {:ok, [{term(), pid() | :restarting | nil}]} | {:error, term()}
      def group_workers(group), do: Shoal.Super.group_workers(super_name(), group)

      @doc "Sends `msg` to member `id` of group `group`."
      @spec send_to_group(term(), term(), term()) :: Shoal.Super.result()
      def send_to_group(group, id, msg), do: Shoal.Super.send_to_group(super_name(), group, id, msg)

      @doc "Sends `msg` to a running member of group `group` picked at random."
      @spec send_to_random(term(), term()) :: Shoal.Super.result()
      def send_to_random(group, msg), do: Shoal.Super.send_to_random(super_name(), group, msg)

      @doc "Sends `msg` to every running member of group `group`, waiting for none."
      @spec broadcast(term(), term()) :: Shoal.Super.result()
      def broadcast(group, msg), do: Shoal.Super.broadcast(super_name(), group, msg)

      @doc "Adds chain `chain` (see `Shoal.Super.add_chain/3`)."
      @spec add_chain(term(), Shoal.Super.options()) :: Shoal.Super.result()
      def add_chain(chain, opts \\ []), do: Shoal.Super.add_chain(super_name(), chain, opts)

      @doc "Stops chain `chain`; items still in it are reported `:stopped`."
      @spec remove_chain(term()) :: Shoal.Super.result()
      def remove_chain(chain), do: Shoal.Super.remove_chain(super_name(), chain)

      @doc "Appends a step to chain `chain` (see `Shoal.Super.add_chain_step/4`)."
      @spec add_chain_step(term(), Shoal.Super.step_spec(), Shoal.Super.options()) ::
              Shoal.Super.result()
      def add_chain_step(chain, spec, opts),
        do: Shoal.Super.add_chain_step(super_name(), chain, spec, opts)

      @doc "Sends `data` into chain `chain` at its first step, waiting up to `timeout` for room."
      @spec send_to_chain(term(), term(), timeout()) :: Shoal.Super.result()
      def send_to_chain(chain, data, timeout \\ unquote(@default_timeout)),
        do: Shoal.Super.send_to_chain(super_name(), chain, data, timeout)

      @doc "Sends `data` into chain `chain` at step `step`, waiting up to `timeout` for room."
      @spec send_to_step(term(), term(), term(), timeout()) :: Shoal.Super.result()
      def send_to_step(chain, step, data, timeout \\ unquote(@default_timeout)),
        do: Shoal.Super.send_to_step(super_name(), chain, step, data, timeout)

      @doc "Chain `chain`'s figures (see `Shoal.Super.chain_info/2`)."
      @spec chain_info(term()) :: {:ok, map()} | {:error, term()}
      def chain_info(chain), do: Shoal.Super.chain_info(super_name(), chain)

      @doc "Starts a standalone worker (see `Shoal.Super.add_worker/3`)."
      @spec add_worker(Shoal.Super.worker_spec(), Shoal.Super.options()) ::
              {:ok, pid()} | {:error, term()}
      def add_worker(spec, opts), do: Shoal.Super.add_worker(super_name(), spec, opts)

      @doc "Sends `msg` to standalone worker `id`."
      @spec send_to_worker(term(), term()) :: Shoal.Super.result()
      def send_to_worker(id, msg), do: Shoal.Super.send_to_worker(super_name(), id, msg)

      @doc "Stops standalone worker `id` and forgets it."
      @spec remove_worker(term()) :: Shoal.Super.result()
      def remove_worker(id), do: Shoal.Super.remove_worker(super_name(), id)

      @doc "The standalone workers: `{:ok, [{id, pid}]}`."
      @spec workers() :: {:ok, [{term(), pid()}]} | {:error, term()}
      def workers, do: Shoal.Super.workers(super_name())

      defp __shoal_opts__(opts), do: Shoal.Face.merge(__shoal_options__(), super_name(), opts)
    end
  end

  # --- The supervisor -------------------------------------------------------------------

  @doc """
  The child spec of a supervisor: `{Shoal.Super, name: :game, groups: ..., chains: ...,
  workers: ..., cluster: ...}` (or `{Shoal.Super, :game}`) in your supervisor's children.
  Its id is `{:shoal_super, name}`; it is a supervisor child with `shutdown: :infinity`.
  Raises `ArgumentError` without a `:name`.
  """
  @spec child_spec(sup() | options()) :: Supervisor.child_spec()
  def child_spec(name) when is_atom(name), do: child_spec(name, [])

  def child_spec(opts) do
    case split_name(opts) do
      {:ok, name, rest} -> child_spec(name, rest)
      {:error, reason} -> raise ArgumentError, "Shoal.Super expects name: an atom (#{inspect(reason)})"
    end
  end

  @doc "The child spec of supervisor `name` with options `opts` (see `start_link/2`)."
  @spec child_spec(sup(), options()) :: Supervisor.child_spec()
  def child_spec(name, opts), do: :shoal_super.child_spec(name, super_options(opts))

  @doc """
  Starts a supervisor from options with a `:name` (see `start_link/2` for the others), or
  with no options from its name alone: `start_link(:game)`.
  """
  @spec start_link(sup() | options()) :: {:ok, pid()} | {:error, term()}
  def start_link(name) when is_atom(name), do: start_link(name, [])

  def start_link(opts) do
    case split_name(opts) do
      {:ok, name, rest} -> start_link(name, rest)
      {:error, _} = error -> error
    end
  end

  @doc """
  Starts supervisor `name` (registered locally as `name`) and loads what `opts` declares:
  `groups: [{group, group_opts, [{worker_spec, worker_opts}]}]`, `chains: [{chain,
  chain_opts, [{step_spec, step_opts}]}]`, `workers: [{worker_spec, worker_opts}]`
  (the shapes `add_group/3` + `add_group_worker/4`, `add_chain/3` + `add_chain_step/4`
  and `add_worker/3` take, options as keyword lists), and `cluster: pool`, the Shoal pool
  (started with `start_host_pool/1` on every node) that hosts members and steps placed on
  other nodes. A bad spec or option in a declaration fails the start with the run-time
  call's own error before anything starts; a declaration refused while loading (a
  duplicate id) with `{:error, {:declaration, what, reason}}`, leaving nothing running.
  """
  @spec start_link(sup(), options()) :: {:ok, pid()} | {:error, term()}
  def start_link(name, _opts) when name in [nil, :undefined], do: {:error, {:bad_id, name}}
  def start_link(name, opts), do: :shoal_super.start_link(name, super_options(opts))

  @doc """
  Stops supervisor `name` and everything under it (chains report the items they still
  hold as `:stopped`). Under your own supervisor, use `Supervisor.terminate_child/2`
  instead, or it is restarted.
  """
  @spec stop(sup()) :: result()
  def stop(name), do: :shoal_super.stop(name)

  # --- Groups ---------------------------------------------------------------------------

  @doc """
  Adds group `group`. Options: `:restart` (`:one_for_one`, the default, or
  `:one_for_all`), `:max_restarts` (default 3) within `:max_seconds` (default 5): past
  that the group ends and is forgotten, nothing else is touched; `:placement` (`:local`,
  the default, `:spread` or `[node: node]`: where its members run, see `docs/tools.md`).
  `{:error, {:already_exists, group}}` if there is one.
  """
  @spec add_group(sup(), term(), options()) :: result()
  def add_group(sup, group, opts \\ []), do: :shoal_super.add_group(sup, group, options(opts))

  @doc "Stops group `group` and its members."
  @spec remove_group(sup(), term()) :: result()
  def remove_group(sup, group), do: :shoal_super.remove_group(sup, group)

  @doc """
  Starts a member of group `group` from `spec` (see `t:worker_spec/0`) and returns its
  pid. Options: `:id` (required, unique in the group), `:restart` (`:permanent`, the
  default, `:transient` or `:temporary`), `:shutdown` (ms, default 5000), `:placement`
  (default: the group's). Starting it restarts no other member.
  """
  @spec add_group_worker(sup(), term(), worker_spec(), options()) :: {:ok, pid()} | {:error, term()}
  def add_group_worker(sup, group, spec, opts),
    do: :shoal_super.add_group_worker(sup, group, worker_spec(spec), options(opts))

  @doc "Stops member `id` of group `group` and forgets it; no other member is restarted."
  @spec remove_group_worker(sup(), term(), term()) :: result()
  def remove_group_worker(sup, group, id), do: :shoal_super.remove_group_worker(sup, group, id)

  @doc """
  The members of group `group`, in the order they were added: `{:ok, [{id, pid |
  :restarting | nil}]}` (`nil`: a `:transient` member that ended normally and stays
  down).
  """
  @spec group_workers(sup(), term()) :: {:ok, [{term(), pid() | :restarting | nil}]} | {:error, term()}
  def group_workers(sup, group) do
    case :shoal_super.group_workers(sup, group) do
      {:ok, members} -> {:ok, for({id, pid} <- members, do: {id, nil_for_undefined(pid)})}
      error -> error
    end
  end

  @doc """
  Sends `msg` to member `id` of group `group` (a plain send). `{:error, {:not_running,
  id}}` while a local member is being restarted.
  """
  @spec send_to_group(sup(), term(), term(), term()) :: result()
  def send_to_group(sup, group, id, msg), do: :shoal_super.send_to_group(sup, group, id, msg)

  @doc """
  Sends `msg` to a running member of group `group` picked at random; `{:error,
  :no_workers}` if none is running.
  """
  @spec send_to_random(sup(), term(), term()) :: result()
  def send_to_random(sup, group, msg), do: :shoal_super.send_to_random(sup, group, msg)

  @doc "Sends `msg` to every running member of group `group`; returns at once."
  @spec broadcast(sup(), term(), term()) :: result()
  def broadcast(sup, group, msg), do: :shoal_super.broadcast(sup, group, msg)

  # --- From inside a group member -------------------------------------------------------

  @doc """
  The group the calling member belongs to: `{:ok, %{sup: sup, owner: node, group: group,
  id: id}}` (`owner`: the node of the supervisor), or `{:error, :not_a_group_member}`. A
  GenServer member can use this (and the calls below) once its `init/1` has returned.
  """
  @spec my_group() :: {:ok, %{sup: sup(), owner: node(), group: term(), id: term()}} |
                        {:error, :not_a_group_member}
  def my_group, do: :shoal_super.my_group()

  @doc "From inside a member: sends `msg` to member `id` of my group."
  @spec send_to_my_group(term(), term()) :: result()
  def send_to_my_group(id, msg), do: :shoal_super.send_to_my_group(id, msg)

  @doc """
  From inside a member: sends `msg` to another running member of my group, at random;
  `{:error, :no_workers}` if I am alone.
  """
  @spec send_to_random_sibling(term()) :: result()
  def send_to_random_sibling(msg), do: :shoal_super.send_to_random_sibling(msg)

  @doc "From inside a member: sends `msg` to every running member of my group (me included)."
  @spec broadcast_to_my_group(term()) :: result()
  def broadcast_to_my_group(msg), do: :shoal_super.broadcast_to_my_group(msg)

  # --- Chains ---------------------------------------------------------------------------

  @doc """
  Adds chain `chain` (steps come with `add_chain_step/4`). Options: `:on_finish` (a fun
  of one argument or `{m, f, a}`, called with each item's `t:outcome/0`; default `nil`),
  `:max_queue` (items in the chain at once, default 1000: `send_to_chain/4` waits for
  room beyond that), `:dispatch` (how a step's workers share items: `:round_robin`, the
  default, `:random`, `:hash` (of the data) or `:broadcast`), `:delivery`
  (`:at_most_once`, the default, or `:at_least_once`: what happens to the items of a
  worker that dies), `:restart` (`:one_for_one` or `:one_for_all`, for exits of worker
  processes), `:max_restarts` (default 10) within `:max_seconds` (default 5),
  `:placement` (default `:local`).
  """
  @spec add_chain(sup(), term(), options()) :: result()
  def add_chain(sup, chain, opts \\ []), do: :shoal_super.add_chain(sup, chain, options(opts))

  @doc "Stops chain `chain`; items still in it are reported `:stopped` to `:on_finish`."
  @spec remove_chain(sup(), term()) :: result()
  def remove_chain(sup, chain), do: :shoal_super.remove_chain(sup, chain)

  @doc """
  Appends a step to chain `chain` (see `t:step_spec/0` for what it returns). Options:
  `:id` (required), `:workers` (a count, default 1, or `[min: min, max: max]` to
  auto-scale, with optional `:scale_up_queue` (default 4 queued items per worker),
  `:scale_interval` (ms, default 100) and `:idle_after` (ms, default 2000)), `:dispatch`
  and `:placement` (default: the chain's).
  """
  @spec add_chain_step(sup(), term(), step_spec(), options()) :: result()
  def add_chain_step(sup, chain, spec, opts),
    do: :shoal_super.add_chain_step(sup, chain, spec, options(opts))

  @doc """
  Sends `data` into chain `chain` at its first step. When the chain holds `:max_queue`
  items, waits up to `timeout` ms for room, then returns `{:error, :overloaded}` (the item
  was not taken). `:ok` means the item will reach `:on_finish`.
  """
  @spec send_to_chain(sup(), term(), term(), timeout()) :: result()
  def send_to_chain(sup, chain, data, timeout \\ @default_timeout),
    do: :shoal_super.send_to_chain(sup, chain, data, timeout)

  @doc """
  Sends `data` into chain `chain` at step `step` (the steps before it are skipped);
  back-pressure as `send_to_chain/4`.
  """
  @spec send_to_step(sup(), term(), term(), term(), timeout()) :: result()
  def send_to_step(sup, chain, step, data, timeout \\ @default_timeout),
    do: :shoal_super.send_to_step(sup, chain, step, data, timeout)

  @doc """
  Chain `chain`'s figures: `{:ok, %{chain:, in_flight:, max_queue:, delivery:, status:,
  steps: [%{id:, workers:, min:, max:, queue:, throughput:, processed:, nodes:, dispatch:,
  placement:}]}}`. `:queue` is the items waiting at the step, `:throughput` the items per
  second it handled over the last sample, `:processed` its total.
  """
  @spec chain_info(sup(), term()) :: {:ok, map()} | {:error, term()}
  def chain_info(sup, chain), do: :shoal_super.chain_info(sup, chain)

  # --- Standalone workers ---------------------------------------------------------------

  @doc """
  Starts a standalone worker from `spec` (see `t:worker_spec/0`) and returns its pid.
  Options: `:id` (required), `:restart` (`:permanent`, the default, `:transient` or
  `:temporary`), `:max_restarts` (default 3) within `:max_seconds` (default 5),
  `:shutdown` (ms, default 5000). Its crashes restart it alone; past its intensity it
  ends and is forgotten, alone.
  """
  @spec add_worker(sup(), worker_spec(), options()) :: {:ok, pid()} | {:error, term()}
  def add_worker(sup, spec, opts), do: :shoal_super.add_worker(sup, worker_spec(spec), options(opts))

  @doc "Sends `msg` to standalone worker `id`; `{:error, {:not_running, id}}` while it restarts."
  @spec send_to_worker(sup(), term(), term()) :: result()
  def send_to_worker(sup, id, msg), do: :shoal_super.send_to_worker(sup, id, msg)

  @doc "Stops standalone worker `id` and forgets it."
  @spec remove_worker(sup(), term()) :: result()
  def remove_worker(sup, id), do: :shoal_super.remove_worker(sup, id)

  @doc "The running standalone workers: `{:ok, [{id, pid}]}`."
  @spec workers(sup()) :: {:ok, [{term(), pid()}]} | {:error, term()}
  def workers(sup), do: :shoal_super.workers(sup)

  # --- The cluster ----------------------------------------------------------------------

  @doc """
  Starts Shoal pool `pool` on this node as a host of group members and chain steps placed
  on other nodes: call it on every node of the cluster, then give `cluster: pool` to the
  supervisors that place work on other nodes. `:ok` if it runs already.
  """
  @spec start_host_pool(atom()) :: result()
  def start_host_pool(pool), do: :shoal_super.start_host_pool(pool)

  # --- From Elixir spelling to the Erlang shapes ----------------------------------------
  # What is not in a shape we translate goes through as it is, so that the Erlang side
  # gives its own `{:error, ...}` answer (bad_options, bad_worker_spec, bad_declaration).

  defp split_name(opts) when is_list(opts) or is_map(opts) do
    case Shoal.options(opts) do
      %{name: name} = map -> {:ok, name, Map.delete(map, :name)}
      %{} -> {:error, {:missing_option, :name}}
      other -> {:error, {:bad_options, other}}
    end
  end

  defp split_name(other), do: {:error, {:bad_options, other}}

  defp super_options(opts) do
    case Shoal.options(opts) do
      %{} = map ->
        map
        |> update(:groups, &each(&1, fn decl -> group_declaration(decl) end))
        |> update(:chains, &each(&1, fn decl -> chain_declaration(decl) end))
        |> update(:workers, &each(&1, fn decl -> worker_declaration(decl) end))
        |> update(:cluster, &undefined_for_nil/1)

      other ->
        other
    end
  end

  defp group_declaration({group, opts, members}),
    do: {group, options(opts), each(members, &worker_declaration/1)}

  defp group_declaration(other), do: other

  defp chain_declaration({chain, opts, steps}),
    do: {chain, options(opts), each(steps, fn {spec, o} -> {spec, options(o)}; other -> other end)}

  defp chain_declaration(other), do: other

  defp worker_declaration({spec, opts}), do: {worker_spec(spec), options(opts)}
  defp worker_declaration(other), do: other

  # The options of a group, member, chain, step or worker: keyword lists become maps,
  # nested ones too (`placement: [node: n]`, a step's `workers: [min: 1, max: 4]`).
  defp options(opts) do
    case Shoal.options(opts) do
      %{} = map ->
        map
        |> update(:placement, &Shoal.options/1)
        |> update(:workers, &Shoal.options/1)
        |> update(:on_finish, &undefined_for_nil/1)

      other ->
        other
    end
  end

  defp worker_spec({mod, arg} = spec) when is_atom(mod) do
    if gen_server?(mod), do: {:gen_server, mod, arg}, else: spec
  end

  defp worker_spec(mod) when is_atom(mod) do
    if gen_server?(mod), do: {:gen_server, mod, []}, else: mod
  end

  defp worker_spec(spec), do: spec

  defp gen_server?(mod), do: Code.ensure_loaded?(mod) and function_exported?(mod, :init, 1)

  defp update(map, key, fun) do
    case map do
      %{^key => value} -> %{map | key => fun.(value)}
      _ -> map
    end
  end

  defp each(list, fun) when is_list(list) do
    if proper_list?(list), do: Enum.map(list, fun), else: list
  end

  defp each(other, _fun), do: other

  defp proper_list?([]), do: true
  defp proper_list?([_ | tail]), do: proper_list?(tail)
  defp proper_list?(_), do: false

  defp undefined_for_nil(nil), do: :undefined
  defp undefined_for_nil(value), do: value

  defp nil_for_undefined(:undefined), do: nil
  defp nil_for_undefined(value), do: value
end
