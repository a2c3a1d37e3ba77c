"""Table names in pipeline files: plain, double-quoted and backtick-quoted parts (cdc.names)."""

from __future__ import annotations

import pytest

from cdc import names


@pytest.mark.parametrize(
    ("written", "parts", "canonical"),
    [
        ("public.orders", ("public", "orders"), "public.orders"),
        ('"public"."orders"', ("public", "orders"), "public.orders"),
        ("`shop`.`orders`", ("shop", "orders"), "shop.orders"),
        ("public.Orders", ("public", "Orders"), "public.Orders"),  # never case-folded
        ('"my schema"."a.b"', ("my schema", "a.b"), '"my schema"."a.b"'),
        # Debezium's own fixture
        ('"Quoted_"" . Schema"."Quoted_"" . Table"', ('Quoted_" . Schema', 'Quoted_" . Table'),
         '"Quoted_"" . Schema"."Quoted_"" . Table"'),
        ("`my db`.`it``s`", ("my db", "it`s"), '"my db"."it`s"'),
        ('public."x"', ("public", "x"), "public.x"),
    ],
)
def test_names_split_into_raw_parts_and_have_one_canonical_form(
    written: str, parts: tuple[str, str], canonical: str
) -> None:
    assert names.split(written) == parts
    assert names.canonical(written) == canonical
    assert names.split(canonical) == parts  # the canonical form reads back the same
    assert names.join(*parts) == canonical


@pytest.mark.parametrize(
    "bad",
    ["orders", "a.b.c", "a b.c", '"a.b', 'a."b', '"".x', "a.", ".a", 'a"b.c', "public. orders", ""],
)
def test_ambiguous_or_broken_names_are_refused_with_a_reason(bad: str) -> None:
    problem = names.problem(bad)
    assert problem is not None and problem.startswith(f"{bad!r} is not schema.table: ")
    with pytest.raises(names.TableNameError):
        names.split(bad)
