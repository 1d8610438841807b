"""The execbus contract: every message, every subject, one codec. Imports nothing else from execbus.

Each module names what it defines in its `__all__`; this package re-exports them, and the codec collects
the message kinds from the same lists, so a message is listed once, where it is defined."""

from messages import base, codec, controls, intents, ops, orders, pricing, strategies
from messages.base import *  # noqa: F403
from messages.codec import *  # noqa: F403
from messages.controls import *  # noqa: F403
from messages.intents import *  # noqa: F403
from messages.ops import *  # noqa: F403
from messages.orders import *  # noqa: F403
from messages.pricing import *  # noqa: F403
from messages.strategies import *  # noqa: F403

__all__ = [
    name
    for module in (base, codec, controls, intents, ops, orders, pricing, strategies)
    for name in module.__all__
]
