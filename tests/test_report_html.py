"""Plots, report.html (rendered in headless Chromium), `kdistill report` and `kdistill runs`."""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from conftest import QUICK, kdistill, write_idx_dir
from kdistill.cli import _parser, main
from kdistill.plots import tradeoff_points, write_plots
from kdistill.errors import KdistillError
from kdistill.report import markdown_to_html, write_report, write_report_files

PLOTS = ("accuracy", "tradeoff", "confusion")
CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One complete quick run on the synthetic dataset, shared by this module's tests."""
    base = tmp_path_factory.mktemp("report")
    out = base / "runs" / "quick"
    env = {**os.environ, "KDISTILL_OFFLINE": "1", "KDISTILL_DATA": str(base / "data")}
    result = kdistill("run", "--quiet", "--out", str(out), f"data.name={write_idx_dir(base / 'syn')}",
                      *QUICK, env=env)
    assert result.returncode == 0, result.stderr
    return out


def test_plots_are_small_pngs_embedded_in_both_reports(run_dir):
    markdown = (run_dir / "report.md").read_text()
    page = (run_dir / "report.html").read_text()
    for name in PLOTS:
        png = run_dir / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 150_000
        assert f"](plots/{name}.png)" in markdown
    assert page.count('src="data:image/png;base64,') == len(PLOTS)
    # Self-contained: no file or network references a browser would have to fetch.
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<table>" in page and "<code>spec-student</code>" in page
    assert '<td style="text-align:right">' in page and "distilled student" in page


def test_report_command_rerenders_everything(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "plots")
    (copy / "report.html").unlink()
    (copy / "report.md").write_text("stale")
    result = kdistill("report", str(copy))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(copy / "report.md")
    for name in ("report.md", "report.html", *(f"plots/{p}.png" for p in PLOTS)):
        # Rendering is deterministic: the same metrics give the same bytes.
        assert (copy / name).read_bytes() == (run_dir / name).read_bytes(), name


def test_plots_skip_what_the_metrics_lack(run_dir, tmp_path):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "confusion.png").write_bytes(b"old")
    partial = {**metrics, "models": {"teacher": metrics["models"]["teacher"]}}
    del partial["inference"]
    # No student: no confusion plot (a stale one is removed); no bench: MACs alone.
    assert write_plots(tmp_path, partial) == {"accuracy": "plots/accuracy.png",
                                              "tradeoff": "plots/tradeoff.png"}
    assert not (tmp_path / "plots" / "confusion.png").exists()
    assert write_plots(tmp_path, {"models": {}}) == {}


