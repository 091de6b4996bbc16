defmodule ShoalElixirTest.MixProject do
  # An Elixir user's project that depends on Shoal by path: Shoal's own mix.exs builds the
  # Erlang application, the Elixir face and the NIF, offline, with nothing to set.
  use Mix.Project

  def project do
    [
      app: :shoal_elixir_test,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: false,
      deps: [{:shoal, path: "../.."}]
    ]
  end

  def application do
    [extra_applications: [:logger]]
  end
end
