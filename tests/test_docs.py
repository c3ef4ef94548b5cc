"""The repository stands alone: README and docs/ link only to files inside it
(and to headings that exist), and docs/api.md's reference is what the protos
and /openapi.json say today."""

import re
from pathlib import Path

import pytest

from gateway.errors import HTTP_STATUS_BY_REASON
from scripts import gen_api_docs

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

_FENCED = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_AUTOLINK = re.compile(r"<([a-zA-Z][a-zA-Z0-9+.-]*:[^>\s]*)>")
_BARE_URL = re.compile(r"\b(?:https?|ftp)://[^\s)>\]]+|\bwww\.[^\s)>\]]+")


def links(markdown: str) -> list[str]:
    """Every link target a Markdown renderer (GitHub's) would make, outside code."""
    prose = _INLINE_CODE.sub("", _FENCED.sub("", markdown))
    found = _LINK.findall(prose) + _REFERENCE.findall(prose) + _AUTOLINK.findall(prose)
    without_links = _AUTOLINK.sub("", _LINK.sub("", prose))
    return found + _BARE_URL.findall(without_links)


def anchors(markdown: str) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", _FENCED.sub("", markdown), re.M)
    return {gen_api_docs.anchor(heading.replace("`", "")) for heading in headings}


def test_links_are_found_in_prose_and_not_in_code():
    markdown = (
        "See [the API](docs/api.md#errors), <https://example.com>, www.example.org and\n"
        "[ref]: ../outside.md\n"
        "`[not](a-link.md)` and\n```sh\ncurl http://localhost:30080\n```\n"
    )
    assert sorted(links(markdown)) == ["../outside.md", "docs/api.md#errors", "https://example.com", "www.example.org"]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_link_points_outside_the_repository(document):
    text = document.read_text()
    for target in links(text):
        assert not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//|^www\.", target), f"{target}: outside the repository"
        path_part, _, fragment = target.partition("#")
        linked = (document.parent / path_part).resolve() if path_part else document
        assert linked.is_relative_to(ROOT), f"{target}: outside the repository"
        assert linked.exists(), f"{target}: no such file in the repository"
        if fragment and linked.suffix == ".md":
            assert fragment in anchors(linked.read_text()), f"{target}: no such heading"


def test_the_api_reference_is_what_the_protos_and_openapi_say():
    current = gen_api_docs.API_DOC.read_text()
    assert gen_api_docs.render(current) == current, "run `python -m scripts.gen_api_docs`: docs/api.md is stale"


@pytest.mark.parametrize("reason, status", sorted(HTTP_STATUS_BY_REASON.items()))
def test_every_reason_with_a_status_of_its_own_is_in_the_errors_table(reason, status):
    assert f"| `{reason}` | {status} |" in gen_api_docs.API_DOC.read_text()
