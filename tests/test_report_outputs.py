"""Markdown / LaTeX / CSV renderings, the ``dinolab report`` and ``dinolab dashboard`` commands, and the
HTML dashboard, from runs logged into a temporary MLflow store (a 3-row x 2-seed grid on synthetic data).
"""

from __future__ import annotations

import io
import re
import shutil
import statistics
import subprocess
from contextlib import redirect_stdout
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dinolab.config.grid import load_grid
from dinolab.report.dashboard import dashboard_html, nice_ticks, parse_image_name, write_dashboard
from dinolab.report.render import latex_escape, parse_markdown_table, render_csv, render_latex, render_markdown
from dinolab.report.runs import load_histories, load_runs
from dinolab.report.synthetic import log_trial_run, new_sqlite_store
from dinolab.report.table import build_table

NOW = 1_800_000_000.0
GRID = """
# test grid: centering and momentum on the embedded data
grid: out_test
base: {base}
paper_table: dino_t7_components
paper_setup: {{data: imagenet, arch: vit_small, epochs: 300}}
seeds: [0, 1]
columns:
  - {{metric: knn_top1, label: k-NN, paper: knn}}
  - {{metric: teacher_entropy, label: entropy, agg: last3}}
rows:
  - {{name: DINO, default: true, set: {{dino.centering: ema}}, paper_row: 1, labels: {{center: "✓"}}}}
  - {{name: no_centering, set: {{dino.centering: none}}, paper_row: 2, labels: {{center: "✗"}}}}
  - {{name: low momentum, set: {{dino.momentum: 0.8}}, paper_row: 3}}
"""
KNN = {"DINO": [40.0, 44.0], "no_centering": [12.0, 14.0], "low momentum": [38.0, 41.0]}
ENTROPY = {"DINO": [3.0, 2.5, 2.0], "no_centering": [0.4, 0.1, 0.0], "low momentum": [3.0, 2.6, 2.2]}


def _history(row: str, knn: float, seed: int) -> dict:
    e = [v + 0.2 * seed for v in ENTROPY[row]]
    return {"loss": [5.0, 4.5, 4.2], "teacher_entropy": e, "kl": [0.3, 0.2, 0.1],
            "knn_top1": [knn - 4.0, knn - 1.0, knn]}


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_experiment):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        return _make(tmp_path_factory.mktemp("report_outputs"), tiny_experiment)


def _make(tmp: Path, base: Path) -> dict:
    from mlflow.tracking import MlflowClient

    uri = new_sqlite_store(tmp / "mlflow.db")
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("dinolab", artifact_location=(tmp / "artifacts").as_uri())  # trials' default
    ablations = tmp / "ablations"
    ablations.mkdir()
    path = ablations / "out_test.yaml"
    path.write_text(GRID.format(base=base))
    grid = load_grid(path)  # the real data fingerprint: the CLI computes the same trial ids
    parent = client.create_run(exp, run_name="grid out_test", tags={"dinolab.grid_parent": "out_test"}).info.run_id
    image_run = None
    for t in grid.trials:
        knn = KNN[t.row][t.seed]
        final = {"knn_top1": knn, "linear_top1": knn + 5, "throughput_images_per_s": {"DINO": 100.0, "no_centering": 101.0,
                 "low momentum": 99.0}[t.row] + 2 * t.seed, "wall_time_s": 30.0, "cpu_hours": 0.01, "gpu_hours": 0.0,
                 "peak_rss_mb": 800.0, "cuda_peak_mb": 0.0}
        run = log_trial_run(client, exp, t.config, t.trial_id, history=_history(t.row, knn, t.seed), final=final,
                            grids=["out_test"], parent_run_id=parent, collapsed=t.row == "no_centering",
                            collapse_reason="one-hot teacher: entropy 0" if t.row == "no_centering" else "")
        if t.row == "DINO" and t.seed == 0:
            image_run = run
    # An attention map as a trial would log it (two epochs: the newest is shown).
    img = (np.arange(8 * 8 * 3).reshape(8, 8, 3) % 255).astype(np.uint8)
    client.log_image(image_run, img, key="attention/cls_head0", step=1)
    client.log_image(image_run, img[::-1].copy(), key="attention/cls_head0", step=2)
    table = build_table(grid, load_runs(uri), tracking_uri=uri, now=NOW)
    return {"uri": uri, "grid": grid, "path": path, "ablations": ablations, "client": client, "parent": parent,
            "table": table, "tmp": tmp}


def _pm(values: list[float]) -> str:
    """Independent formatting of mean ± sample std (n) as the tables print it (minus as U+2212)."""
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f} (n={len(values)})".replace("-", "−")


# ---------------------------------------------------------------- Markdown, LaTeX, CSV


