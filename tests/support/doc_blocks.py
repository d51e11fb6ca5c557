"""The fenced code blocks of docs/**/*.md and how the test suite runs them (tests/docs/test_docs.py).

Rules (also on the site's "About these docs" page):

* ```` ```python ```` blocks run as scripts in a plain `python` process (a world of size 1), each in
  a fresh scratch directory; ```` ```{.python mpi=N} ```` blocks run on N MPI ranks through
  `tests/support/mpi_harness.py` (`python -m mpi4py`, killed on timeout). A block that imports torch is
  skipped when torch is not installed.
* A python block with `title="name.py"` is also written to that file in the scratch directory of
  every block of its page; when a later shell block of the page names the file, that shell block
  runs it and the python block is not run on its own.
* ```` ```bash ```` / `sh` / `shell` blocks run with `bash -euo pipefail` in the scratch directory
  (`cwd=repo` in the info string: at the repository root), with the test interpreter's bin
  directory first on PATH (`python`, `syncnorm-launch`, `mpirun`).
* `skip="reason"` is accepted only on a shell block that runs the test suite itself (it names
  `dev.py test` or `pytest`): running it from the test suite would recurse.
* `docker=STEP` (one of DOCKER_STEPS) marks a shell block of docs/launching/docker.md that needs a
  Docker daemon and root: tests/cluster/test_docker.py runs those, in page order, against the
  daemon it starts; tests/docs/test_docs.py does not.
* Other languages (`text`, `console` transcripts, `toml`, ...) are not code to run.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

PYTHON = ("python", "py", "python3")
SHELL = ("bash", "sh", "shell")
#: the Docker page's steps, in the order tests/cluster/test_docker.py runs them
DOCKER_STEPS = ("base", "build", "run", "compose")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass
class Block:
    page: str  # path relative to docs/
    line: int  # 1-based line of the opening fence
    lang: str
    attrs: dict[str, str]
    code: str
    later_shell: list[str] = field(default_factory=list)  # code of the page's later shell blocks

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def runs(self) -> bool:
        """Run by the test suite as an example (python or shell)."""
        return self.lang in PYTHON or self.lang in SHELL

    @property
    def docker(self) -> str | None:
        """The Docker step this shell block is (run by tests/cluster/test_docker.py), or None."""
        return self.attrs.get("docker")

    @property
    def title(self) -> str | None:
        return self.attrs.get("title")

    @property
    def run_by_shell(self) -> bool:
        """A titled python file that a later shell block of its page runs."""
        t = self.title
        return bool(t) and any(re.search(rf"(^|[\s/]){re.escape(t)}(\s|$)", s, re.M)
                               for s in self.later_shell)


def parse_info(info: str) -> tuple[str, dict[str, str]]:
    """('python', {'mpi': '2'}) from 'python title="x"' or '{.python mpi=2 title="x"}'."""
    info = info.strip()
    lang, attrs = "", {}
    if info.startswith("{") and info.endswith("}"):
        tokens = shlex.split(info[1:-1])
    else:
        tokens = shlex.split(info)
        if tokens and "=" not in tokens[0]:
            lang = tokens.pop(0)
    for t in tokens:
        if t.startswith(".") and not lang:
            lang = t[1:]
        elif "=" in t:
            k, _, v = t.partition("=")
            attrs[k] = v
    return lang.lower(), attrs


def page_blocks(path: Path) -> list[Block]:
    """Every fenced block of one markdown file, in order."""
    rel = path.relative_to(DOCS).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.group("indent"), m.group("fence"), m.group("info")
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                break
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        i += 1
        lang, attrs = parse_info(info)
        out.append(Block(rel, start + 1, lang, attrs, "\n".join(body) + "\n"))
    for k, b in enumerate(out):
        b.later_shell = [o.code for o in out[k + 1:] if o.lang in SHELL]
    return out


def all_blocks() -> list[Block]:
    """The blocks of every page under docs/ (hooks/ and scripts/ hold no pages)."""
    blocks: list[Block] = []
    for path in sorted(DOCS.rglob("*.md")):
        blocks.extend(page_blocks(path))
    return blocks


def page_files(block: Block) -> dict[str, str]:
    """The titled python files of the block's page (written into its scratch directory)."""
    return {b.title: b.code for b in page_blocks(DOCS / block.page)
            if b.lang in PYTHON and b.title}


def runs_test_suite(code: str) -> bool:
    """True for a shell block that starts the test suite (the one reason a block may be skipped)."""
    return bool(re.search(r"dev\.py\s+test\b|\bpytest\b", code))
