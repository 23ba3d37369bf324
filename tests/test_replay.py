"""`trainwarden replay` on CSV files, as a user runs it: JSON lines out, bad files named by line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cli

CURVES = Path(__file__).resolve().parents[1] / "benchmarks" / "curves"


def test_a_real_rebound_curve_gives_json_findings_at_its_label(tmp_path: Path) -> None:
    labels = json.loads((CURVES / "labels.json").read_text())
    name = next(n for n, lab in sorted(labels.items()) if lab["label"] == "rebound" and "jump" in n)
    onset = labels[name]["onsets"][0]
    out = cli("replay", CURVES / f"{name}.csv")
    assert out.returncode == 0, out.stderr
    findings = [json.loads(line) for line in out.stdout.splitlines()]
    first = next(f for f in findings if f["kind"] in ("spike", "nan", "divergence"))
    assert onset <= first["step"] <= onset + 100 and abs(first["onset"] - onset) <= 50
    assert first["action"] == "auto"


def test_a_healthy_curve_gives_no_rebound(tmp_path: Path) -> None:
    out = cli("replay", CURVES / "healthy_noisy_reg_b4_adam.csv")
    assert out.returncode == 0, out.stderr
    assert not [line for line in out.stdout.splitlines() if json.loads(line)["kind"] in ("spike", "nan", "divergence")]


def test_the_policy_file_sets_thresholds_and_modes(tmp_path: Path) -> None:
    csv = tmp_path / "curve.csv"
    csv.write_text("step,train_loss\n" + "".join(f"{i},{2.0 if 300 < i <= 320 else 1.0}\n" for i in range(1, 601)))
    policy = tmp_path / "p.toml"
    policy.write_text('[modes]\nspike = "ask"\n[detect]\nwindow = 20\nspike_ratio = 1.5\n')
    found = [json.loads(x) for x in cli("replay", csv, "--policy", policy).stdout.splitlines()]
    assert [(f["kind"], f["action"], f["onset"], f["step"]) for f in found] == [("spike", "ask", 301, 320)]
    policy.write_text("[detect]\nspike_ratio = 3.0\n")
    assert cli("replay", csv, "--policy", policy).stdout == ""


def test_empty_cells_and_non_finite_values_are_read(tmp_path: Path) -> None:
    csv = tmp_path / "curve.csv"
    rows = [f"{i},{1.0 / (1 + i / 100):.5f},{'0.5' if i % 50 == 0 else ''}" for i in range(1, 401)]
    rows[349] = "350,nan,"
    csv.write_text("step,train_loss,val_loss\n" + "\n".join(rows) + "\n")
    out = cli("replay", csv)
    assert out.returncode == 0, out.stderr
    assert [json.loads(x)["kind"] for x in out.stdout.splitlines()] == ["nan"]


@pytest.mark.parametrize("text, message", [
    ("step,loss\n1,0.5\n", "curve.csv:1: the header must name the columns step,train_loss[,val_loss], got step,loss"),
    ("step,train_loss\n1,0.5\n2,abc\n", "curve.csv:3: train_loss 'abc' is not a number"),
    ("step,train_loss\n1,0.5\n2.5,0.4\n", "curve.csv:3: step must be a whole number >= 0, got '2.5'"),
    ("step,train_loss\n5,0.5\n3,0.4\n", "curve.csv:3: step 3 is not after step 5 on the line before"),
    ("step,train_loss\n1,0.5,7\n", "curve.csv:2: expected 2 cells, got 3"),
    ("step,train_loss\n1,\n", "curve.csv: no training losses"),
])
def test_bad_csv_is_one_line_naming_the_line(tmp_path: Path, text: str, message: str) -> None:
    csv = tmp_path / "curve.csv"
    csv.write_text(text)
    out = cli("replay", csv)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainwarden: error: ") and message in lines[0]


def test_not_a_csv_nor_a_run(tmp_path: Path) -> None:
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00binary")
    out = cli("replay", tmp_path / "bin.csv")
    assert out.returncode == 2 and "not a text CSV file" in out.stderr
    out = cli("replay", tmp_path)
    assert out.returncode == 2 and "not a run folder" in out.stderr
    out = cli("replay", tmp_path / "missing.csv")
    assert out.returncode == 2 and "cannot read" in out.stderr