def test_markdown_table_cell_by_cell(store):
    t = store["table"]
    md = render_markdown(t, costs=True)  # the full table
    rows = parse_markdown_table(md)
    assert [r["Row"] for r in rows] == ["DINO (default)", "no_centering", "low momentum"]
    assert list(rows[0]) == ["Row", "center", "k-NN", "k-NN paper", "k-NN vs paper", "entropy [last3]", "entropy effect",
                             "img/s", "wall s", "CPU-h", "RSS MB", "CUDA MB"]
    dino, noc, low = rows
    assert dino["k-NN"] == _pm(KNN["DINO"]) and dino["k-NN paper"] == "72.8" and dino["k-NN vs paper"] == "default"
    assert noc["k-NN"] == _pm(KNN["no_centering"]) + " collapsed" and noc["center"] == "✗"
    # effect over seeds: 12-40, 14-44 -> mean -29, std sqrt(2); paper 0.1 - 72.8 = -72.7
    assert noc["k-NN vs paper"] == "−29.0 ± 1.4 vs −72.7: agree"
    # low momentum: -2, -3 -> mean -2.5, std 0.71: |effect| > 2 std -> agree with 72.2 - 72.8
    assert low["k-NN vs paper"] == "−2.5 ± 0.7 vs −0.6: agree"
    # entropy last3: mean of the last three epochs per seed
    last3 = [statistics.mean([v + 0.2 * s for v in ENTROPY["DINO"]]) for s in (0, 1)]
    assert dino["entropy [last3]"] == _pm(last3)
    assert dino["img/s"] == "101" and dino["CPU-h"] == "0.01" and dino["CUDA MB"] == "–"
    assert "2 agree, 0 disagree, 0 inconclusive" in md
    assert "no_centering, seed 0" in md and "one-hot teacher" in md
    assert "\\|" not in md  # no cell text needed escaping here


def test_default_markdown_fits_120_columns(store):
    t = store["table"]
    md = render_markdown(t)
    assert max(len(line) for line in md.splitlines()) <= 120
    rows = parse_markdown_table(md)
    assert list(rows[0]) == ["Row", "center", "k-NN", "k-NN paper", "k-NN Δ", "entropy [last3]", "entropy Δ", "CPU-h"]
    dino, noc, low = rows
    tight = lambda values: _pm(values).replace(" ± ", "±").replace(f" (n={len(values)})", "")  # noqa: E731 (both seeds)
    assert [r["Row"] for r in rows] == ["DINO", "no_centering", "low momentum"] and dino["k-NN Δ"] == "default"
    assert dino["k-NN"] == tight(KNN["DINO"]) and noc["k-NN"] == tight(KNN["no_centering"]) + "†"
    assert noc["k-NN Δ"] == "−29.0±1.4 ✓" and low["k-NN Δ"] == "−2.5±0.7 ✓" and noc["CPU-h"] == "0.01"
    lines = [line for line in md.splitlines() if line.startswith("|")]
    assert len({len(line) for line in lines}) == 1  # aligned: every line of the table equally long


def test_markdown_escapes_pipes():
    rows = parse_markdown_table("| a | b |\n|---|---|\n| x \\| y | 2 |\n")
    assert rows == [{"a": "x | y", "b": "2"}]


def test_latex_is_booktabs_and_ascii(store):
    t = store["table"]
    tex = render_latex(t)
    assert tex.isascii()
    body = tex.split("\\midrule\n", 1)[1].split("\\bottomrule", 1)[0].strip().splitlines()
    assert len(body) == 3
    n_cols = len(re.search(r"\\begin\{tabular\}\{([lr]+)\}", tex).group(1))
    assert all(line.count(" & ") == n_cols - 1 and line.endswith("\\\\") for line in body)
    assert body[0].startswith("\\textbf{DINO (default)} & $\\surd$ & 42.0 $\\pm$ 2.8 (n=2)")
    assert "no\\_centering" in body[1] and "\\label{tab:out-test}" in tex
    assert "\\toprule" in tex and "\\caption{" in tex


def test_latex_escape():
    assert latex_escape("a_b & 50% #1 {x} ~ ^ \\") == (
        "a\\_b \\& 50\\% \\#1 \\{x\\} \\textasciitilde{} \\textasciicircum{} \\textbackslash{}")
    assert latex_escape("72.1 ± 0.3 − ✓ ✗ é") == "72.1 $\\pm$ 0.3 - $\\surd$ $\\times$ e"
    assert latex_escape("|effect| > 2 < 3") == "$|$effect$|$ $>$ 2 $<$ 3"


