"""Hardware for tiny models that prices them as a GPU prices a model of production size: the
zoo's tiny configs (d_model 32, sequence 16, batch 4) are ~10^4-10^5x smaller in FLOPs and
~10^3x in bytes than GPT-2 small at batch 8, so an H200 with FLOP/s, HBM and link bandwidth
scaled down by those factors (and no latency) sees the same trade-offs between compute,
communication and memory that it sees at full size."""
import dataclasses

from shardc import hardware


def scaled_h200(flops: float = 1e-5, bw: float = 3e-4):
    hw = hardware.get("h200")
    levels = tuple(dataclasses.replace(l, bw=l.bw * bw, alpha=0.0, launch=0.0, full_at=0.0) for l in hw.levels)
    return dataclasses.replace(hw, name="h200-scaled", peak_flops={k: v * flops for k, v in hw.peak_flops.items()},
                               hbm_bw=hw.hbm_bw * bw, levels=levels)