def test_tradeoff_shows_deployed_variants_a_run_measured(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # QUICK skips ONNX, so the run timed the eager models alone: three points.
    assert [p["label"] for p in tradeoff_points(metrics)] == [
        "teacher", "distilled student", "control (labels only)"]
    metrics["deployment"] = {"student": {"runtimes": {
        "eager": {"test_accuracy": 0.9, "latency_batch1_ms": 0.03},
        "int8": {"test_accuracy": 0.89, "latency_batch1_ms": 0.01}}}}
    int8 = tradeoff_points(metrics)[-1]
    assert int8 == {"label": "distilled student, int8", "role": "student", "marker": "^",
                    "accuracy": 89.0, "latency_ms": 0.01, "macs": None}
    assert len(tradeoff_points(metrics)) == 4  # no ONNX entry measured: no ONNX point


def test_markdown_subset_converts_to_html(tmp_path):
    body = markdown_to_html("# T\n\nSome **bold** and _it_ with `a_b_c` <x>.\n\n- one\n- two\n\n"
                            "| a | b |\n|---|---:|\n| 1 | 2 |\n\n![cap](missing.png)", tmp_path)
    assert "<h1>T</h1>" in body
    assert "<strong>bold</strong> and <em>it</em> with <code>a_b_c</code> &lt;x&gt;." in body
    assert "<ul>\n<li>one</li>\n<li>two</li>\n</ul>" in body
    assert '<th style="text-align:right">b</th>' in body and '<td style="text-align:left">1</td>' in body
    assert '<img src="missing.png" alt="cap">' in body


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_html_renders_in_chromium(run_dir, tmp_path):
    # A copy of the page with a probe that marks <body> once every image has decoded.
    probe = ("<script>window.addEventListener('load', () => { const imgs = [...document.images]; "
             "document.body.dataset.imagesLoaded = imgs.filter(i => i.complete && i.naturalWidth > 0)"
             ".length + '/' + imgs.length; });</script></body>")
    page = tmp_path / "probe.html"
    original = (run_dir / "report.html").read_text()
    assert "default-src 'none'" in original
    page.write_text(original.replace("default-src 'none'", "default-src 'none'; script-src 'unsafe-inline'")
                    .replace("</body>", probe))
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert f'data-images-loaded="{len(PLOTS)}/{len(PLOTS)}"' in dom.stdout, dom.stderr[-2000:]
    assert "kdistill report" in dom.stdout

    shot = tmp_path / "shot.png"
    subprocess.run([*flags, "--window-size=1000,1400", f"--screenshot={shot}",
                    (run_dir / "report.html").as_uri()], capture_output=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1000, 1400)
    # Text, tables and coloured plots: far more than a blank or error page's few colours.
    assert len(image.getcolors(maxcolors=1 << 20)) > 500


def test_runs_lists_status_and_numbers(run_dir, tmp_path, capsys):
    result = kdistill("runs", str(run_dir.parent))
    assert result.returncode == 0, result.stderr
    header, line = result.stdout.splitlines()
    assert header.split()[:5] == ["run", "status", "teacher", "student", "control"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    student = f"{100 * metrics['models']['student']['test_accuracy']:.2f}%"
    assert line.split()[:2] == [str(run_dir), "complete"] and student in line
    assert main(["runs", str(run_dir)]) == 0  # one run directory itself
    assert capsys.readouterr().out == result.stdout

    failed = tmp_path / "failed"
    failed.mkdir()
    stopped = {k: v for k, v in metrics.items() if k not in ("distill", "timings")}
    (failed / "metrics.json").write_text(json.dumps(  # a run that failed before any model ended
        {**stopped, "status": "failed", "error": "boom", "models": {}}))
    assert main(["runs", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split()[-7:] == [str(failed), "failed", *"–" * 5]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["runs", str(empty)]) == 0
    assert capsys.readouterr().out.strip() == f"no runs in {empty}"
    assert main(["runs", str(tmp_path / "nope")]) == 2
    assert "is not a kdistill run directory (no such directory)" in capsys.readouterr().err


# ------------------------------------------------------------------ untrusted run data
def _pwn(where: str) -> str:
    """Script that marks <body> if it runs (no parentheses: markdown URLs end at the first ')')."""
    return f"document.body.dataset.pwned='{where}'"


# Every value a report shows comes from a run directory someone handed over: none may run script,
# inject markup or break the markdown. Each payload must come out as the very text it is.
PAYLOADS = {
    ("name",): f"</title><script>{_pwn('name')}</script><img src=x onerror=\"{_pwn('name-img')}\">",
    ("config", "description"): f"<script>{_pwn('description')}</script>_",
    ("status",): f"failed\n\n![x](javascript:{_pwn('status')})\n\n<script>{_pwn('status2')}</script>",
    ("dataset", "name"): f"\"><svg onload=\"{_pwn('dataset')}\">",
    ("dataset", "source"): f"[a](javascript:{_pwn('source')}) ![b](javascript:{_pwn('source2')})",
    ("config", "teacher", "model"): f"mlp`<img src=x onerror=\"{_pwn('config-model')}\">`|x",
    ("models", "teacher", "model"): f"mlp`<img src=x onerror=\"{_pwn('teacher-model')}\">`|x",
    ("models", "student", "model"): "a | b\n| c |",
    ("models", "control", "model"): f"**<iframe src=\"javascript:{_pwn('control')}\"></iframe>**",
    ("config", "distill", "loss"): f"<a href=\"javascript:{_pwn('loss')}\">kl</a>",
    ("env", "cpu"): "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#60;b&#62;",
    ("env", "device"): f"cpu<style>body{{display:none}}</style><base href=\"javascript:{_pwn('x')}//\">",
    ("env", "torch"): "2.13\n\n| a | b |\n|---|---|\n| <i>x</i> | y |",
    ("env", "git_commit"): "abc\n\n![leak](SECRET)\n\n![leak2](../secret.txt)",
    ("env", "platform"): f"<script>{_pwn('platform')}</script>",
    ("kdistill_version", ): "0.1\r\n# <h1>big</h1>",
    ("models", "teacher", "weights"): f"w`<script>{_pwn('weights')}</script>`\\",
}
NOT_SHOWN = {("env", "platform"), ("config", "teacher", "model")}  # the report leaves these out
CLASS_NAMES = [f"![x](javascript:{_pwn('class0')})", f"[a](javascript:{_pwn('class1')})", "a|b",
               f"<img src=x onerror=\"{_pwn('class3')}\">", r"$\foo$", "$x$", "\\", "`", "&amp;", "9"]
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "em", "strong",
                "code", "table", "thead", "tbody", "tr", "th", "td", "ul", "li", "figure", "img",
                "figcaption"}


class _Dom(HTMLParser):
    """Every element with its attributes, and the text, of an HTML document."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.elements, self.text = [], []
        self.feed(page)
        self.close()
        self.text = " ".join(" ".join(self.text).split())

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _unsafe_markup(page: str) -> list[str]:
    """What in ``page`` is not the markup a report is made of: unknown elements, event handlers,
    script URLs, images not inlined as PNG data."""
    bad = []
    for tag, attrs in _Dom(page).elements:
        if tag not in ALLOWED_TAGS:
            bad.append(f"<{tag}>")
        for name, value in attrs.items():
            value = value or ""
            ok = {"lang": True, "charset": True, "name": value == "viewport" or tag == "meta",
                  "content": tag == "meta", "http-equiv": value == "Content-Security-Policy",
                  "alt": tag == "img",
                  "style": re.fullmatch(r"text-align:(left|right)", value) is not None,
                  "src": tag == "img" and value.startswith("data:image/png;base64,")}.get(name, False)
            if not ok:
                bad.append(f"<{tag} {name}={value!r}>")
    return bad


@pytest.fixture(scope="module")
def hostile_run(run_dir, tmp_path_factory) -> tuple[Path, dict, Path]:
    """The quick run's metrics with a payload in every value the report shows, rendered."""
    base = tmp_path_factory.mktemp("hostile")
    secret = base / "secret.txt"
    secret.write_text("SECRET-FILE-CONTENT")
    out = base / "run"
    out.mkdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    payloads = {}
    for path, value in PAYLOADS.items():
        value = value.replace("SECRET", str(secret))
        *parents, key = path
        node = metrics
        for parent in parents:
            node = node[parent]
        node[key] = payloads[path] = value
    metrics["models"]["teacher"]["trained_here"] = False
    metrics["dataset"]["classes"] = CLASS_NAMES
    metrics["timings"][f"<b>x</b>|y_seconds"] = 1.0
    deployment = metrics["deployment"]["student"]["runtimes"]
    deployment[f"<img src=x onerror=\"{_pwn('runtime')}\">|e"] = deployment.pop("eager")
    (out / "metrics.json").write_text(json.dumps(metrics))
    # the run schema refuses a status or objective that is not one of kdistill's...
    with pytest.raises(KdistillError, match="is not a kdistill run directory"):
        write_report(out)
    write_report_files(out, metrics)  # ...and rendering escapes them even past the schema
    return out, payloads, secret


def test_report_shows_hostile_values_as_text(hostile_run):
    out, payloads, secret = hostile_run
    page = (out / "report.html").read_text()
    assert _unsafe_markup(page) == []
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', page)
    assert csp and "default-src 'none'" in csp[1] and "script" not in csp[1]
    leaked = base64.b64encode(secret.read_bytes()).decode()[:16]
    assert "SECRET-FILE-CONTENT" not in page and leaked not in page
    text = _Dom(page).text
    shown = [path for path, value in payloads.items()
             if path not in NOT_SHOWN and " ".join(value.split()) not in text]
    assert shown == [], f"not shown as the text they are: {shown}"
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#60;b&#62;" in text  # entities stay text
    assert '<title>kdistill report: &lt;/title&gt;&lt;script&gt;' in page
    assert page.count("<figure>") == len(PLOTS)  # the confusion plot survived the class names


def test_report_md_keeps_its_structure_with_hostile_values(hostile_run):
    out, payloads, _ = hostile_run
    markdown = (out / "report.md").read_text()
    blocks = [b.splitlines() for b in re.split(r"\n\s*\n", markdown.strip())]
    for lines in blocks:
        if lines[0].startswith("|"):  # a table: every row has its header's cells
            pipes = [len(re.findall(r"(?<!\\)\|", line)) for line in lines]
            assert len(set(pipes)) == 1 and all(line.startswith("|") for line in lines), lines
        else:  # values never start a block or line of their own (an image, a heading, a table)
            assert len(lines) == 1 or all(line.startswith("- ") for line in lines), lines
            if lines[0].startswith("!["):
                assert re.fullmatch(r"!\[[^\]]*\]\(plots/\w+\.png\)", lines[0]), lines
    headings = [lines[0] for lines in blocks if lines[0].startswith("#")]
    assert sum(h.startswith("# ") for h in headings) == 1
    # No raw HTML for a lenient markdown viewer (code spans are literal text in every one).
    assert not re.search(r"(?<!\\)<", re.sub(r"`[^`]*`", "", markdown))
    results = next(b for b in blocks if b[0].startswith("| model | architecture"))
    assert r"| `a \| b \| c \|` |" in "\n".join(results)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_hostile_values_run_no_script_in_chromium(hostile_run, tmp_path):
    out, payloads, _ = hostile_run
    # The escaping must hold on its own: load the page without its Content-Security-Policy.
    page = tmp_path / "no-csp.html"
    page.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "",
                           (out / "report.html").read_text()))
    start = time.monotonic()
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                          "--no-first-run", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=2000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert "kdistill report" in dom.stdout, dom.stderr[-2000:]
    rendered = _Dom(dom.stdout)
    # No payload ran (each would mark <body>) or left an element or attribute of its own.
    assert [attrs for tag, attrs in rendered.elements if tag == "body"] == [{}]
    assert _unsafe_markup(dom.stdout) == [] and "<script" not in dom.stdout.lower()
    assert _pwn("description") in rendered.text
    assert re.search(r"<title>kdistill report: &lt;/title&gt;&lt;script&gt;", dom.stdout)
    assert time.monotonic() - start < 30


