"""memory eval: a labelled question file against the live database, per search mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
from memory_fixtures import jsonl
from test_memory_fusion import MEMORIES, QUESTIONS

RUNBOOK = {"kind": "semantic", "concept": "Retry policy for card payments",
           "content": "A declined card charge is retried three times with backoff",
           "source": "runbook.md"}


def _eval(cli: Any, config: Path, *args: str) -> Any:
    return cli("--config", str(config), "memory", "eval", *args)


def _setup(cli: Any, make_config: Any, memory_dsn: str, tmp_path: Path,
           **sections: Any) -> tuple[Path, dict[str, str]]:
    config = make_config(**sections)
    path = tmp_path / "load.jsonl"
    path.write_text(jsonl([*MEMORIES, RUNBOOK]))
    result = cli("--config", str(config), "memory", "import", str(path), "-f", "json")
    assert result.exit_code == 0, result.output
    with psycopg.connect(memory_dsn) as conn:
        ids = {str(s): f"episodic:{i}" for i, s in
               conn.execute("SELECT id, summary FROM episodic_memory").fetchall()}
    return config, ids


def test_eval_reports_each_mode(cli, make_config, memory_dsn, tmp_path) -> None:
    config, ids = _setup(cli, make_config, memory_dsn, tmp_path)
    questions = tmp_path / "questions.jsonl"
    lines = ["# labelled on the test set", ""]
    lines += [json.dumps({"question": q, "relevant": [ids[MEMORIES[a]["summary"]]]})
              for q, a in QUESTIONS]
    lines.append(json.dumps({"question": "declined card charge retried", "sources":
                             ["runbook.md"], "kind": "semantic"}))
    questions.write_text("\n".join(lines) + "\n")
    result = _eval(cli, config, str(questions), "-f", "json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["questions"] == len(QUESTIONS) + 1 and body["unanswerable"] == 0
    assert set(body["modes"]) == {"keyword", "semantic", "hybrid"}
    for metrics in body["modes"].values():
        assert set(metrics) == {"success@5", "mrr@10", "ndcg@10", "p95_ms"}
        assert all(0 <= metrics[m] <= 1 for m in ("success@5", "mrr@10", "ndcg@10"))
    hybrid, semantic, keyword = (body["modes"][m] for m in ("hybrid", "semantic", "keyword"))
    assert hybrid["mrr@10"] >= max(semantic["mrr@10"], keyword["mrr@10"])
    assert hybrid["success@5"] == 1.0
    table = _eval(cli, config, str(questions), "--mode", "keyword", "-k", "1", "-f", "table")
    assert table.exit_code == 0, table.output
    assert "success@1" in table.stdout and "hybrid" not in table.stdout


def test_eval_refuses_a_bad_file(cli, make_config, memory_dsn, tmp_path) -> None:
    config, _ = _setup(cli, make_config, memory_dsn, tmp_path)
    bad = tmp_path / "bad.jsonl"
    for content, message in (
        ('{"question": "ok", "relevant": ["episodic:1"]}\n{not json\n', "bad.jsonl:2: not JSON"),
        ('{"question": "q", "relevant": ["note:1"]}\n', "is not a memory id"),
        ('{"question": "q"}\n', "name the answers"),
        ('{"question": "", "relevant": ["e:1"]}\n', "'question' must be"),
        ('{"question": "q", "relevant": ["e:1"], "answer": 1}\n', "unknown key"),
        ("\n# nothing\n", "holds no question"),
    ):
        bad.write_text(content)
        result = _eval(cli, config, str(bad))
        assert result.exit_code == 2, (content, result.output)
        assert message in result.stderr, (message, result.stderr)
    result = _eval(cli, config, str(tmp_path / "missing.jsonl"))
    assert result.exit_code == 2 and "does not exist" in result.stderr
    bad.write_text('{"question": "q", "relevant": ["episodic:1"]}\n')
    result = _eval(cli, config, str(bad), "--mode", "hybrid+rerank")
    assert result.exit_code == 2 and "search.rerank" in result.stderr


def test_reembed_fails_when_the_configured_eval_regresses(cli, make_config, memory_dsn,
                                                          embedding_server, tmp_path) -> None:
    questions = tmp_path / "questions.jsonl"
    config, ids = _setup(cli, make_config, memory_dsn, tmp_path)
    questions.write_text("".join(
        json.dumps({"question": q, "relevant": [ids[MEMORIES[a]["summary"]]]}) + "\n"
        for q, a in QUESTIONS))
    gate = {"file": str(questions), "mode": "hybrid", "metric": "mrr@10", "max_drop": 0.05}
    config = make_config(memory={"reembed_eval": gate})
    saved = _eval(cli, config, str(questions), "--mode", "hybrid", "--save-baseline")
    assert saved.exit_code == 0 and "baseline saved" in saved.stderr
    same = cli("--config", str(config), "memory", "reembed", "--yes", "-f", "json")
    assert same.exit_code == 0, same.output  # the same model: no regression
    assert "eval after re-embedding: mrr@10 (hybrid)" in same.stderr
    embedding_server.state.concepts = False  # a worse model: it knows no concept
    worse = cli("--config", str(config), "memory", "reembed", "--yes", "-f", "json")
    assert worse.exit_code == 1, worse.output
    assert "search quality fell after re-embedding" in worse.stderr
    assert "--save-baseline" in worse.stderr
    questions.write_text("{broken\n")
    refused = cli("--config", str(config), "memory", "reembed", "--yes")
    assert refused.exit_code == 2 and "not JSON" in refused.stderr
