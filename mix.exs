defmodule Shoal.MixProject do
  # Shoal as a Mix project: `{:shoal, path: ...}` or `{:shoal, git: ...}` in a user's deps
  # gives the Erlang application (erl/) and the Elixir face (lib/) with one line, offline,
  # with nothing to set. The C NIF is built by `make nif` (the compiler below), the same
  # target rebar3's hook runs; `rebar3 compile` keeps working from rebar.config.
  use Mix.Project

  # One application resource for both build tools: erl/shoal.app.src.
  @app_src (case :file.consult(Path.join(__DIR__, "erl/shoal.app.src")) do
              {:ok, [{:application, :shoal, props}]} -> props
            end)

  def project do
    [
      app: :shoal,
      version: to_string(@app_src[:vsn]),
      description: to_string(@app_src[:description]),
      elixir: "~> 1.14",
      erlc_paths: ["erl"],
      erlc_options: [:debug_info],
      elixirc_paths: ["lib"],
      compilers: [:shoal_nif] ++ Mix.compilers() ++ [:shoal_doc_chunks],
      test_paths: [],
      package: [licenses: Enum.map(@app_src[:licenses], &to_string/1)],
      deps: []
    ]
  end

  def application do
    [
      mod: @app_src[:mod],
      registered: @app_src[:registered],
      extra_applications: @app_src[:applications] -- [:kernel, :stdlib]
    ]
  end
end

defmodule Mix.Tasks.Compile.ShoalNif do
  @moduledoc "Builds Shoal's NIF (priv/shoal_nif.so) with `make nif`, without -Werror."
  use Mix.Task.Compiler

  @impl true
  def run(_args) do
    root = Path.dirname(Mix.Project.project_file())

    if Shoal.MixProject.Make.up_to_date?(root, ["nif", "WERROR="]) do
      {:noop, []}
    else
      Shoal.MixProject.Make.run!(root, ["nif", "WERROR="])
      # Mix links priv/ into _build only when it exists; a fresh clone gets it from make.
      Mix.Project.build_structure()
      {:ok, []}
    end
  end
end

defmodule Mix.Tasks.Compile.ShoalDocChunks do
  @moduledoc "Builds EEP-48 doc chunks of the Erlang modules (`h :shoal.call`) with edoc."
  use Mix.Task.Compiler

  @impl true
  def run(_args) do
    root = Path.dirname(Mix.Project.project_file())
    args = ["doc-chunks", "DOC_DIR=" <> Path.join(Mix.Project.app_path(), "doc")]

    if Shoal.MixProject.Make.up_to_date?(root, args) do
      {:noop, []}
    else
      Shoal.MixProject.Make.run!(root, args)
      {:ok, []}
    end
  end
end

defmodule Shoal.MixProject.Make do
  @moduledoc false

  def up_to_date?(root, args) do
    unless System.find_executable("make") do
      Mix.raise("shoal: `make` and a C compiler are needed to build its NIF " <>
                  "(Debian: apt-get install build-essential erlang-dev)")
    end

    {_, status} = System.cmd("make", ["--no-print-directory", "-q" | args], cd: root)
    status == 0
  end

  def run!(root, args) do
    case System.cmd("make", ["--no-print-directory" | args], cd: root, stderr_to_stdout: true) do
      {out, 0} ->
        Mix.shell().info(out)

      {out, status} ->
        Mix.shell().error(out)
        Mix.raise("shoal: `make #{Enum.join(args, " ")}` failed (exit #{status}) in #{root}")
    end
  end
end
