"""The pipeline analysis against published large-scale training throughput (bench/published_figures.py):
GPT-3 175B on 1,024 A100s and the 145.6B row of Table 1 on 1,536 A100s (Narayanan et al. SC'21),
and Llama 3 405B on 8,192 H100s (Meta 2024, Table 4). Each model is captured shape-only with
three layers over three stages and read off at full depth."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))


@pytest.mark.slow
def test_published_figures():
    import published_figures as pf
    res = pf.figures()
    # The figures as published (TFLOP/s per GPU, counted as each source counts them).
    assert [res[k]["published_tflops_per_gpu"] for k in ("gpt3-175b-a100", "table1-146b-a100", "llama3-405b-h100")] \
        == [140.0, 148.0, 430.0]
    assert [res[k]["gpus"] for k in ("gpt3-175b-a100", "table1-146b-a100", "llama3-405b-h100")] == [1024, 1536, 8192]
    # The modeled figures (bench/published_figures.py, 2026-12-05, session 6): 168.6, 170.7 and
    # 399.6 TFLOP/s per GPU (163.8, 165.5 and 391.3 before the partitioner kept Megatron's fused-QKV
    # layout, fd7872a, and FSDP's Adam state stopped being gathered, 4020ca8). The roofline model is
    # faster than Megatron's 2021 A100 runs (it prices GEMMs at
    # peak and leaves out dropout and launch gaps: GPT-3 175B now reads 1.204 of the published 140) and slower than Meta's H100 run (it prices
    # attention unfused at s=8,192 and sends each device's whole activation between stages). The Llama row
    # runs Meta's V=8 interleaving (one layer per chunk, the first and last chunks without one).
    assert res["gpt3-175b-a100"]["modeled_tflops_per_gpu"] == pytest.approx(168.6, rel=0.03)
    assert res["table1-146b-a100"]["modeled_tflops_per_gpu"] == pytest.approx(170.7, rel=0.03)
    assert res["llama3-405b-h100"]["modeled_tflops_per_gpu"] == pytest.approx(399.6, rel=0.03)
    for r in res.values():
        assert 0.8 < r["ratio"] < 1.21
    assert 0.0 < res["gpt3-175b-a100"]["bubble_fraction"] < 0.2
