"""MkDocs hook: make the site tolerate the pages other parts of the project write, and nothing else.

Three pages (or groups of pages) are written alongside the rest of the site by other work:
`launching/*.md` (launching and containers), `performance.md` (benchmarks and plots) and
`errors.md` (the error reference). This hook

* fills the nav's "Launching" section with whatever pages `docs/launching/` holds (index.md first,
  then the others by name), so new launching pages appear without editing mkdocs.yml;
* drops a nav entry for `performance.md` / `errors.md` / the Launching section while that page (or
  every launching page) does not exist yet, with an INFO line in the build log;
* renders a link to such a missing page as its plain text, marked "(not written yet)", instead of a
  broken link.

Everything else stays strict: a link to any other missing page, or to a launching page that does
not exist while others do, still fails `mkdocs build --strict`.
"""
from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.syncnorm")

OPTIONAL_PAGES = ("performance.md", "errors.md")
LAUNCHING_DIR = "launching"
LAUNCHING_SECTION = "Launching"

_LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(([^)\s]+)\)")


def _launching_pages(docs_dir: Path) -> list[str]:
    d = docs_dir / LAUNCHING_DIR
    if not d.is_dir():
        return []
    pages = sorted(p.relative_to(docs_dir).as_posix() for p in d.rglob("*.md"))
    index = f"{LAUNCHING_DIR}/index.md"
    return ([index] if index in pages else []) + [p for p in pages if p != index]


def _missing(target: str, docs_dir: Path) -> bool:
    """True when `target` (a path relative to docs_dir) is an optional page that is not there."""
    if target in OPTIONAL_PAGES:
        return not (docs_dir / target).is_file()
    if target.startswith(LAUNCHING_DIR + "/"):
        return not _launching_pages(docs_dir)
    return False


def _fix_nav(items: list[Any], docs_dir: Path) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if isinstance(item, dict):
            (title, value), = item.items()
            if title == LAUNCHING_SECTION:
                pages = _launching_pages(docs_dir)
                if not pages:
                    log.info("docs/%s/ holds no page yet: the Launching section is left out",
                             LAUNCHING_DIR)
                    continue
                out.append({title: pages})
                continue
            if isinstance(value, list):
                out.append({title: _fix_nav(value, docs_dir)})
                continue
            if isinstance(value, str) and _missing(value, docs_dir):
                log.info("docs/%s is not written yet: left out of the nav", value)
                continue
        elif isinstance(item, str) and _missing(item, docs_dir):
            log.info("docs/%s is not written yet: left out of the nav", item)
            continue
        out.append(item)
    return out


def on_config(config: Any) -> Any:
    if config.nav:
        config.nav = _fix_nav(config.nav, Path(config.docs_dir))
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs_dir = Path(config.docs_dir)
    here = posixpath.dirname(page.file.src_uri)

    def repl(m: re.Match) -> str:
        text, href = m.group(1), m.group(2)
        if "://" in href or href.startswith(("#", "mailto:")):
            return m.group(0)
        path = href.split("#", 1)[0]
        if not path:
            return m.group(0)
        target = posixpath.normpath(posixpath.join(here, path))
        if _missing(target, docs_dir):
            log.info("%s links to docs/%s, which is not written yet: shown as text",
                     page.file.src_uri, target)
            return f"{text} (not written yet)"
        return m.group(0)

    return _LINK.sub(repl, markdown)
