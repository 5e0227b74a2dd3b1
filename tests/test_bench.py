"""Deployment measurements: ONNX parity, int8, steady-state timing, memory, and the CLI."""
import json
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from kdistill.bench import peak_memory, time_callables
from kdistill.cli import main

from conftest import QUICK


def test_peak_memory_counts_live_activations():
    model = nn.Sequential(nn.Linear(100, 1000), nn.ReLU(), nn.Linear(1000, 10))
    peak = peak_memory(model, torch.zeros(50, 100))
    # the 50x1000 hidden layer lives alongside its ReLU output at the peak
    assert 2 * 50 * 1000 * 4 <= peak <= 3 * 50 * 1000 * 4 + 50 * 10 * 4


def test_peak_memory_skips_views_of_the_input():
    """A batch cut from a large tensor, flattened (a view), allocates only the layer's output;
    the storage the batch shares with the whole set is not the forward pass's memory."""
    whole = torch.zeros(10_000, 1, 28, 28)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    assert peak_memory(model, whole[:64]) == 64 * 10 * 4


def test_time_callables_reports_every_batch_size():
    slow = nn.Linear(784, 4096)
    fast = nn.Linear(784, 8)
    result = time_callables({"slow": lambda x: slow(x.flatten(1)), "fast": lambda x: fast(x.flatten(1))},
                            torch.randn(16, 1, 28, 28), batches=(1, 32), latency_repeats=20,
                            throughput_repeats=3, warmup=2)
    for name in ("slow", "fast"):
        assert set(result[name]["throughput_per_s"]) == {1, 32}
        assert result[name]["latency_batch1_p90_ms"] >= result[name]["latency_batch1_ms"] > 0
    assert result["fast"]["throughput_per_s"][32] > result["slow"]["throughput_per_s"][32]


def test_every_call_is_timed_in_steady_state():
    """A call right after another model's (cold caches, here a 2 ms sleep) is never timed, at
    batch 1 or at a larger batch, and consecutive calls of a model see different inputs."""
    last = [None]
    seen: dict[str, list[tuple[int, int]]] = {"a": [], "b": []}

    def model(name):
        def call(x):
            if last[0] != name:
                time.sleep(0.002)
            last[0] = name
            seen[name].append((x.data_ptr(), len(x)))
        return call

    result = time_callables({"a": model("a"), "b": model("b")}, torch.randn(16, 1, 28, 28),
                            batches=(1, 4), latency_repeats=45, throughput_repeats=12, warmup=1)
    for name in ("a", "b"):
        assert result[name]["latency_batch1_p90_ms"] < 1.0
        assert result[name]["throughput_per_s"][4] > 4 / 1e-3  # the median call took < 1 ms
        timed = [c for c in seen[name] if c[1] == 4][2:]  # after warm-up and the first untimed
        assert all(x != y for x, y in zip(timed, timed[1:]))
        assert len(set(timed)) == 4  # all 4 batches of 4 were used


def test_run_with_onnx_bench_and_export(idx_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = [q for q in QUICK if q != "bench.onnx=false"]
    assert main(["run", "--quiet", "--out", str(out), f"data.name={idx_dir}", *args]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for role in ("teacher", "student"):
        d = metrics["deployment"][role]
        assert d["onnx_parity"]["max_abs_logit_diff"] <= 1e-4 and d["onnx_parity"]["identical_predictions"]
        assert set(d["runtimes"]) == {"eager", "onnx", "int8"}
        assert d["runtimes"]["onnx"]["test_accuracy"] == d["runtimes"]["eager"]["test_accuracy"]
        assert abs(d["runtimes"]["int8"]["accuracy_delta"]) < 0.05
        assert d["runtimes"]["int8"]["bytes"] < d["runtimes"]["onnx"]["bytes"]
        assert d["peak_memory_bytes"] > 0 and d["macs_per_sample"] > 0
        assert (out / f"{role}.onnx").is_file() and (out / f"{role}.int8.onnx").is_file()
    report = (out / "report.md").read_text()
    assert "## Deployment" in report and "| distilled student | int8 |" in report
    capsys.readouterr()
    assert main(["export", str(out), "--onnx"]) == 0
    printed = capsys.readouterr().out
    assert "control:" in printed and "identical test predictions: True" in printed
    capsys.readouterr()
    assert main(["bench", str(out), "--no-onnx"]) == 0
    printed = capsys.readouterr().out
    assert "| distilled student | eager |" in printed and "| teacher | onnx |" not in printed
    assert "The student is " in printed and "x the throughput at batch 64" in printed
    again = json.loads((out / "metrics.json").read_text())
    assert set(again["deployment"]["student"]["runtimes"]) == {"eager"}
    assert again["inference"]["student"]["latency_batch1_ms"] > 0
    assert main(["bench", str(out), "--no-onnx", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"teacher", "student"}


def test_inputs_are_converted_before_timing():
    """A function with a conversion (ONNX Runtime's numpy arrays) gets the same images in its
    own type, and the conversion (here a 2 ms sleep) is never timed."""
    seen = []

    def to_list(x):
        time.sleep(0.002)
        return x.tolist()

    result = time_callables({"plain": lambda x: x.sum(), "listed": seen.append},
                            torch.arange(16.0).view(16, 1, 1, 1), batches=(1, 4),
                            latency_repeats=20, throughput_repeats=3, warmup=1,
                            convert={"listed": to_list})
    assert result["listed"]["latency_batch1_p90_ms"] < 1.0
    assert result["listed"]["throughput_per_s"][4] > 4 / 1e-3
    assert all(isinstance(x, list) for x in seen)
    assert {x[0][0][0][0] for x in seen if len(x) == 1} == {float(i) for i in range(16)}


REPEATED_BLOCK = """
import resource, sys, torch
from kdistill.bench import reused_memory

def faults_of_last_blocks():  # 60 MB blocks, one after another: the last 3 once the heap has
    faults = []                 # settled (small allocations may split a freed block early on)
    for _ in range(10):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(60 << 20, dtype=torch.uint8).fill_(1)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return sum(faults[7:])

torch.ones(1 << 22).fill_(2)  # start torch's worker threads first: their start-up allocations
                              # would otherwise land among the blocks (the heap then settles later)
if sys.argv[1] == "reused":
    with reused_memory():
        print(faults_of_last_blocks())
else:
    print(faults_of_last_blocks())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_timing_reuses_large_blocks():
    """Under glibc's defaults a fresh process maps every 60 MB block afresh (15,360 page faults
    each); while the bench times, blocks reuse the pages of those freed before."""
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", REPEATED_BLOCK, mode], check=True,
                             capture_output=True, text=True).stdout
        return int(out)

    assert faults("default") > 3 * 15_000
    assert faults("reused") < 100
