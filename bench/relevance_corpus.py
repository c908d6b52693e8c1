"""Turn two manuals from Debian documentation packages into semantic memories.

    python bench/relevance_corpus.py [--corpus sqlite|postgres] DOC_DIR OUT.jsonl

sqlite: DOC_DIR is the folder holding the SQLite HTML pages (`/usr/share/doc/sqlite3` once
`sqlite3-doc` is installed, or the same path inside `dpkg-deb -x sqlite3-doc_*.deb DIR`).
postgres: DOC_DIR is `/usr/share/doc/postgresql-doc-15/html` (package postgresql-doc-15); only
the DBA chapters in POSTGRES_PAGES are taken (~4,000 paragraphs of the manual's ~16,000), so the
corpus embeds in minutes on two shared cores. A configuration parameter's description (<dd>) is
filed under its name (<dt>): "runtime-config-autovacuum: autovacuum_naptime (integer)".

Each paragraph (a
<p>, <li>, <dd> or <blockquote> of at least MIN_CHARS characters) becomes one semantic memory:
`concept` is "page title: section heading", `content` the paragraph text, `source` the page
file, and `metadata` {"page", "section", "n"} (n = paragraph number in the page) — the labels
in relevance_questions.json point at memories through `page` and a phrase of `content`.
Only the standard library is used; the output is deterministic for one package version.
"""

from __future__ import annotations

import hashlib
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


# The PostgreSQL manual's administration chapters, by file name prefix: what a DBA asks about.
POSTGRES_PAGES = (
    "runtime-config", "auth-", "client-authentication", "routine-", "maintenance",
    "backup", "continuous-archiving", "high-availability", "warm-standby", "hot-standby",
    "monitoring", "wal-", "mvcc", "explicit-locking", "indexes", "performance-tips", "populate",
    "planner-stats", "using-explain", "kernel-resources", "server-shutdown", "upgrading",
    "logical-replication", "app-pgdump", "app-pgrestore", "app-pgbasebackup", "app-vacuumdb",
    "sql-vacuum", "sql-analyze", "sql-reindex", "sql-createindex", "sql-cluster", "disk-",
    "pgstatstatements", "role-", "user-manag", "database-roles", "predefined-roles",
    "manage-ag", "ddl-partition", "storage-toast", "storage-file-layout",
)
POSTGRES_SKIP_CLASSES = {"toc", "navheader", "navfooter", "list-of-tables", "list-of-examples",
                         "list-of-figures", "refsynopsisdiv"}


class _PostgresPage(_Page):
    """DocBook HTML: headings carry section numbers, a <dt> names what its <dd> describes."""

    def __init__(self) -> None:
        super().__init__()
        self.term = ""
        self._term: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "div" and (dict(attrs).get("class") or "") in POSTGRES_SKIP_CLASSES:
            self._div_depth += 1
            self._nosearch += 1
            return
        if tag == "dt" and not self._nosearch:
            self._flush()
            self._term = []
            return
        if tag in HEADINGS:
            self.term = ""
        super().handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "dt" and self._term is not None:
            self.term = _clean(" ".join(self._term))
            self._term = None
            return
        if tag == "dl":
            self.term = ""
        super().handle_endtag(tag)

    def handle_data(self, data: str) -> None:
        if self._term is not None and not self._skip:
            self._term.append(data)
            return
        super().handle_data(data)

    def _flush(self) -> None:
        if self._buffer is not None:
            text = _clean("".join(self._buffer))
            if len(text) >= MIN_CHARS:
                heading = _unnumbered(self.heading)
                if self.term:
                    heading = f"{heading}: {self.term}" if heading else self.term
                self.paragraphs.append((heading, text[:MAX_CHARS]))
        self._buffer = None


def _unnumbered(title: str) -> str:
    """"25.1. Routine Vacuuming", "F.32. pg_stat_statements", "Chapter 26. Backup" -> the name."""
    return re.sub(r"^(?:Chapter |Appendix )?(?:[A-Z]\.)?[0-9.]+\s+", "", title)


def postgres_pages(doc_dir: Path) -> list[Path]:
    return [p for p in sorted(doc_dir.glob("*.html")) if p.name.startswith(POSTGRES_PAGES)]


def postgres_records(doc_dir: Path) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for path in postgres_pages(doc_dir):
        parser = _PostgresPage()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        parser._flush()
        title = _unnumbered(_clean(parser.title)) or path.stem
        for n, (section, text) in enumerate(parser.paragraphs, start=1):
            concept = f"{title}: {section}" if section and section != title else title
            out.append({
                "kind": "semantic", "concept": concept[:200], "content": text,
                "category": "postgres-docs", "source": path.name,
                "metadata": {"page": path.name, "section": section, "n": n},
            })
    return out


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


CORPORA = {"sqlite": records, "postgres": postgres_records}


def subset(rows: list[dict[str, object]], answer_pages: set[str],
           max_paragraphs: int) -> list[dict[str, object]]:
    """At most `max_paragraphs` rows in whole pages: every page that holds a labelled answer,
    then the other pages in a fixed pseudo-random order (sha256 of the name) until the next
    would pass the limit. The distractors are then a sample of the whole manual, not its first
    letters, and the corpus embeds in minutes on two shared cores."""
    by_page: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_page.setdefault(str(row["source"]), []).append(row)
    order = sorted(by_page, key=lambda page: (page not in answer_pages,
                                              hashlib.sha256(page.encode()).hexdigest()))
    kept: set[str] = set()
    total = 0
    for page in order:
        size = len(by_page[page])
        if page not in answer_pages and total + size > max_paragraphs:
            continue
        kept.add(page)
        total += size
    return [row for row in rows if str(row["source"]) in kept]


def main() -> None:
    args = sys.argv[1:]
    corpus = "sqlite"
    if args[:1] == ["--corpus"]:
        corpus, args = args[1], args[2:]
    doc_dir, target = Path(args[0]), Path(args[1])
    rows = CORPORA[corpus](doc_dir)
    tmp = target.with_suffix(".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.rename(target)
    print(f"{len(rows)} paragraphs -> {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
