"""`shardc analyze`: a production preset captured shape-only (one layer of Llama 3 70B), partitioned
with the default layout, analyzed, the verdict on device memory, and the report files."""
import json

from click.testing import CliRunner

from shardc.cli import main


def test_analyze_llama3_layer_fits_and_misses(tmp_path):
    args = ["analyze", "llama3:70b", "--layers", "1", "--seq", "128", "--batch", "16", "--mesh", "fsdp=4,tp=2", "--recompute", "full",
            "--train", "--optimizer", "adam", "--report", str(tmp_path)]
    r = CliRunner().invoke(main, args + ["--hardware", "h200"])
    assert r.exit_code == 0, r.output
    assert "(shape-only)" in r.output and "tp: nvlink x2, fsdp: nvlink x4" in r.output and "recompute full: +" in r.output
    assert "Fits: peak" in r.output and "to spare" in r.output
    data = json.loads((tmp_path / "analysis.json").read_text())
    assert data["fits"] and data["memory"]["params"] > 0 and data["mesh"] == {"fsdp": 4, "tp": 2}
    assert (tmp_path / "memory.svg").read_text().startswith("<svg")
    assert "compute: " in (tmp_path / "timeline.svg").read_text()
    # data parallel only (every chip holds all the state) on 16 GB TPU v5e chips: it misses, by how much
    args[args.index("fsdp=4,tp=2")] = "dp=8"
    r = CliRunner().invoke(main, args[:-2] + ["--hardware", "tpu-v5e"])
    assert r.exit_code == 0, r.output
    assert "Does NOT fit" in r.output and "exceeds tpu-v5e's 16.00 GB by" in r.output


def test_analyze_extrapolates_depth():
    r = CliRunner().invoke(main, ["analyze", "llama:tiny", "--layers", "12", "--extrapolate", "--mesh", "dp=2,tp=2",
                                  "--train", "--hardware", "tpu-v5p"])
    assert r.exit_code == 0, r.output
    assert "at 12 layers from 2 and 4 layers" in r.output and "Fits: peak" in r.output
    assert "tp: ici-x x2, dp: ici-x x2" in r.output
