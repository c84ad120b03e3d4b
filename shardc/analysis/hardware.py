"""Hardware presets: peak FLOP/s per dtype, HBM capacity and bandwidth, and the interconnect as
levels from fastest to slowest, for the accelerators shardc models.

    hw = shardc.hardware.get("h200")             # h100 h200 b200 a100 tpu-v5e tpu-v5p tpu-v6e
    hw.peak_flops["bf16"], hw.hbm_bytes, hw.hbm_bw, hw.levels
    hw.vmem_bytes, hw.scoped_vmem_bytes           # TPUs: VMEM per core, default Pallas kernel limit
    hw.axis_levels(mesh)                          # mesh axis -> [(level, factor), ...]

A GPU cluster has two levels: NVLink inside an 8-GPU node and InfiniBand across nodes (one NIC per
GPU, the HGX/DGX layout). A TPU slice has one ICI level per torus axis and DCN across slices.
Mesh axes map onto levels innermost first (the last mesh axis on the fastest level, as
`jax.experimental.mesh_utils` and torchrun's rank order lay devices out); an axis larger than
what is left of a level spans the next one too (its collectives then run hierarchically).

Every constant cites where it comes from. Bandwidths are per device, one direction, in bytes/s,
as a ring collective sees them: a GPU's NVLink bandwidth is half the datasheet's bidirectional
figure; a TPU torus axis with wraparound gives a ring both of its links (scaling book, part 3).
Latencies (α per ring step, and a launch cost per collective) are not datasheet numbers: they
come from small-message nccl-tests and the scaling book's ICI measurements, as cited below.
"""
from __future__ import annotations

import dataclasses
import math

from ..errors import Error


@dataclasses.dataclass(frozen=True)
class Level:
    """One level of the interconnect: `size` devices (of the level below each) joined by links of
    `bw` bytes/s per device per direction, with `alpha` seconds per ring step and `launch`
    seconds once per collective (starting it and synchronizing its devices)."""
    name: str
    size: int            # devices this level joins (math.inf-like large for the outermost level)
    bw: float            # bytes/s per device, one direction, as a ring achieves it
    alpha: float         # seconds of latency per ring step
    launch: float = 0.0  # seconds per collective, whatever its size
    full_at: float = 0.0  # bytes from which a collective gets all of `bw` (below: √(B / full_at) of it)
    ring_step: float | None = None  # seconds per step of a ring run inside one kernel (None: as a permute)
    links: int = 1       # links a ring uses at once, one each way round (2 on a torus axis with
    #                      wraparound): `bw` is theirs together; a one-way permute gets one, bw / links
    nvls: float = 0.0    # all-reduce with in-switch reduction (NVLink SHARP): its algbw over `bw`; 0: none
    nvls_full_at: float = 0.0  # bytes from which it gets all of that (below: (B / nvls_full_at)^(1/4) of it)

    def permute_bw_for(self, nbytes: float) -> float:
        """Bandwidth of a collective-permute: each device sends to one peer, over one link."""
        return self.bw_for(nbytes) / self.links

    @property
    def nvls_bw(self) -> float:
        """All-reduce bandwidth through the switch's reduction (algbw: buffer bytes per second)."""
        return self.nvls * self.bw

    def nvls_bw_for(self, nbytes: float) -> float:
        """`nvls_bw` for a message of `nbytes`: it ramps up more gently than a ring's (a quarter
        power, fitted to the published H100 run below), and not at all on a level without a ramp."""
        if not self.full_at or nbytes >= self.nvls_full_at:
            return self.nvls_bw
        return self.nvls_bw * (max(nbytes, 1.0) / self.nvls_full_at) ** 0.25

    def bw_for(self, nbytes: float) -> float:
        """Bandwidth a collective of `nbytes` gets: NCCL spreads a message over more channels and
        a deeper pipeline as it grows, so mid-size messages see a fraction of the links."""
        if nbytes >= self.full_at:
            return self.bw
        return self.bw * math.sqrt(max(nbytes, 1.0) / self.full_at)