def test_markdown_converter_refuses_unsafe_images(tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nxx")
    (tmp_path / "plots" / "fake.png").write_bytes(b"<svg onload=alert(1)>")
    (tmp_path.parent / "secret.png").write_bytes(b"\x89PNG\r\n\x1a\nSECRET")
    for src in ("javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:image/svg+xml,<svg onload=alert(1)>",
                "https://example.com/x.png", "//example.com/x.png", "/etc/passwd",
                "../secret.png", "plots/../../secret.png", "plots/fake.png", 'x.png" onerror="alert(1)'):
        body = markdown_to_html(f"![cap]({src})", tmp_path)
        assert "<img" not in body and "<figure" not in body, src
        assert _Dom(body).text == f"![cap]({src})", body
    body = markdown_to_html("![cap](plots/a.png)", tmp_path)
    assert body.startswith('<figure><img src="data:image/png;base64,')
    # Escaped pipes are cell text; a backslash escape shows the character it escapes.
    body = markdown_to_html("| a | b |\n|---|---|\n| x \\| y | `c \\| d` \\*e\\* |", tmp_path)
    assert "<td style=\"text-align:left\">x | y</td>" in body
    assert "<code>c | d</code> *e*</td>" in body


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    """Every subcommand path of ``parser`` (``["data", "fetch"]``...), found by walking it."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [[*prefix, name], *_commands(sub, (*prefix, name))]
    return found


def test_every_help_has_examples(capsys):
    commands = _commands(_parser())
    assert ["runs"] in commands and ["data", "fetch"] in commands
    for command in commands:
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--help"])
        assert exit_.value.code == 0
        examples = capsys.readouterr().out.partition("examples:")[2]
        assert f"kdistill {command[0]}" in examples, f"`kdistill {' '.join(command)} --help` has no examples"


def test_runs_tells_a_killed_run_from_one_still_writing(run_dir, tmp_path, capsys):
    import fcntl

    metrics = json.loads((run_dir / "metrics.json").read_text())
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "metrics.json").write_text(json.dumps({**metrics, "status": "running"}))
    (killed / ".lock").touch()  # left behind by a process that died (kill -9)
    assert main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[:2] == [str(killed), "stopped"]
    assert "continue with: kdistill run --resume RUN" in out
    with open(killed / ".lock", "a+") as held:  # a live writer holds the lock, as `run` does
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["runs", str(tmp_path)]) == 0
        out = capsys.readouterr().out
    assert out.splitlines()[1].split()[:2] == [str(killed), "running"]
    assert "--resume" not in out
