"""The strategy registry is the one list: the params union, the CLI, the schema, the quality benchmark and the
README's table all agree with it, and the supervisor (the generic driver) names no strategy."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import msgspec

from actors.strategies import STRATEGIES
from messages import PARAMS_BY_STRATEGY, SubmitIntent, json_schema

ROOT = Path(__file__).resolve().parents[2]


def test_every_registered_strategy_has_its_params_in_the_union_and_nothing_else_is_there() -> None:
    assert set(STRATEGIES) == set(PARAMS_BY_STRATEGY)
    for name, strategy in STRATEGIES.items():
        assert strategy.name == name and strategy.Params is PARAMS_BY_STRATEGY[name]


def test_no_strategy_name_appears_in_the_supervisors_code() -> None:
    """Not as a string, not in a name or comment: what a strategy does is in its own module."""
    source = (ROOT / "actors" / "supervisor.py").read_text()
    tree = ast.parse(source)
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    for name in STRATEGIES:
        assert name not in strings, f"the supervisor compares with {name!r}"
        words = {w for w in re.findall(r"[a-z_]+", source.lower())}
        assert name not in words - {"market"}, f"the supervisor names {name!r}"
    # `market` is also the fallback actor's and an order type's word: only its use as a strategy counts.
    assert "strategy ==" not in source and "strategy !=" not in source and ".strategy in" not in source


def test_the_cli_offers_exactly_the_registered_strategies() -> None:
    from bus.ops import cli

    parser = cli.build_parser() if hasattr(cli, "build_parser") else cli._parser()  # type: ignore[attr-defined]
    submit = next(
        a for a in parser._subparsers._group_actions[0].choices["submit"]._actions  # type: ignore[union-attr]
        if "--strategy" in a.option_strings
    )
    assert list(submit.choices) == list(STRATEGIES)


def test_the_schema_describes_every_strategys_params() -> None:
    defs = json_schema()["$defs"]
    for params in PARAMS_BY_STRATEGY.values():
        assert params.__name__ in defs, params.__name__
    fields = defs["SubmitIntent"]["properties"]
    assert "params" in fields and "strategy" in fields


def test_the_quality_benchmark_has_a_variant_per_strategy_with_valid_params() -> None:
    from decimal import Decimal

    from bench import quality
    from messages import params_for

    catalogue = quality._variants(13.0)
    for name in STRATEGIES:
        variant = catalogue[name]
        for qty in (Decimal("0.01"), Decimal("10")):
            params_for(name, quality.variant_params(variant, 13.0, qty), strict=False)
    assert "twap" in quality.DEFAULT_VARIANTS


def test_the_readmes_strategy_table_is_the_registry() -> None:
    text = (ROOT / "README.md").read_text()
    table = text.split("<!-- strategies:begin", 1)[1].split("<!-- strategies:end", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    found = {}
    for row in rows:
        name, summary, params = (cell.strip() for cell in row.strip("|").split("|"))
        found[name.strip("`")] = (summary, [p.strip("` ") for p in params.split(",")])
    assert list(found) == list(STRATEGIES)
    for name, strategy in STRATEGIES.items():
        summary, params = found[name]
        assert summary == strategy.summary, name
        assert params == [f for f in strategy.Params.__struct_fields__ if f != "strategy"], name


def test_a_strategys_parameter_on_another_strategys_intent_fails_naming_it() -> None:
    from messages import InvalidMessage, decode

    raw = msgspec.json.encode(
        {"type": "SubmitIntent", "intent_id": "x", "venue": "paper", "symbol": "BTC/USDT", "side": "buy",
         "qty": "1", "strategy": "market", "params": {"slices": 4}}
    )
    try:
        decode(raw)
    except InvalidMessage as exc:
        assert exc.field == "params.slices"
    else:
        raise AssertionError("decoded")
    ok = decode(msgspec.json.encode(
        {"type": "SubmitIntent", "intent_id": "x", "venue": "paper", "symbol": "BTC/USDT", "side": "buy",
         "qty": "1", "strategy": "twap", "params": {"slices": 4}}
    ))
    assert isinstance(ok, SubmitIntent) and ok.strategy == "twap" and ok.params.slice_count == 4  # type: ignore[union-attr]


def test_the_readmes_smallest_strategy_is_a_working_one() -> None:
    """The example the README gives for adding a strategy runs as it is written."""
    from decimal import Decimal

    import actors.strategies.base as base
    import messages.strategies as params_module
    from messages import PriceQuoted

    text = (ROOT / "README.md").read_text()
    example = text.split("The smallest one:", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {"Decimal": Decimal, "StrategyParams": params_module.StrategyParams}
    namespace.update({name: getattr(base, name) for name in base.__all__})
    exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102 - our own README's code
    hold, params_type = namespace["STRATEGY"], namespace["HoldParams"]
    try:
        params = params_type(price=Decimal("100"))  # type: ignore[operator]
        view = base.View(side="buy", qty=Decimal(1), filled=Decimal(0), now_ns=0, accepted_ns=0,
                         deadline_ns=hold.budget_ns(params), attempt=0)  # type: ignore[attr-defined]
        quote = PriceQuoted(intent_id="x", venue="paper", symbol="BTC/USDT", attempt=0, side="buy", mode="arrival",
                            price=Decimal(100), bid=Decimal(100), ask=Decimal("100.01"), tick_size=Decimal("0.01"))
        first = hold.decide(params, view, base.Arrived(quote))  # type: ignore[attr-defined]
        assert first == base.Place(attempt=1, order_type="limit", price=Decimal(100), deadline_ns=30 * base.NS)
        assert hold.decide(params, view, base.AttemptExpired()) == base.CancelWorking()  # type: ignore[attr-defined]
        assert isinstance(hold.decide(params, view, base.AllFinal()), base.Finish)  # type: ignore[attr-defined]
    finally:
        # The example's params class registered itself as a subclass: it must not leak into other tests.
        assert params_type not in params_module.STRATEGY_PARAMS  # (the union was built at import, before it)
