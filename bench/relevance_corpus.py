"""Turn the SQLite documentation (Debian package sqlite3-doc) into semantic memories.

    python bench/relevance_corpus.py DOC_DIR OUT.jsonl

DOC_DIR is the folder holding the HTML pages (`/usr/share/doc/sqlite3` once `sqlite3-doc` is
installed, or the same path inside `dpkg-deb -x sqlite3-doc_*.deb DIR`). Each paragraph (a
<p>, <li>, <dd> or <blockquote> of at least MIN_CHARS characters) becomes one semantic memory:
`concept` is "page title: section heading", `content` the paragraph text, `source` the page
file, and `metadata` {"page", "section", "n"} (n = paragraph number in the page) — the labels
in relevance_questions.json point at memories through `page` and a phrase of `content`.
Only the standard library is used; the output is deterministic for one package version.
"""

from __future__ import annotations

import html
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

MIN_CHARS = 80
MAX_CHARS = 2000
# Release logs, news, legal, people and site pages: not documentation an agent asks about.
SKIP = {
    "34to35", "35to36", "books", "changes", "chronology", "codeofconduct", "codeofethics",
    "consortium", "consortium_agreement-20071201", "copyright-release", "copyright", "crew",
    "doc_backlink_crossref", "doc_keyword_crossref", "doc_pagelink_crossref",
    "doc_target_crossref", "doclist", "docs", "download", "famous", "getthecode", "hp1",
    "index", "keyword_index", "news", "oldnews", "pressrelease-20071212", "prosupport",
    "sitemap", "support", "xkcd-git", "capi3ref", "requirements", "syntaxdiagrams",
    "cves", "mostdeployed", "whynotgit", "lts", "privatebranch", "th3", "testing",
    "fileformat", "walformat", "opcode", "lemon",
}
BLOCKS = {"p", "li", "dd", "blockquote", "td"}
HEADINGS = {"h", "h1", "h2", "h3", "h4"}  # <h _id=...>: hidden per-entry titles
SKIPPED_TAGS = {"script", "style", "pre", "svg", "title"}


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.heading = ""
        self.paragraphs: list[tuple[str, str]] = []
        self._in_title = False
        self._skip = 0
        self._nosearch = 0
        self._div_depth = 0
        self._buffer: list[str] | None = None
        self._heading: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        if tag == "div":
            self._div_depth += 1
            if self._nosearch or dict(attrs).get("class") in {"nosearch", "menu mainmenu"}:
                self._nosearch += 1
        if tag in SKIPPED_TAGS:
            self._skip += 1
        if tag in HEADINGS:
            self._flush()
            self._heading = []
        elif tag in BLOCKS:
            # Paragraphs are often left unclosed in these pages: a new block ends the last.
            self._flush()
            self._buffer = []
        elif tag == "br" and self._buffer is not None:
            self._buffer.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag == "div":
            self._div_depth -= 1
            if self._nosearch:
                self._nosearch -= 1
        if tag in SKIPPED_TAGS and self._skip:
            self._skip -= 1
        if tag in HEADINGS and self._heading is not None:
            self.heading = _clean(" ".join(self._heading))
            self._heading = None
        elif tag in BLOCKS or tag in {"ul", "ol", "dl", "table", "div"}:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
            return
        if self._skip or self._nosearch:
            return
        if self._heading is not None:
            self._heading.append(data)
        elif self._buffer is not None:
            self._buffer.append(data)

    def _flush(self) -> None:
        if self._buffer is not None:
            text = _clean("".join(self._buffer))
            if len(text) >= MIN_CHARS:
                self.paragraphs.append((self.heading, text[:MAX_CHARS]))
        self._buffer = None


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(text)).strip()


def pages(doc_dir: Path) -> list[Path]:
    found = sorted(doc_dir.glob("*.html")) + sorted((doc_dir / "c3ref").glob("*.html"))
    return [p for p in found if p.stem not in SKIP]


def records(doc_dir: Path) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for path in pages(doc_dir):
        parser = _Page()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        parser._flush()
        title = _clean(parser.title) or path.stem
        page = str(path.relative_to(doc_dir))
        for n, (section, text) in enumerate(parser.paragraphs, start=1):
            concept = f"{title}: {section}" if section and section != title else title
            out.append({
                "kind": "semantic", "concept": concept[:200], "content": text,
                "category": "sqlite-docs", "source": page,
                "metadata": {"page": page, "section": section, "n": n},
            })
    return out


def main() -> None:
    doc_dir, target = Path(sys.argv[1]), Path(sys.argv[2])
    rows = records(doc_dir)
    tmp = target.with_suffix(".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.rename(target)
    print(f"{len(rows)} paragraphs from {len(pages(doc_dir))} pages -> {target}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
