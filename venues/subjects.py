"""Every NATS subject the paper venue uses, built in one place.

Layout (namespace first, identifiers last; `paper` is the venue name and can be changed so several
simulated venues can share one bus):

    venue.paper.rpc.<method>                       request/reply, one per ccxt call
    venue.paper.ctl.<command>                      control plane: advance, faults, stats, accounts
    venue.paper.chunk.<instance>                   rest of a reply over max_payload (see `venues.chunks`)
    venue.paper.evt.orders.<account>.<SYMBOL>      order updates (watch_orders)
    venue.paper.evt.trades.<account>.<SYMBOL>      our fills (watch_my_trades)
    venue.paper.evt.book.<SYMBOL>                  order book top N (watch_order_book)

`SYMBOL` is the unified symbol made token-safe: `BTC/USDT` -> `BTC-USDT` (reversible, see
`symbol_token`). These subjects deliberately live outside `exec.`, which is execbus's execution log.
"""

from __future__ import annotations

import re

__all__ = [
    "DEFAULT_VENUE",
    "Subjects",
    "symbol_token",
    "token_symbol",
    "check_token",
]

DEFAULT_VENUE = "paper"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def check_token(value: str, what: str) -> str:
    """Refuse anything that is not a single safe NATS token (no dots, wildcards or spaces)."""
    if not _TOKEN.match(value):
        raise ValueError(f"{what} {value!r} must match [A-Za-z0-9_-]+ to be used in a NATS subject")
    return value


def symbol_token(symbol: str) -> str:
    """`BTC/USDT` -> `BTC-USDT`; `-` never occurs in a ccxt spot symbol so the mapping is reversible."""
    return check_token(symbol.replace("/", "-"), "symbol")


def token_symbol(token: str) -> str:
    """Inverse of `symbol_token`."""
    return token.replace("-", "/")


class Subjects:
    """Subject builder for one named venue."""

    def __init__(self, venue: str = DEFAULT_VENUE) -> None:
        self.venue = check_token(venue, "venue name")
        self.prefix = f"venue.{self.venue}"

    def rpc(self, method: str) -> str:
        return f"{self.prefix}.rpc.{check_token(method, 'method')}"

    def ctl(self, command: str) -> str:
        return f"{self.prefix}.ctl.{check_token(command, 'command')}"

    def chunk(self, instance: str) -> str:
        """Where one service instance serves the remaining chunks of its oversized replies."""
        return f"{self.prefix}.chunk.{check_token(instance, 'instance')}"

    def orders(self, account: str, symbol: str | None = None) -> str:
        sym = symbol_token(symbol) if symbol else "*"
        return f"{self.prefix}.evt.orders.{check_token(account, 'account')}.{sym}"

    def trades(self, account: str, symbol: str | None = None) -> str:
        sym = symbol_token(symbol) if symbol else "*"
        return f"{self.prefix}.evt.trades.{check_token(account, 'account')}.{sym}"

    def book(self, symbol: str | None = None) -> str:
        sym = symbol_token(symbol) if symbol else "*"
        return f"{self.prefix}.evt.book.{sym}"
