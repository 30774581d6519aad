"""The tracking contract (``dinolab.track.contract``) is the one place MLflow names are written: no tag,
metric or artifact literal elsewhere in the package; a tiny trial logs only names it declares; the report's
SQL fast path reads what the MLflow client reads; docs/contracts.md shows the contract."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from dinolab.track import contract

PACKAGE = Path(contract.__file__).resolve().parents[1]
REPO = PACKAGE.parents[1]

# A tag literal (or a tag prefix): dinolab.<name>, runtime.<key>, or one of MLflow's camel-case system tags.
TAG_RE = re.compile(r"^(dinolab\.[a-z_][a-z_.]*|runtime\.[a-z_][a-z_.]*|mlflow\.[a-z]+[A-Z][A-Za-z]*)$")
SUMMARY_RE = re.compile(r"^(final|best|last\d*)/")
# Metric names that are also config field names (dino.loss, dino.momentum, dino.teacher_temp, train.lr, ...) or common words
# cannot be told from those in source; every other metric, summary and artifact name can.
AMBIGUOUS = {contract.LOSS, contract.KL, contract.LR, contract.WEIGHT_DECAY, contract.MOMENTUM, contract.TEACHER_TEMP}
NAMES = (set(contract.COLUMN_METRICS) - AMBIGUOUS) | {
    contract.CONFIG_ARTIFACT, contract.ENVIRONMENT_ARTIFACT, contract.WEIGHTS_FILE, contract.WEIGHTS_ARTIFACT,
    contract.ATTENTION_IMAGE, contract.MLFLOW_USER,
}


def _not_names(tree) -> set[int]:
    """Constants that cannot be a tracking name: docstrings and logger names (``getLogger("dinolab.x")``)."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "getLogger":
            ids.update(id(a) for a in node.args)
    return ids


def _names_a_module(text: str) -> bool:
    """``dinolab.sweep.cli``: one of the package's own modules (imported by name), not a tag."""
    parts = text.split(".")
    return parts[0] == "dinolab" and len(parts) > 1 and (
        PACKAGE.joinpath(*parts[1:]).with_suffix(".py").is_file() or PACKAGE.joinpath(*parts[1:], "__init__.py").is_file())


def stray_literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string constant (f-string parts included, docstrings not) that names a tag,
    a metric, a summary or an artifact."""
    tree = ast.parse(source)
    docs = _not_names(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            text = node.value
            if (TAG_RE.match(text) or SUMMARY_RE.match(text) or text in NAMES) and not _names_a_module(text):
                out.append((node.lineno, text))
    return sorted(out)


def test_the_scan_finds_a_stray_literal():
    found = stray_literals('"""dinolab.doc"""\nx = {"dinolab.heartbeat": 1}\ny = f"best/{m}"\nz = m["knn_top1"]\n'
                           'w = f"dinolab.grid.{g}"\nlog = logging.getLogger("dinolab.x")\nv = "see dinolab.config"\n'
                           'u = importlib.import_module("dinolab.sweep.cli")\n')
    assert [t for _, t in found] == ["dinolab.heartbeat", "best/", "knn_top1", "dinolab.grid."]


def test_no_tag_metric_or_artifact_literal_outside_the_contract():
    stray = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "contract.py" and path.parent.name == "track":
            continue
        stray += [f"{path.relative_to(PACKAGE)}:{line}: {text!r}" for line, text in stray_literals(path.read_text())]
    assert not stray, "literals that belong in dinolab/track/contract.py:\n" + "\n".join(stray)


def test_docs_show_the_contract():
    docs = (REPO / "docs" / "contracts.md").read_text()
    assert contract.contract_markdown() in docs, "docs/contracts.md: paste contract.contract_markdown() over its section"


def test_grid_columns_are_the_contracts_metrics():
    from dinolab.config.gridfile import Column, column_metrics

    per_epoch, once = column_metrics()
    assert set(per_epoch + once) == set(contract.COLUMN_METRICS) and per_epoch == contract.PER_EPOCH_METRICS
    for metric in (contract.LINEAR_VAL_TOP1, contract.ATTN_JACCARD_BEST_HEAD):  # logged, and refused before
        assert Column(metric=metric).metric == metric
