defmodule ShoalElixirTest.CounterWorker do
  @moduledoc """
  A Shoal worker written in Elixir: one counter per key.

  `args` is a keyword list:
    * `:test_pid` - receives `{:loaded, key}`, `{:idle, key}`, `{:terminated, key, reason}`
    * `:fail_load` - keys whose `load/2` returns `{:error, :no_such_account}`
    * `:keep_idle` - keys whose `idle/1` vetoes the offload
  """
  @behaviour :shoal_worker

  defstruct key: nil, count: 0, loaded: false, args: []

  @impl true
  def init(key, args), do: {:ok, %__MODULE__{key: key, args: args || []}}

  @impl true
  def load(key, state) do
    notify(state, {:loaded, key})

    if key in Keyword.get(state.args, :fail_load, []) do
      {:error, :no_such_account}
    else
      {:ok, %{state | loaded: true}}
    end
  end

  @impl true
  def idle(state) do
    notify(state, {:idle, state.key})
    if state.key in Keyword.get(state.args, :keep_idle, []), do: {:keep, state}, else: {:offload, state}
  end

  @impl true
  def handle_call(:get, _from, state), do: {:reply, state.count, state}
  def handle_call(:loaded?, _from, state), do: {:reply, state.loaded, state}
  def handle_call({:add, n}, _from, state), do: {:reply, state.count + n, %{state | count: state.count + n}}
  def handle_call(:self, _from, state), do: {:reply, self(), state}
  def handle_call(:stop, _from, state), do: {:stop, :normal, :ok, state}
  def handle_call(:crash, _from, _state), do: raise("boom")

  def handle_call({:sleep, ms}, _from, state) do
    Process.sleep(ms)
    {:reply, :ok, state}
  end

  @impl true
  def handle_cast({:add, n}, state), do: {:noreply, %{state | count: state.count + n}}

  @impl true
  def handle_info({:add, n}, state), do: {:noreply, %{state | count: state.count + n}}
  def handle_info(_msg, state), do: {:noreply, state}

  @impl true
  def terminate(reason, state) do
    notify(state, {:final_count, state.key, state.count})
    notify(state, {:terminated, state.key, reason})
    :ok
  end

  defp notify(state, msg) do
    case Keyword.get(state.args, :test_pid) do
      nil -> :ok
      pid -> send(pid, msg)
    end
  end
end
