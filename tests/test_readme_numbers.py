"""The README's results prose quotes the committed reports, never numbers typed by hand: every decimal it
quotes in "What the tables say" and "What the sweep found" is, rounded to the digits shown, a number of
reports/tables/."""
import re
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"(?<![\w.])[+−-]?\d+\.\d{3,}(?![\w.])")  # three or more decimals: metrics, differences, τ


def numbers(text: str) -> list[str]:
    return [m.replace("−", "-") for m in NUMBER.findall(text)]


#: the results prose of the README: its bold heading, and how many decimals it quotes at least (so a section
#: that lost its body, or a heading that moved, fails instead of passing on nothing)
SECTIONS = {"**What the tables say**": 10, "**What the sweep found**": 5}


def section(heading: str) -> str:
    """The README from `heading` to the next two blank lines or the next heading, whichever comes first."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index(heading)
    ends = [i for i in (readme.find("\n\n\n", start), readme.find("\n#", start)) if i >= 0]
    return readme[start:min(ends, default=len(readme))]


def report_values() -> list[Decimal]:
    files = sorted((ROOT / "reports" / "tables").rglob("*.md"))
    return [Decimal(n) for f in files for n in numbers(f.read_text())]


def quoted_in_reports(quoted: str, values: list[Decimal]) -> bool:
    q = Decimal(quoted)
    step = Decimal(1).scaleb(q.as_tuple().exponent)
    return any(v.quantize(step, rounding=r) == q for v in values for r in (ROUND_HALF_EVEN, ROUND_HALF_UP))


@pytest.mark.parametrize("heading", SECTIONS)
def test_the_results_prose_quotes_only_numbers_of_the_reports(heading):
    quoted = numbers(section(heading))
    assert len(quoted) >= SECTIONS[heading], f"README.md, {heading}: the section was not found whole"
    values = report_values()
    missing = [q for q in quoted if not quoted_in_reports(q, values)]
    assert not missing, (f"README.md, {heading} quotes {missing}, which no table of reports/tables/ holds "
                         "(rounded): rewrite the sentence from the regenerated tables")


def test_the_check_catches_a_number_typed_by_hand():
    values = [Decimal("0.8211"), Decimal("-0.0173"), Decimal("0.0307")]
    assert quoted_in_reports("0.8211", values) and quoted_in_reports("-0.017", values)
    assert quoted_in_reports("0.031", values)
    assert not quoted_in_reports("0.017", values)  # the sign is part of the number
    assert not quoted_in_reports("0.8212", values)
