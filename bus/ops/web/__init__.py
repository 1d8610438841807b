"""`execbus web`: the executions as a web page, served by execbus itself (aiohttp; see `server.py`)."""

from bus.ops.web.server import WebServer, command

__all__ = ["WebServer", "command"]
