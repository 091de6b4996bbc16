defmodule ShoalElixirTest.Player do
  @moduledoc """
  A group member (or standalone worker) written as a plain `use GenServer` module: it
  answers pings with its id in its group, reaches its group from inside, crashes on
  `:crash` and ends normally on `:done`.
  """
  use GenServer

  @impl true
  def init(label), do: {:ok, label}

  @impl true
  def handle_call(:label, _from, label), do: {:reply, label, label}

  @impl true
  def handle_info({:ping, from}, label) do
    send(from, {:pong, my_id(), self()})
    {:noreply, label}
  end

  def handle_info({:whoami, from}, label) do
    send(from, {:me, Shoal.Super.my_group(), label})
    {:noreply, label}
  end

  def handle_info({:ping_sibling, from}, label) do
    send(from, {:sent, Shoal.Super.send_to_random_sibling({:ping, from})})
    {:noreply, label}
  end

  def handle_info({:ping_member, id, from}, label) do
    send(from, {:sent, Shoal.Super.send_to_my_group(id, {:ping, from})})
    {:noreply, label}
  end

  def handle_info({:ping_all, from}, label) do
    send(from, {:sent, Shoal.Super.broadcast_to_my_group({:ping, from})})
    {:noreply, label}
  end

  def handle_info(:crash, _label), do: raise("player crashed")
  def handle_info(:done, label), do: {:stop, :normal, label}

  defp my_id do
    case Shoal.Super.my_group() do
      {:ok, %{id: id}} -> id
      {:error, _} -> :standalone
    end
  end
end

defmodule ShoalElixirTest.SuperBodies do
  @moduledoc "Process bodies and step functions given to `Shoal.Super` as `{m, f, a}`."

  @doc "A process body: answers `{:ping, from}` with `{:pong, tag, self()}`, forever."
  def echo(tag) do
    receive do
      {:ping, from} -> send(from, {:pong, tag, self()})
    end

    echo(tag)
  end

  @doc "A step: `n` doubled."
  def double(n), do: n * 2

  @doc "A step given as `{m, f, a}`: the data first, then the extra arguments."
  def tag(data, tag), do: {tag, data}
end

defmodule ShoalElixirTest.Game do
  @moduledoc """
  A supervisor written with `use Shoal.Super`: a `one_for_all` group of GenServer members,
  another group, a chain whose outcomes go to the process registered as
  `:face_game_outcomes`, and a standalone fun worker.
  """
  alias ShoalElixirTest.{Player, SuperBodies}

  use Shoal.Super,
    name: :face_game,
    groups: [
      {:lobby, [restart: :one_for_all, max_restarts: 10, max_seconds: 5],
       [{{Player, :host}, [id: :host]}, {Player, [id: :guest]}]},
      {:arena, [], [{{SuperBodies, :echo, [:referee]}, [id: :referee]}]}
    ],
    chains: [
      {:scores, [max_queue: 50, on_finish: fn outcome -> send(:face_game_outcomes, outcome) end],
       [
         {&SuperBodies.double/1, [id: :double, workers: 2]},
         {{SuperBodies, :tag, [:score]}, [id: :tag]}
       ]}
    ],
    workers: [{fn -> SuperBodies.echo(:janitor) end, [id: :janitor, restart: :transient]}]
end
