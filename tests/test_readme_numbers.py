"""The README's results prose quotes the committed reports, never numbers typed by hand: every decimal it
quotes in "What the tables say" is, rounded to the digits shown, a number of reports/tables/."""
import re
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"(?<![\w.])[+−-]?\d+\.\d{3,}(?![\w.])")  # three or more decimals: metrics, differences, τ


def numbers(text: str) -> list[str]:
    return [m.replace("−", "-") for m in NUMBER.findall(text)]


def what_the_tables_say() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("**What the tables say**")
    return readme[start:readme.index("\n\n\n", start)]


def report_values() -> list[Decimal]:
    files = sorted((ROOT / "reports" / "tables").rglob("*.md"))
    return [Decimal(n) for f in files for n in numbers(f.read_text())]


def quoted_in_reports(quoted: str, values: list[Decimal]) -> bool:
    q = Decimal(quoted)
    step = Decimal(1).scaleb(q.as_tuple().exponent)
    return any(v.quantize(step, rounding=r) == q for v in values for r in (ROUND_HALF_EVEN, ROUND_HALF_UP))


def test_the_results_prose_quotes_only_numbers_of_the_reports():
    prose = what_the_tables_say()
    quoted = numbers(prose)
    assert len(quoted) >= 10, "the section was not found whole"
    values = report_values()
    missing = [q for q in quoted if not quoted_in_reports(q, values)]
    assert not missing, (f"README.md, 'What the tables say' quotes {missing}, which no table of reports/tables/ holds "
                         "(rounded): rewrite the sentence from the regenerated tables")


def test_the_check_catches_a_number_typed_by_hand():
    values = [Decimal("0.8211"), Decimal("-0.0173"), Decimal("0.0307")]
    assert quoted_in_reports("0.8211", values) and quoted_in_reports("-0.017", values)
    assert quoted_in_reports("0.031", values)
    assert not quoted_in_reports("0.017", values)  # the sign is part of the number
    assert not quoted_in_reports("0.8212", values)
