defmodule Shoal.Face do
  @moduledoc false
  # What the `use` faces of the pool tools (Shoal.Fixed, Shoal.Cron, Shoal.Batcher,
  # Shoal.Tasks, Shoal.Shared) and Shoal.Super share.

  # The instance name a `use` module's functions address: read at compile time from a
  # literal keyword list (so a call costs nothing more), else when it is asked for.
  @doc false
  @spec name_ast(Macro.t()) :: Macro.t()
  def name_ast(opts) do
    if is_list(opts) and Keyword.keyword?(opts) do
      Keyword.get(opts, :name, quote(do: __MODULE__))
    else
      quote(do: Keyword.get(unquote(opts), :name, __MODULE__))
    end
  end

  # The options of `use` (evaluated now, so they may hold funs and runtime values) with the
  # instance's name and the ones given at start over them.
  @doc false
  @spec merge(keyword(), atom(), keyword()) :: keyword()
  def merge(use_opts, name, opts) do
    use_opts |> Keyword.put_new(:name, name) |> Keyword.merge(opts)
  end
end
