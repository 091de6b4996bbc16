defmodule ShoalElixirTest.Thumbs do
  @moduledoc "A fixed pool written with `use Shoal.Fixed`; `handle_error/4` and `pool_ready/1` are the defaults."
  use Shoal.Fixed, name: :face_thumbs, size: 3, mode: :round_robin, retry: [count: 1]

  @impl true
  def init(index, _args), do: {:ok, %{index: index, done: 0}}

  @impl true
  def handle_job({:resize, w, h}, s), do: {:reply, {div(w, 2), div(h, 2)}, %{s | done: s.done + 1}}
  def handle_job(:whoami, s), do: {:reply, s.index, s}
  def handle_job({:notify, pid, msg}, s), do: {:deliver, [pid, msg], s}

  def handle_job({:flaky, pid}, s) do
    send(pid, {:attempt, s.index})
    raise "flaky"
  end
end

defmodule ShoalElixirTest.Schedule do
  @moduledoc "A scheduler written with `use Shoal.Cron`, its jobs anonymous functions."
  use Shoal.Cron,
    name: :face_schedule,
    retry: [count: 1],
    jobs: [
      {:beat, 200, fn -> send(:face_schedule_sink, :beat) end},
      {:fails, 200, fn -> raise "no" end}
    ]

  @impl true
  def handle_error(job, attempt, {kind, _reason, _stack}, _state) do
    send(:face_schedule_sink, {:handle_error, job, attempt, kind})
    :halt
  end
end

defmodule ShoalElixirTest.Sink do
  @moduledoc "A batcher written with `use Shoal.Batcher`: batches go to the pid in `args`."
  use Shoal.Batcher, name: :face_sink, limit: 3, timeout: 5_000

  @impl true
  def init(pid), do: {:ok, pid}

  @impl true
  def handle_batch(items, pid) do
    send(pid, {:batch, items})
    {:ok, pid}
  end
end

defmodule ShoalElixirTest.Crawler do
  @moduledoc "A task runner written with `use Shoal.Tasks`."
  use Shoal.Tasks, name: :face_crawler, limit: 2, max_queue: 100
end

defmodule ShoalElixirTest.Stock do
  @moduledoc "A shared-state pool written with `use Shoal.Shared`."
  use Shoal.Shared, name: :face_stock, size: 4, max: 10_000

  @impl true
  def init(stock), do: {:ok, stock}

  @impl true
  def handle_call({:take, item}, _from, stock) do
    case Map.get(stock, item, 0) do
      0 -> {:reply, :sold_out, stock}
      n -> {:reply, :ok, Map.put(stock, item, n - 1)}
    end
  end

  def handle_call({:count, item}, _from, stock), do: {:reply, Map.get(stock, item, 0), stock}
end

defmodule ShoalElixirTest.OpsWorker do
  @moduledoc "A worker whose `init/2` raises for `{:raise, _}` keys, with `format_status/1`."
  use Shoal.Worker

  @impl true
  def init({:raise, _}, _args), do: raise(ArgumentError, "no such account")
  def init(key, _args), do: {:ok, %{key: key, token: "secret"}}

  @impl true
  def handle_call(:get, _from, s), do: {:reply, s, s}

  @impl true
  def format_status(status), do: Map.update!(status, :state, &%{&1 | token: "***"})
end