def test_csv_round_trip(store):
    t = store["table"]
    frame = pd.read_csv(io.StringIO(render_csv(t)))
    assert list(frame["row"]) == ["DINO", "no_centering", "low momentum"]
    for name, values in KNN.items():
        rec = frame[frame["row"] == name].iloc[0]
        assert rec["k-NN"] == pytest.approx(statistics.mean(values))
        assert rec["k-NN_std"] == pytest.approx(statistics.stdev(values))
        assert rec["k-NN_n"] == 2
    noc = frame[frame["row"] == "no_centering"].iloc[0]
    assert noc["k-NN_status"] == "collapsed" and noc["k-NN_agreement"] == "agree"
    assert noc["k-NN_effect"] == pytest.approx(-29.0) and noc["k-NN_paper_effect"] == pytest.approx(-72.7)
    assert frame["default"].tolist() == [True, False, False]


@pytest.mark.slow
def test_latex_compiles(store, tmp_path):
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed")
    (tmp_path / "table.tex").write_text(render_latex(store["table"], standalone=True))
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "table.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "table.pdf").stat().st_size > 1000


# ---------------------------------------------------------------- the commands


def _main(argv) -> tuple[int, str]:
    from dinolab.cli import main

    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(argv)
    return code, buf.getvalue()


def test_report_command_prints_each_format(store):
    code, out = _main(["report", str(store["path"]), "--tracking-uri", store["uri"], "--costs"])
    assert code == 0
    rows = parse_markdown_table(out)
    assert [r["k-NN"] for r in rows] == [_pm(v) + (" collapsed" if k == "no_centering" else "") for k, v in KNN.items()]
    code, out = _main(["report", str(store["path"]), "--tracking-uri", store["uri"]])
    assert code == 0 and "img/s" not in parse_markdown_table(out)[0] and max(map(len, out.splitlines())) <= 120
    code, tex = _main(["report", str(store["path"]), "--tracking-uri", store["uri"], "--format", "latex"])
    assert code == 0 and "\\begin{tabular}" in tex
    code, csv = _main(["report", str(store["path"]), "--tracking-uri", store["uri"], "--format", "csv", "--method", "search"])
    assert code == 0 and pd.read_csv(io.StringIO(csv))["k-NN"].tolist() == pytest.approx([42.0, 13.0, 39.5])


