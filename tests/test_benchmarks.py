"""The benchmark harness (:mod:`gatedrnn.bench`): its tables from made-up timings, and the scripts in
`benchmarks/` against the engine."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

import gatedrnn
from gatedrnn._engines import _fused

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rows_times_each_wiring_and_restores_the_runner(capsys):
    rows = _load("rows")
    runner = _fused.run_rows
    assert (
        rows.main(
            [
                "--steps",
                "20",
                "--batch",
                "2",
                "--inputs",
                "3",
                "--hidden",
                "8",
                "--repeats",
                "2",
                "--variants",
                "gru0,mingru",
            ]
        )
        == 0
    )
    assert _fused.run_rows is runner
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| gru0") or ln.startswith("| mingru")]
    # gru0 in both reset forms, minGRU once (no reset gate); three positive timings each
    assert [ln.split("|")[1:3] for ln in lines] == [[" gru0 ", " True "], [" gru0 ", " False "], [" mingru ", " True "]]
    for ln in lines:
        assert all(float(c) > 0 for c in ln.split("|")[3:6])


def test_packing_compares_both_paths_of_one_layer(capsys):
    from gatedrnn._engines import _fused, _kernels

    packing = _load("packing")
    if "s" not in _kernels.packed_blas():
        assert packing.main(["--sizes", "D", "--threads", "1", "--repeats", "1"]) == 1
        return
    pack = _fused.PACK
    assert packing.main(["--sizes", "D", "--threads", "1", "--repeats", "2", "--variants", "gru0"]) == 0
    assert _fused.PACK is pack
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| D")]
    cells = [c.strip() for c in line.split("|")[1:-1]]
    assert cells[:4] == ["D", "1", "gru0", "True"]
    assert all(float(c) > 0 for c in cells[4:10])
    assert float(cells[10]) < 1e-4  # the same gradients either way (float32 rounding apart)


def test_percall_times_each_part_and_restores_them(capsys):
    from gatedrnn import _layers
    from gatedrnn._engines import _fused

    percall = _load("percall")
    before = [getattr(owner, name) for _, owner, name in percall.PARTS]
    assert percall.main(["--calls", "5"]) == 0
    assert [getattr(owner, name) for _, owner, name in percall.PARTS] == before
    assert _layers.rnn is before[1]
    rows = [ln.split("|")[1:-1] for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ")][1:]
    assert len(rows) == 13 and rows[-3][0].strip() == "total (forward+backward)"
    assert all(float(us) >= 0 for _, us in rows[-3:])
    assert "short" not in vars(_fused.ENGINE)


def test_revisions_exports_a_revision_that_imports_only_itself(tmp_path):
    """benchmarks/revisions.py compares against a git revision's package: every module of the
    exported copy must come from the copy (an absolute ``gatedrnn`` import left in it would
    silently run this checkout's code as the "old" side)."""
    import subprocess
    import sys

    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    revisions = _load("revisions")
    old = revisions.export("HEAD", dest=tmp_path)
    try:
        assert old.__name__.startswith("gatedrnn_") and old is not gatedrnn
        assert Path(old.__file__).is_relative_to(tmp_path)
        old.info()  # loads the engines' modules of the copy
        copies = {n: m for n, m in sys.modules.items() if n.split(".")[0] == old.__name__}
        assert f"{old.__name__}._engines._fused" in copies
        for name, mod in copies.items():
            assert Path(mod.__file__).is_relative_to(tmp_path), name
        # the copy's source names no module of this checkout
        for py in Path(old.__file__).parent.rglob("*.py"):
            assert not re.search(r"\b(from|import) gatedrnn\b", py.read_text()), py
        assert old.GRU is not gatedrnn.GRU
    finally:
        sys.path.remove(str(Path(old.__file__).parents[1]))
        for name in [n for n in sys.modules if n.split(".")[0] == old.__name__]:
            del sys.modules[name]


@pytest.mark.parametrize("variant", sorted(gatedrnn.SPECS))
@pytest.mark.parametrize("reset_after", [True, False])
def test_matmul_flops_counts_what_the_reference_engine_multiplies(variant, reset_after):
    """The benchmark's product count against torch's FLOP counter on the per-step reference engine
    (forward alone, and forward+backward with every input requiring grad)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from gatedrnn.bench import matmul_flops

    size = (3, 5, 4, 6)
    batch, steps, inp, hid = size
    mod = gatedrnn.GRU(inp, hid, variant=variant, reset_after=reset_after, engine="reference")
    x = torch.randn(steps, batch, inp, requires_grad=True)
    h0 = torch.randn(1, batch, hid, requires_grad=True)
    with torch.no_grad(), FlopCounterMode(display=False) as fwd:
        mod(x, h0)
    assert fwd.get_total_flops() == matmul_flops(variant, size, False)
    with FlopCounterMode(display=False) as both:
        y, h = mod(x, h0)
        (y.sum() + h.sum()).backward()
    assert both.get_total_flops() == matmul_flops(variant, size, True)


def test_roofline_table_from_timings():
    """The roofline table's figures, worked out by hand from made-up timings."""
    from gatedrnn import bench

    side = bench.SGEMM_SIDE
    gemm_ms = 2 * side**3 / 50e9 * 1e3  # a 50 GFLOP/s host
    size = bench.CPU_SIZES["D"]
    gflop = 3 * (2 * 200 * 16 * 64 * 192 + 2 * 200 * 16 * 64 * 192) / 1e9  # gru0 at D: 0.4719
    at_rate = gflop / 50 * 1e3  # 9.44 ms
    times = {
        "torch.nn.GRU": {"median_ms": 100.0},
        "fused:gru0": {"median_ms": 2 * at_rate},
        "floor:gru0": {"median_ms": at_rate / 0.8},
        f"sgemm:{side}": {"median_ms": gemm_ms},
    }
    rows = [
        {"size": "D", "shape": list(size), "threads": th, "pass": ps, "times": times}
        for th in (1, 2)
        for ps in ("fwd", "fwdbwd")
    ]
    lines = bench._tables._roofline(rows).splitlines()
    assert len(lines) == 4  # header, rule, one line per thread count (forward+backward only)
    one = [c.strip() for c in lines[2].split("|")[1:-1]]
    two = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert one[1:] == [
        "1",
        f"{gflop:.3f}",
        "50.0",
        f"{at_rate:.2f}",
        f"{at_rate / 0.8:.2f} (80%)",
        f"{2 * at_rate:.2f} (50%)",
    ]
    assert two[1] == "2"
    assert (
        bench._tables._roofline([{**rows[1], "times": {k: v for k, v in times.items() if k != f"sgemm:{side}"}}]) == ""
    )


def _made_up_results() -> list[dict]:
    """One size, both thread counts, forward+backward: gru0 10 ms, gru3 5 ms, minGRU 2 ms."""
    from gatedrnn import bench

    times = {
        "torch.nn.GRU": {"median_ms": 100.0, "min_ms": 90.0},
        "fused:gru0": {"median_ms": 10.0, "min_ms": 9.0},
        "fused:gru3": {"median_ms": 5.0, "min_ms": 4.0},
        "fused:mingru": {"median_ms": 2.0, "min_ms": 1.0},
    }
    shape = list(bench.CPU_SIZES["D"])
    return [
        {"size": "D", "shape": shape, "dtype": "float32", "threads": th, "pass": "fwdbwd", "times": times}
        for th in (1, 2)
    ]


def test_proportions_table_from_timings():
    from gatedrnn import bench

    lines = bench._tables._proportions(_made_up_results(), "cpu").splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == ["size (B,T,m,n)", "threads", "dtype", "gru3", "mingru"]
    assert len(lines) == 4
    # D = (16, 200, 64, 64): gru0 multiplies 3 blocks of the input and 3 of the state, gru3 one of
    # each, minGRU two of the input and none of the state
    gru0 = 3 * 200 * 16 * 64 * 192
    gru3 = 3 * 200 * 16 * 64 * 64
    mingru = 3 * 200 * 16 * 64 * 128 // 2
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert cells[3:] == [f"0.50 ({gru3 / gru0:.2f})", f"0.20 ({mingru / gru0:.2f})"]
    assert (
        bench._tables._proportions(
            [{**r, "times": {"torch.nn.GRU": {"median_ms": 1.0}}} for r in _made_up_results()], "cpu"
        )
        == ""
    )


def test_report_reprints_a_saved_run_and_refuses_other_files(tmp_path):
    import json

    from gatedrnn import bench

    data = {"device": "cpu", "results": _made_up_results(), "machine": {"cpu": "made-up CPU"}, "repeats": 3}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    out = bench.report_file(str(path))
    assert "| D (16,200,64,64) | 2 | fwdbwd |" not in out  # no baselines table row without a pass column
    assert "| D (16,200,64,64) | float32 | 2 | fwdbwd | gru0 | 10.00 | 0.100 |" in out
    assert "Machine: made-up CPU" in out
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(bench.BenchError, match=r"--report.*bad\.json"):
        bench.report_file(str(tmp_path / "bad.json"))
    with pytest.raises(bench.BenchError, match="cannot read"):
        bench.report_file(str(tmp_path / "missing.json"))


def test_a_run_prints_what_its_json_reprints_and_keeps_an_existing_json(tmp_path, capsys):
    """The tables a run prints are a function of the JSON it saves (a tiny real run); a second run
    onto the same JSON is refused unless asked to overwrite it."""
    import json

    from gatedrnn import bench

    path = tmp_path / "speed.json"
    opts = bench.Options(
        sizes=["E"],
        variants=["gru0", "mingru"],
        threads=[1],
        passes=["fwdbwd"],
        repeats=1,
        warmup=0,
        baselines=False,
        memory=False,
        json=str(path),
    )
    bench.run(opts)
    printed = capsys.readouterr().out
    data = json.loads(path.read_text())
    assert printed == bench.report(data) + f"\nJSON: {path}\n"
    assert set(data["results"][0]["times"]) >= {
        "torch.nn.GRU",
        "fused:gru0",
        "floor:gru0",
        f"sgemm:{bench.SGEMM_SIDE}",
    }
    assert data["matmul_gflop"]["E"]["gru0"] == bench.matmul_flops("gru0", bench.CPU_SIZES["E"], True) / 1e9
    assert data["compile"] is None  # compile timing is asked for, never run by default
    before = path.read_bytes()
    with pytest.raises(bench.BenchError, match="--overwrite"):
        bench.run(opts)
    assert path.read_bytes() == before


def test_options_name_the_bad_option_and_default_to_the_registry():
    import dataclasses

    from gatedrnn import bench

    opts = bench.Options().checked()
    assert opts.variants == list(gatedrnn.SPECS) and opts.sizes == list(bench.CPU_SIZES)
    assert opts.dtypes == ["float32"] and not opts.compile_time
    for field, value, fragment in [
        ("sizes", ["Z"], "--sizes"),
        ("variants", ["gru9"], "--variants"),
        ("threads", [0], "--threads"),
        ("passes", ["bwd"], "--passes"),
        ("repeats", 0, "--repeats"),
        ("device", "tpu", "--device"),
    ]:
        with pytest.raises(bench.BenchError, match=fragment):
            dataclasses.replace(bench.Options(), **{field: value}).checked()


def test_yardstick_table_from_timings():
    """Each candidate's share of the GEMM rate and its time ÷ torch.nn.GRU and ÷ torch.nn.LSTM,
    worked out by hand from made-up timings (MKL at 50 GFLOP/s and oneDNN at 100, size D,
    forward+backward): the share is of the faster rate."""
    from gatedrnn import bench

    side = bench.SGEMM_SIDE
    gemm_ms = 2 * side**3 / 50e9 * 1e3
    gru0_gflop = 3 * (2 * 3200 * 64 * 192 + 2 * 3200 * 64 * 192) / 1e9  # (B*T = 3200 rows) 0.4719
    lstm_gflop = 3 * 2 * 3200 * (64 + 64) * 256 / 1e9  # four blocks of x and of h: 0.6291
    gru0_ms = gru0_gflop / 50 * 1e3 / 0.5  # half the rate: 18.87 ms
    lstm_ms = lstm_gflop / 50 * 1e3 / 0.3  # 30% of MKL's rate: 41.94 ms
    times = {
        "torch.nn.GRU": {"median_ms": 100.0},
        "torch.nn.LSTM": {"median_ms": lstm_ms},
        "fused:gru0": {"median_ms": gru0_ms},
        f"sgemm:{side}": {"median_ms": gemm_ms},
        f"onednn:{side}": {"median_ms": gemm_ms / 2},  # twice the rate
    }
    row = {"size": "D", "shape": list(bench.CPU_SIZES["D"]), "dtype": "float32", "threads": 2, "pass": "fwdbwd"}
    lines = bench._tables._yardsticks([{**row, "times": times}], "cpu").splitlines()
    assert lines[1].startswith("Forward+backward, 2 thread(s), float32")
    assert [c.strip() for c in lines[3].split("|")[1:-1]] == [
        "size (B,T,m,n)",
        "MKL GFLOP/s",
        "oneDNN GFLOP/s",
        "nn.GRU ms",
        "nn.GRU",
        "nn.LSTM",
        "gru0",
    ]
    cells = [c.strip() for c in lines[5].split("|")[1:-1]]
    assert cells[1:4] == ["50.0", "100.0", "100.00"]
    assert cells[4] == f"{100 * gru0_gflop / 100 / 0.1:.0f}% · 1.000 · {100 / lstm_ms:.3f}"  # 5% · 1.000 · 2.384
    assert cells[5] == f"15% · {lstm_ms / 100:.3f} · 1.000"  # 30% of MKL's rate: 15% of oneDNN's
    assert cells[6] == f"25% · {gru0_ms / 100:.3f} · {gru0_ms / lstm_ms:.3f}"  # 25% · 0.189 · 0.450
    # without oneDNN's product the share is of MKL's rate
    mkl_only = {k: v for k, v in times.items() if k != f"onednn:{side}"}
    cells = [
        c.strip() for c in bench._tables._yardsticks([{**row, "times": mkl_only}], "cpu").splitlines()[5].split("|")
    ]
    assert cells[2:4] == ["50.0", "-"] and cells[-2].startswith("50% · ")
    # without the large product and torch.nn.LSTM (--no-baselines), those parts are "-"
    bare = {k: v for k, v in times.items() if k in ("torch.nn.GRU", "fused:gru0")}
    cells = [c.strip() for c in bench._tables._yardsticks([{**row, "times": bare}], "cpu").splitlines()[5].split("|")]
    assert cells[2:-1] == ["-", "-", "100.00", "- · 1.000 · -", f"- · {gru0_ms / 100:.3f} · -"]


def test_the_header_names_the_cpu_and_its_instruction_sets():
    from gatedrnn.bench import _machine, _tables

    flags = set("fpu sse avx avx2 fma avx512f avx512bw avx512_bf16".split())
    assert _machine.cpu_isa(flags) == ["AVX2", "AVX-512", "AVX512-BF16"]
    assert _machine.cpu_isa({"avx2", "amx_tile", "amx_bf16", "avx512f"}) == ["AVX2", "AVX-512", "AMX"]
    assert _machine.cpu_isa({"sse4_2"}) == []
    assert _machine.bf16_hardware(["AVX2", "AVX-512", "AMX"]) and not _machine.bf16_hardware(["AVX2"])
    head = _tables._header({"cpu": "Made-up CPU", "isa": ["AVX2"], "logical_cpus": 2})
    assert head == "CPU: Made-up CPU; ISA: AVX2; 2 logical CPUs"
    assert "ISA: not recorded" in _tables._header({"cpu": "old run"})


def test_bfloat16_against_float32_table_from_timings():
    """Each candidate's bfloat16 time ÷ its own float32 time, same size, threads and pass; the title
    says whether the CPU has bfloat16 instructions."""
    from gatedrnn import bench

    rows = [
        {"size": "A", "shape": [64, 28, 28, 128], "threads": 1, "pass": "fwdbwd", "dtype": dt, "times": t}
        for dt, t in [
            ("float32", {"torch.nn.GRU": {"median_ms": 40.0}, "fused:gru0": {"median_ms": 20.0}}),
            ("bfloat16", {"torch.nn.GRU": {"median_ms": 10.0}, "fused:gru0": {"median_ms": 15.0}}),
        ]
    ]
    lines = bench._tables._half_speed(rows, "cpu").splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == ["size (B,T,m,n)", "threads", "pass", "nn.GRU", "gru0"]
    assert [c.strip() for c in lines[2].split("|")[1:-1]] == ["A (64,28,28,128)", "1", "fwdbwd", "0.25", "0.75"]
    assert bench._tables._half_speed(rows[:1], "cpu") == ""  # no bfloat16 run: no table
    assert "emulated" in bench._tables._half_note({"isa": ["AVX2", "AVX-512"]})
    assert "in hardware: AMX" in bench._tables._half_note({"isa": ["AVX2", "AMX"]})


def test_options_layer_norm_cell_computes_the_layer_norm_gru():
    """benchmarks/options.py's per-step Python LayerNormGRUCell (what it times the fused engine
    against) computes gatedrnn's layer_norm=True equations: outputs, h_n and input gradients of
    the reference engine, with gains, shifts and biases away from 1 and 0."""
    import torch

    options = _load("options")
    torch.manual_seed(0)
    gru = gatedrnn.GRU(5, 7, layer_norm=True, engine="reference", dtype=torch.float64)
    with torch.no_grad():
        for p in gru.parameters():
            p.uniform_(-0.8, 0.8)
    cell = options.LayerNormGRU(5, 7).double().load_from(gru)
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    gy = torch.randn(6, 3, 7, dtype=torch.float64)
    outs = []
    for mod in (gru, cell):
        xx = x.clone().requires_grad_(True)
        y, hn = mod(xx)
        (y * gy).sum().backward()
        outs.append((y.detach(), hn.reshape(3, 7).detach(), xx.grad))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_options_benchmark_prints_its_table(capsys):
    options = _load("options")
    assert options.main(["--sizes", "E", "--threads", "1", "--repeats", "1", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith("| E "))
    assert all(float(c) > 0 for c in row.split("|")[3:-1])
    assert "load average" in out
