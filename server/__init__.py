"""The locked tool surface and the experiment engine behind it. Never imports `harness`."""
