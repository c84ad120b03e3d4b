"""The pipeline analysis against published large-scale training throughput (bench/published_figures.py):
GPT-3 175B on 1,024 A100s (Narayanan et al. SC'21) and Llama 3 405B on 8,192 H100s (Meta 2024).
Each model is captured shape-only with three layers over three stages and read off at full depth."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))


@pytest.mark.slow
def test_published_figures():
    import published_figures as pf
    res = pf.figures()
    # The figures as published (TFLOP/s per GPU, counted as each source counts them).
    assert res["gpt3-175b-a100"]["published_tflops_per_gpu"] == 140.0
    assert res["llama3-405b-h100"]["published_tflops_per_gpu"] == 430.0
    assert res["gpt3-175b-a100"]["gpus"] == 1024 and res["llama3-405b-h100"]["gpus"] == 8192
    # The modeled figures (bench/published_figures.py, 2026-12-05, with the collective model's NCCL
    # efficiency and launch costs): 161.2 and 337.6 TFLOP/s per GPU. The roofline model is faster
    # than Megatron's 2021 A100 run by 15% (it prices GEMMs at peak and leaves out dropout, loss
    # scaling and kernel launch gaps) and slower than Meta's H100 run by 21% (V=2 interleaving
    # assumed; Meta overlaps its pipeline sends and tunes more).
    assert res["gpt3-175b-a100"]["modeled_tflops_per_gpu"] == pytest.approx(161.2, rel=0.03)
    assert res["llama3-405b-h100"]["modeled_tflops_per_gpu"] == pytest.approx(337.6, rel=0.03)
    for r in res.values():
        assert 0.75 < r["ratio"] < 1.25
    assert 0.0 < res["gpt3-175b-a100"]["bubble_fraction"] < 0.2
