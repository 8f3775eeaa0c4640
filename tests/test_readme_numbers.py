"""The results prose quotes the committed reports, never numbers typed by hand: every decimal that the README's
"What the tables say" and "What the sweep found" and notebook 05's "What the generator sweep found" quote is,
rounded to the digits shown, a number of reports/tables/."""
import json
import re
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"(?<![\w.])[+−-]?\d+\.\d{3,}(?![\w.])")  # three or more decimals: metrics, differences, τ


def numbers(text: str) -> list[str]:
    return [m.replace("−", "-") for m in NUMBER.findall(text)]


#: the results prose: (file, its heading) and how many decimals it quotes at least (so a section that lost its
#: body, or a heading that moved, fails instead of passing on nothing)
SECTIONS = {
    ("README.md", "**What the tables say**"): 10,
    ("README.md", "**What the sweep found**"): 5,
    ("notebooks/05_disentanglement.ipynb", "### What the generator sweep found"): 10,
}


def prose(path: str) -> str:
    """A Markdown file's text; a notebook's markdown cells, two blank lines between cells."""
    text = (ROOT / path).read_text()
    if not path.endswith(".ipynb"):
        return text
    cells = json.loads(text)["cells"]
    return "\n\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def section(path: str, heading: str) -> str:
    """`path`'s prose from `heading` to the next two blank lines or the next heading, whichever comes first."""
    text = prose(path)
    start = text.index(heading)
    ends = [i for i in (text.find("\n\n\n", start), text.find("\n#", start)) if i >= 0]
    return text[start:min(ends, default=len(text))]


def report_values() -> list[Decimal]:
    files = sorted((ROOT / "reports" / "tables").rglob("*.md"))
    return [Decimal(n) for f in files for n in numbers(f.read_text())]


def quoted_in_reports(quoted: str, values: list[Decimal]) -> bool:
    q = Decimal(quoted)
    step = Decimal(1).scaleb(q.as_tuple().exponent)
    return any(v.quantize(step, rounding=r) == q for v in values for r in (ROUND_HALF_EVEN, ROUND_HALF_UP))


@pytest.mark.parametrize("path,heading", SECTIONS)
def test_the_results_prose_quotes_only_numbers_of_the_reports(path, heading):
    quoted = numbers(section(path, heading))
    assert len(quoted) >= SECTIONS[path, heading], f"{path}, {heading}: the section was not found whole"
    values = report_values()
    missing = [q for q in quoted if not quoted_in_reports(q, values)]
    assert not missing, (f"{path}, {heading} quotes {missing}, which no table of reports/tables/ holds "
                         "(rounded): rewrite the sentence from the regenerated tables")


def test_the_check_catches_a_number_typed_by_hand():
    values = [Decimal("0.8211"), Decimal("-0.0173"), Decimal("0.0307")]
    assert quoted_in_reports("0.8211", values) and quoted_in_reports("-0.017", values)
    assert quoted_in_reports("0.031", values)
    assert not quoted_in_reports("0.017", values)  # the sign is part of the number
    assert not quoted_in_reports("0.8212", values)