@dataclasses.dataclass(frozen=True)
class Hardware:
    name: str
    peak_flops: dict      # dtype name ("bf16", "f16", "f32", "fp8") -> dense FLOP/s per device
    hbm_bytes: float      # device memory capacity
    hbm_bw: float         # device memory bandwidth, bytes/s
    levels: tuple         # Level, fastest first; the last one joins everything beyond
    source: str           # the datasheet the compute and memory numbers come from
    ring: str = "collectives"  # how a collective matmul's ring runs: "collectives" (each step its
    #                            own permute, as shardc's engines issue it) or "kernel" (one kernel)
    vmem_bytes: int = 0         # TPU: vector memory (VMEM) per TensorCore; 0 on GPUs
    scoped_vmem_bytes: int = 0  # TPU: the VMEM a kernel may use unless it passes vmem_limit_bytes

    def flops_for(self, dtype) -> float:
        """Peak FLOP/s for an op computing in `dtype` (an IR DType or its name)."""
        key = getattr(dtype, "value", dtype)
        return self.peak_flops.get(key, self.peak_flops["f32"])

    def with_ring(self, ring: str) -> "Hardware":
        """The same device with collective-matmul rings priced as `ring` runs them."""
        if ring not in RINGS:
            raise Error(f"hardware {self.name}: ring {ring!r}; rings: {', '.join(RINGS)}")
        return dataclasses.replace(self, ring=ring)

    def with_levels(self, levels) -> "Hardware":
        """The same device with another interconnect (a different node size, slice shape, ...)."""
        return dataclasses.replace(self, levels=tuple(levels))

    def axis_levels(self, mesh, order=None) -> dict[str, list[tuple[Level, int]]]:
        """For each mesh axis, the levels it spans and its factor on each: devices are numbered
        row-major, so the last axis (or the last of `order`) is innermost, on the fastest level."""
        axes = list(order or mesh.axis_names)[::-1]
        last = len(self.levels) - 1
        out, i, room = {}, 0, self.levels[0].size   # room: factor of the current level still free
        for a in axes:
            n, spans = mesh.axes[a], []
            while n > 1:
                if i == last:
                    spans.append((self.levels[i], n))
                    break
                if room <= 1:
                    i += 1
                    room = self.levels[i].size
                    continue
                f = math.gcd(n, room)
                if f == 1:
                    f = min(n, room)                 # no common factor: take what fits
                spans.append((self.levels[i], f))
                n, room = -(-n // f), room // f
            out[a] = spans or [(self.levels[i], 1)]
        return out

    def __str__(self) -> str:
        lv = ", ".join(f"{l.name} x{l.size if l.size < 1 << 30 else '∞'} {l.bw / 1e9:g} GB/s" for l in self.levels)
        return (f"{self.name}: {self.peak_flops['bf16'] / 1e12:g} TFLOP/s bf16, {self.hbm_bytes / 1e9:g} GB HBM "
                f"at {self.hbm_bw / 1e12:g} TB/s; {lv}")


# How the permutes of a collective matmul's ring run. "collectives": each step is its own
# collective-permute, started and synchronized like any collective (the level's launch cost):
# what shardc's engines do (torch.distributed issues an NCCL send/recv per step; XLA a
# collective-permute-start/done per step). "kernel": the whole ring is one kernel whose devices
# write into each other's memory while the partial matmuls run and signal each step's arrival
# (a Pallas Mosaic GPU collective matmul; PyTorch async-TP's symmetric-memory ring): no launch
# per step, the level's `ring_step` for the signal and fence, and the link's full bandwidth
# (the small-message ramp `full_at` is NCCL's channel set-up, which a kernel's copies skip).
RINGS = ("collectives", "kernel")

BIG = 1 << 40   # the outermost level's size: it joins every node or slice

# ------------------------------------------------------------------------------------------ GPUs
# NVIDIA H100 SXM5 datasheet (nvidia.com/en-us/data-center/h100, "H100 SXM" column): dense
# (without sparsity) BF16/FP16 989 TFLOPS (the datasheet's 1,979 is with 2:4 sparsity), FP8
# 1,979, TF32 495, FP32 67; 80 GB HBM3 at 3.35 TB/s; NVLink 4: 900 GB/s bidirectional per GPU.
_H100_FLOPS = {"bf16": 989e12, "f16": 989e12, "fp8": 1979e12, "tf32": 495e12, "f32": 67e12}
# NVLink bandwidth as NCCL achieves it: ~20% of the 450 GB/s line rate goes to protocol overhead,
# "NCCL can get an effective NVLink bandwidth of 370GB/s" (NCCL's maintainer, NVIDIA/nccl-tests
# issue 212). α ≈ 1 µs a ring step (an estimate). Launch: ~25 µs per collective on A100,
# what nccl-tests' all_reduce_perf -g 8 shows for 8 B to 32 KB on an 8-GPU NVLink node (A100 table
# below); Hopper's is ~13 µs (the H100 run below; B200 keeps A100's for want of a published run).
# Full bandwidth from 64 MB: below it nccl-tests' busbw grows about 2x per 4x of message size
# (the A100 table below: 1 MB 23.9, 4 MB 54.6, 16 MB 120, 64 MB 199 GB/s).
NCCL_EFFICIENCY = 370 / 450
NCCL_FULL_AT = 64 << 20
# A ring step inside one kernel: ~6 µs, "adding about 6us for each round of communication (the
# memory fences associated with the synchronization are expensive)" (JAX docs, Pallas Mosaic GPU
# "Collective matrix multiplication", its 8xH100 lower bound 386 µs = 8 x 43 µs + 7 x 6 µs).
RING_STEP_NVLINK = 6e-6
# NVLink SHARP (NVLS): on an NVSwitch node NCCL all-reduces through the switch (each GPU reads its
# slice reduced by the switch, then writes it once for the switch to multicast), so each link
# carries the buffer once each way instead of a ring's 2(n-1)/n times. "Now allreduce uses NVLink
# SHARP by default ... On 8 GPUs, you should reach a peak busBw of ~480GB/s (algbw ~275GB/s)"
# (NCCL's maintainer, NVIDIA/nccl-tests issue 212); an 8x H100 node's single-node run at 476 GB/s
# "looks to be in the expected range for H100" (NVIDIA, nccl-tests issue 290). algbw = busbw /
# (2(n-1)/n) at n = 8. Hopper's NVSwitch (third generation) has it; A100's does not.
# A published 8x H100 single-node all_reduce_perf (aws-samples/awsome-distributed-training,
# micro-benchmarks/nccl-tests/aws-batch/README.md, one p5 instance, out-of-place): 8 B 12.9 µs,
# 8 KB 16.85 µs, 1 MB 28.56 µs, 16 MB 124 µs, 64 MB 327 µs, 1 GB 4253 µs, 8 GB 31289 µs. Its floor
# is Hopper's launch (~13 µs; the 25 µs above is A100's older run), and above it the NVLS bandwidth
# grows as about the quarter power of the size (70 GB/s at 1 MB, 151 at 16 MB, 214 at 64 MB of
# transfer-only algbw) to the ~275 GB/s peak: full from ~173 MB on that curve.
LAUNCH_NVLINK4 = 13e-6
NVLS_FULL_AT_NVLINK4 = 173e6
NVLS_ALGBW_NVLINK4 = 480e9 / (2 * 7 / 8)
_NVLINK4 = Level("nvlink", 8, 450e9 * NCCL_EFFICIENCY, 1e-6, LAUNCH_NVLINK4, NCCL_FULL_AT, RING_STEP_NVLINK,
                 nvls=NVLS_ALGBW_NVLINK4 / (450e9 * NCCL_EFFICIENCY), nvls_full_at=NVLS_FULL_AT_NVLINK4)
# DGX H100/H200 and HGX reference designs: one ConnectX-7 400 Gb/s NDR InfiniBand NIC per GPU
# (nvidia.com DGX H100 datasheet: "8x NVIDIA ConnectX-7 ... 400 Gb/s") = 50 GB/s per direction.
# α ≈ 5 µs a step: IB switch hops plus NCCL's proxy (an estimate from small-message nccl-tests).
_IB_NDR = Level("infiniband", BIG, 50e9, 5e-6, 25e-6)

H100 = Hardware("h100", _H100_FLOPS, 80e9, 3.35e12, (_NVLINK4, _IB_NDR),
                "NVIDIA H100 Tensor Core GPU datasheet (SXM5)")
# NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200, "H200 SXM"): the same Hopper compute
# as H100 SXM; 141 GB HBM3e at 4.8 TB/s; NVLink 900 GB/s bidirectional.
H200 = Hardware("h200", dict(_H100_FLOPS), 141e9, 4.8e12, (_NVLINK4, _IB_NDR),
                "NVIDIA H200 Tensor Core GPU datasheet (SXM)")
# NVIDIA DGX B200 / HGX B200 datasheet: per GPU (the 8-GPU figures / 8) dense FP8 4.5 PFLOPS,
# BF16 2.25 PFLOPS, TF32 1.1 PFLOPS, FP32 ~75 TFLOPS (Blackwell architecture brief); 180 GB HBM3e
# at 8 TB/s (DGX B200: 1,440 GB and 64 TB/s total); NVLink 5: 1.8 TB/s bidirectional per GPU;
# ConnectX-7 400 Gb/s per GPU in DGX B200. (NVLink 5 has NVLS too; no published single-node busbw
# for it was found, so B200 all-reduces are priced as rings and trees.)
B200 = Hardware("b200", {"bf16": 2.25e15, "f16": 2.25e15, "fp8": 4.5e15, "tf32": 1.1e15, "f32": 75e12},
                180e9, 8e12, (Level("nvlink", 8, 900e9 * NCCL_EFFICIENCY, 1e-6, 25e-6, NCCL_FULL_AT, RING_STEP_NVLINK),
                              _IB_NDR),
                "NVIDIA DGX B200 datasheet (per GPU)")
# NVIDIA A100 datasheet (80GB SXM): BF16 312 TFLOPS dense, TF32 156, FP32 19.5; 80 GB HBM2e at
# 2,039 GB/s; NVLink 3: 600 GB/s bidirectional; DGX A100: 8x ConnectX-6 200 Gb/s HDR per GPU.
# nccl-tests all_reduce_perf -g 8 on one 8x A100-SXM4-40GB node (oracle-japan/ocitutorials, the
# OCI GPU cluster tutorial's single-node run): 8 KB 32.2 µs (busbw 0.44 GB/s), 1 MB 76.7 µs
# (23.9 GB/s), 1 GB 8.17 ms (230 GB/s); tests/unit/test_collective_model.py holds these points.
A100 = Hardware("a100", {"bf16": 312e12, "f16": 312e12, "tf32": 156e12, "f32": 19.5e12}, 80e9, 2.039e12,
                (Level("nvlink", 8, 300e9 * NCCL_EFFICIENCY, 1e-6, 25e-6, NCCL_FULL_AT, RING_STEP_NVLINK),
                 Level("infiniband", BIG, 25e9, 5e-6, 25e-6)),
                "NVIDIA A100 Tensor Core GPU datasheet (80GB SXM)")


# ------------------------------------------------------------------------------------------ TPUs
# ICI per-link bandwidths, one direction, from the JAX scaling book ("How to Scale Your Model",
# part 2, "TPU specs" table): v5e 4.5e10 B/s, v5p 9e10, v6e 9e10 per link one way. A torus axis
# with wraparound lets a ring use both directions of its two links per chip (part 3: "bidirectional
# ring"), so the ring bandwidth per chip on such an axis is 2 x one-way link bandwidth; an axis
# without wraparound (v5e/v6e below the full 16) gets half. A collective-permute sends each chip's
# buffer one way, over one of the two links (`Level.links`): one-way link bandwidth either way. The per-hop latency is the scaling
# book's ~1 µs ICI hop figure.
# DCN per chip, Google Cloud TPU docs: v5p "Data center network bandwidth per chip 50 Gbps"
# (6.25e9 B/s); v5e 2 x 100 Gbps NICs per 8-chip host (25 Gbps = 3.125e9 B/s per chip); v6e
# 4 x 200 Gbps NICs per 8-chip host (100 Gbps = 1.25e10 B/s per chip). DCN α ≈ 10 µs (estimate).
# Launch ≈ 3 µs per collective: the scaling book (part 3, pop quiz 2) measures ~8 µs for a 32 kB-
# per-shard all-gather over 4 v5e chips that its hop model puts at ~3 µs (3 hops of ~1 µs) plus
# ~2 µs of transfer.
def _tpu_levels(slice_shape, link_bw, wrap, dcn_bw):
    levels = [Level(f"ici-{'xyz'[i]}", n, link_bw * (2 if w else 1), 1e-6, 3e-6, links=2 if w else 1)
              for i, (n, w) in enumerate(zip(slice_shape, wrap))]
    return tuple(levels) + (Level("dcn", BIG, dcn_bw, 10e-6, 10e-6),)


# VMEM per TensorCore: jax's own table of TPU generations (jax 0.10.2,
# jax/_src/pallas/mosaic/tpu_info.py, shown in the JAX docs' "Pallas TPU Hardware Reference"):
# v5e 128 MiB, v5p 64 MiB, v6e 128 MiB. A kernel may use only the default scoped VMEM limit unless
# it passes vmem_limit_bytes (pltpu.CompilerParams; XLA's --xla_tpu_scoped_vmem_limit_kib sets it
# for a whole program: OpenXLA error E1001, "Compile Time Scoped Vmem OOM"). That default is 16 MiB
# on v5e and v5p and 32 MiB on v6e: v6e's "32.00M" is the limit XLA prints in
# vllm-project/tpu-inference PRs 3194 and 3407 ("exceeds XLA's 32 MiB default"); 16 MiB is the
# figure kernel libraries size their blocks for on v4/v5 (e.g. "the default scoped VMEM limit
# (commonly 16MiB)"), an observed default, not a datasheet number.
_MIB = 1 << 20
# Cloud TPU v5e docs: 197 TFLOPS bf16, 394 int8; 16 GB HBM2 at 819 GB/s; 2D torus, 256-chip pod.
TPU_V5E = Hardware("tpu-v5e", {"bf16": 197e12, "f16": 197e12, "f32": 197e12 / 4, "int8": 394e12}, 16e9, 819e9,
                   _tpu_levels((16, 16), 4.5e10, (True, True), 3.125e9), "Google Cloud TPU v5e docs",
                   vmem_bytes=128 * _MIB, scoped_vmem_bytes=16 * _MIB)
# Cloud TPU v5p docs: 459 TFLOPS bf16; 95 GB HBM2e at 2,765 GB/s; 3D torus. The default slice is
# 16x16x16 (4,096 chips) with wraparound on every axis; pass another with `get(..., slice=...)`.
TPU_V5P = Hardware("tpu-v5p", {"bf16": 459e12, "f16": 459e12, "f32": 459e12 / 4, "int8": 918e12}, 95e9, 2.765e12,
                   _tpu_levels((16, 16, 16), 9e10, (True, True, True), 6.25e9), "Google Cloud TPU v5p docs",
                   vmem_bytes=64 * _MIB, scoped_vmem_bytes=16 * _MIB)
# Cloud TPU v6e (Trillium) docs: 918 TFLOPS bf16, 1,836 int8; 32 GB HBM at 1,640 GB/s; 2D torus.
TPU_V6E = Hardware("tpu-v6e", {"bf16": 918e12, "f16": 918e12, "f32": 918e12 / 4, "int8": 1836e12}, 32e9, 1.64e12,
                   _tpu_levels((16, 16), 9e10, (True, True), 1.25e10), "Google Cloud TPU v6e docs",
                   vmem_bytes=128 * _MIB, scoped_vmem_bytes=32 * _MIB)
# f32 matmuls on TPUs run as multi-pass bf16 on the MXU; a quarter of the bf16 rate is the usual
# rule of thumb (an estimate: Google documents no f32 peak).

PRESETS = {h.name: h for h in (H100, H200, B200, A100, TPU_V5E, TPU_V5P, TPU_V6E)}
_TPU_LINK = {"tpu-v5e": 4.5e10, "tpu-v5p": 9e10, "tpu-v6e": 9e10}


def get(name, node: int | None = None, slice: tuple | None = None, ring: str | None = None) -> Hardware:  # noqa: A002
    """A preset by name (an existing Hardware passes through). `node` changes the GPUs per NVLink
    domain (e.g. 72 for an NVL72 rack); `slice` a TPU slice's torus shape, e.g. (8, 16, 16);
    `ring` how a collective matmul's ring runs ("collectives" or "kernel", see RINGS)."""
    if isinstance(name, Hardware):
        return name
    hw = PRESETS.get(str(name).lower())
    if hw is None:
        raise Error(f"unknown hardware {name!r}; presets: {', '.join(PRESETS)}")
    if node is not None:
        if hw.name.startswith("tpu"):
            raise Error(f"hardware {hw.name}: `node` is for GPUs; a TPU takes slice=(x, y[, z])")
        hw = hw.with_levels((dataclasses.replace(hw.levels[0], size=int(node)),) + hw.levels[1:])
    if slice is not None:
        if not hw.name.startswith("tpu"):
            raise Error(f"hardware {hw.name}: `slice` is for TPUs; a GPU takes node=N")
        wrap = tuple(n >= 16 or (hw.name == "tpu-v5p" and n % 4 == 0) for n in slice)
        hw = hw.with_levels(_tpu_levels(tuple(slice), _TPU_LINK[hw.name], wrap, hw.levels[-1].bw))
    if ring is not None:
        hw = hw.with_ring(ring)
    return hw


def names() -> list[str]:
    return list(PRESETS)
