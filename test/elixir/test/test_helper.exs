# Shoal is a plain OTP application; the test project does not start it for us.
{:ok, _} = Application.ensure_all_started(:shoal)
ExUnit.start()
