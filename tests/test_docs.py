"""Every Python block of the README and of the docs pages runs, as written, against a
local emulator: a snippet a user copies must work.

Each ```` ```python ```` block is written to a file and run in a fresh interpreter, with
what it needs from outside put in place first:

- ``https://cp.example`` (the docs' control plane) is replaced by the URL of an emulator
  started for the test, whose bootstrap token is ``bootstrap-token``;
- ``https://example.com/stream`` (the docs' public event stream) by a loopback stream
  that sends three events per connection;
- ``ca.pem``, ``node.pem`` and ``node.key`` (a test CA and a client certificate) are in
  the snippet's directory;
- the environment carries ``PLEXD_BASE_URL``, ``PLEXD_BOOTSTRAP_TOKEN``, and a node
  registered beforehand (``PLEXD_NODE_ID``, ``PLEXD_TOKEN``);
- the emulator publishes a ``node_state_updated`` event to every registered node every
  50 ms, so a snippet that handles one event and stops does stop.

An HTML comment on the line before a block says how else to treat it:
``<!-- docs-test: pytest -->`` runs it as a test module under pytest (its own asyncio mode
is in the block), ``<!-- docs-test: skip: why -->`` leaves it out (say why).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import pytest
import trustme

from _programs import run, world

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(
    r"(?:^<!-- docs-test: (?P<directive>[^>]*?) -->\n)?^```python\n(?P<code>.*?)^```",
    re.MULTILINE | re.DOTALL,
)


@dataclasses.dataclass(frozen=True)
class Snippet:
    """One Python block of a page."""

    page: Path
    line: int
    directive: str
    code: str

    @property
    def name(self) -> str:
        """``page:line``, the test's id."""
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def snippets() -> list[Snippet]:
    """Every Python block of every page, in page order."""
    found = []
    for page in PAGES:
        if not page.exists():
            continue
        text = page.read_text()
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start("code"))
            found.append(Snippet(page, line, match["directive"] or "", match["code"]))
    return found


def test_the_pages_have_python_blocks_to_run() -> None:
    # The pattern itself: a README whose blocks the regex no longer sees would pass every
    # parametrized test below by having none.
    runnable = [s for s in snippets() if not s.directive.startswith("skip")]
    assert len(runnable) >= 5, [s.name for s in snippets()]


def certificates(where: Path) -> None:
    """``ca.pem``, ``node.pem`` and ``node.key`` (a client certificate of that CA), for
    the snippets that load files of the user's own."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    node = ca.issue_cert("node.example")
    node.cert_chain_pems[0].write_to_path(str(where / "node.pem"))
    node.private_key_pem.write_to_path(str(where / "node.key"))


@pytest.mark.parametrize("snippet", snippets(), ids=lambda s: s.name)
async def test_snippet_runs(snippet: Snippet, tmp_path: Path) -> None:
    if snippet.directive.startswith("skip"):
        pytest.skip(snippet.directive)
    certificates(tmp_path)
    async with world(publish_every=0.05) as here:
        code = snippet.code.replace("https://cp.example", here.emulator.url)
        code = code.replace("https://example.com/stream", here.stream_url)
        if snippet.directive == "pytest":
            (tmp_path / "test_snippet.py").write_text(code)
            argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-W", "error",
                    "-o", "asyncio_default_fixture_loop_scope=function"]  # fmt: skip
        elif snippet.directive:
            pytest.fail(f"unknown docs-test directive {snippet.directive!r}")
        else:
            (tmp_path / "snippet.py").write_text(code)
            argv = [sys.executable, "-W", "error", "snippet.py"]
        status, output = await run(argv, here.env, tmp_path)
    assert status == 0, f"{snippet.name} failed:\n{output}"
