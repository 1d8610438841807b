"""Operator tools built on the bus: the `execbus` command line (`cli`), `execbus up` (`system`: embedded
NATS, the paper venue and every actor in one process), the demo, replay of the message log, redrive, the
virtual-time simulation (`sim`), start-up reconciliation with the venues (`startup`), the submit-and-wait
client (`client`) and the terminal report (`report`).

Nothing in the runtime (`bus/*.py`: connections, the embedded server, streams, KV, the actor runtime)
imports this package; it imports the runtime, never the reverse (tests/unit/test_layout.py checks it).
"""
