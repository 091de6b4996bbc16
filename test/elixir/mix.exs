defmodule ShoalElixirTest.MixProject do
  # An Elixir user's project that depends on Shoal by path. Shoal is a rebar3 project, so
  # mix compiles it with rebar3; point MIX_REBAR3 at Debian's rebar3 (scripts/elixir_test.sh
  # does) because `mix local.rebar` would download one.
  use Mix.Project

  def project do
    [
      app: :shoal_elixir_test,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: false,
      deps: [{:shoal, path: "../..", manager: :rebar3}]
    ]
  end

  def application do
    [extra_applications: [:logger]]
  end
end