def test_report_all_writes_md_tex_csv(store, tmp_path):
    out = tmp_path / "reports"
    code, printed = _main(["report", "--all", "--ablations", str(store["ablations"]), "--out", str(out),
                           "--tracking-uri", store["uri"], "--costs"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["out_test.csv", "out_test.md", "out_test.tex"]
    assert parse_markdown_table((out / "out_test.md").read_text())[1]["k-NN"].endswith("collapsed")


def test_report_command_errors_name_the_problem(store, capsys):
    from dinolab.cli import main

    assert main(["report"]) == 2
    assert "--all" in capsys.readouterr().err
    assert main(["report", str(store["tmp"] / "nope.yaml")]) == 2


# ---------------------------------------------------------------- the dashboard


class _Counter(HTMLParser):
    """Counts plotted elements per plot (``data-plot``) and collects fetchable URLs and scripts."""

    def __init__(self):
        super().__init__()
        self.plot = None
        self.counts: dict[tuple[str, str], set] = {}
        self.kinds: dict[str, int] = {}
        self.urls: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-plot" in a:
            self.plot = a["data-plot"]
        kind = a.get("data-kind")
        if kind:
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
            if self.plot and kind in ("point", "curve"):
                self.counts.setdefault((self.plot, kind), set()).add(a.get("data-row"))
                self.counts.setdefault((self.plot, kind + "#"), []).append(a.get("data-row"))
        for key in ("src", "href"):
            if key in a and not a[key].startswith(("data:", "#")):
                self.urls.append(a[key])
        self._in_script = tag == "script"
        if tag == "script" and "src" in a:
            self.urls.append(a["src"])

    def handle_endtag(self, tag):
        if tag == "figure":
            self.plot = None
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts.append(data)


def _count(html: str) -> _Counter:
    c = _Counter()
    c.feed(html)
    return c


@pytest.fixture(scope="module")
def dashboard(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("dash")
    path, table, parent = write_dashboard(store["grid"], out, store["uri"], now=NOW)
    return {"path": path, "table": table, "parent": parent, "html": path.read_text()}


def test_dashboard_plots_one_element_per_row(dashboard):
    html = dashboard["html"]
    c = _count(html)
    names = [r.name for r in dashboard["table"].rows]
    assert len(c.counts[("accuracy-throughput", "point#")]) == len(names)
    assert c.counts[("accuracy-throughput", "point")] == set(names)
    for plot in ("knn_top1", "loss", "teacher_entropy", "kl"):
        assert len(c.counts[(plot, "curve#")]) == len(names), plot
        assert c.counts[(plot, "curve")] == set(names)
    assert c.kinds["seed-curve"] == 4 * len(names) * 2  # 4 plots x rows x 2 seeds
    assert c.kinds["attention"] == 1  # one key, newest step only
    assert "attention/cls_head0 (epoch 2)" in html
    assert html.count('<tr class=') == len(names)


def test_dashboard_is_offline(dashboard):
    c = _count(dashboard["html"])
    assert c.urls == []  # no src/href that a browser would fetch
    assert "<link" not in dashboard["html"] and "@import" not in dashboard["html"]
    assert len(c.scripts) == 1 and "querySelectorAll" in c.scripts[0]


def test_dashboard_script_parses(dashboard, tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    js = tmp_path / "page.js"
    js.write_text(_count(dashboard["html"]).scripts[0])
    proc = subprocess.run([node, "--check", str(js)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_dashboard_logged_on_the_parent_run(store, dashboard):
    assert dashboard["parent"] == store["parent"]
    files = [f.path for f in store["client"].list_artifacts(store["parent"], "dashboard")]
    assert files == ["dashboard/out_test.html"]


def test_dashboard_command_default_output(store, tmp_path):
    code, out = _main(["dashboard", str(store["path"]), "--tracking-uri", store["uri"], "--out", str(tmp_path), "--no-log"])
    assert code == 0 and out.strip() == str(tmp_path / "out_test.html")
    assert (tmp_path / "out_test.html").read_text().startswith("<!DOCTYPE html>")


def test_histories_read_by_both_readers(store):
    runs = load_runs(store["uri"])
    ids = runs["run_id"].tolist()
    a = load_histories(store["uri"], ids, ["loss", "knn_top1"], method="sql")
    b = load_histories(store["uri"], ids, ["loss", "knn_top1"], method="search")
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 6 * (3 + 4)  # loss: 3 epochs; knn_top1: 3 epochs + the final value at step 3


def test_empty_dashboard_has_a_place_for_attention(store):
    import pandas as pd

    html = dashboard_html(store["table"], pd.DataFrame(columns=["run_id", "key", "step", "value"]))
    c = _count(html)
    assert c.kinds.get("attention-empty") == 1 and "curve" not in c.kinds


def test_small_helpers():
    assert nice_ticks(0, 10) == [0.0, 5.0, 10.0]
    assert nice_ticks(0.0, 0.9) == [0.0, 0.5, 1.0]
    assert nice_ticks(0, 3, integer=True) == [0.0, 1.0, 2.0, 3.0]
    assert nice_ticks(5, 5)[0] < 5 < nice_ticks(5, 5)[-1]
    assert parse_image_name("images/attention~cls~h0+step+12+timestamp+17+abc.png") == ("attention/cls/h0", 12)
    assert parse_image_name("images/attention~cls+step+1+timestamp+1+abc+compressed.webp") is None


def test_dashboard_all_writes_an_index(store, tmp_path):
    code, out = _main(["dashboard", "--all", "--ablations", str(store["ablations"]), "--out", str(tmp_path),
                       "--tracking-uri", store["uri"], "--no-log"])
    assert code == 0 and out.split() == [str(tmp_path / "out_test.html"), str(tmp_path / "index.html")]
    c = _count((tmp_path / "index.html").read_text())
    assert c.urls == ["out_test.html"] and (tmp_path / c.urls[0]).is_file()


def _chromium_dom(chromium: str, url: str, profile: Path) -> str:
    """The DOM of ``url`` after its scripts ran, in headless Chromium; no console error allowed."""
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console
    return proc.stdout


@pytest.mark.slow
def test_dashboard_in_headless_chromium(dashboard, tmp_path):
    from urllib.parse import urljoin

    from dinolab.report.index import write_index

    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if chromium is None:
        pytest.skip("chromium is not installed")
    # The index of every grid (here one): a row per grid whose link the browser resolves to the grid's page.
    index = write_index([(dashboard["table"], dashboard["path"])], dashboard["path"].parent)
    dom = _chromium_dom(chromium, index.as_uri(), tmp_path / "profile")
    links = _count(dom).urls
    assert len(links) == 1 and re.search(r'<tr data-grid="out_test">.*>out_test</a>.*4 finished, 2 collapsed', dom)
    page = urljoin(index.as_uri(), links[0])
    assert page == dashboard["path"].as_uri()
    c = _count(_chromium_dom(chromium, page, tmp_path / "profile"))  # the grid's page, by the index's link
    n = len(dashboard["table"].rows)
    assert len(c.counts[("accuracy-throughput", "point#")]) == n
    for plot in ("knn_top1", "loss", "teacher_entropy", "kl"):
        assert len(c.counts[(plot, "curve#")]) == n
