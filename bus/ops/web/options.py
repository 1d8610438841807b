"""What the web server and its app share (a module of its own: the app imports aiohttp, the server only when
it starts one, so neither imports the other at load time)."""

DEFAULT_LOOKBACK_S = 3600.0
"""How much of the log the board reads back when the server starts (what was in flight, recent results)."""
