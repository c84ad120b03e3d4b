"""Vision models end to end: a ResNet-18-style CNN and a ViT block (torch), a U-Net down/up block
(JAX), each captured, partitioned over dp × tp (batch over dp, convolution output channels /
attention heads and MLP columns over tp), simulated (== the framework's own result) and run as
generated kernels on the interpreters (Triton for the torch models, Pallas for the JAX one); and
the special-function decompositions as kernels on both. Small shapes; fresh random inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax import lax

import shardc
from shardc import Mesh, P

TOL = 1e-4


def _close(got, want, what):
    want = np.asarray(want, np.float32)
    err = np.max(np.abs(np.asarray(got, np.float32) - want)) / max(np.max(np.abs(want)), 1e-6)
    assert err <= TOL, f"{what}: relative error {err:.2e}"


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDC_CACHE_DIR", str(tmp_path / "cache"))


# ---- torch: ResNet-18-style CNN ------------------------------------------------------------
class BasicBlock(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (x if self.down is None else self.down(x)))


class ResNet(torch.nn.Module):
    """ResNet-18's layout (7x7/2 stem, 3x3/2 max pool, basic blocks with 1x1/2 downsampling,
    global average pool, linear head) at toy width and depth."""

    def __init__(self, width=8, classes=10):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn = torch.nn.BatchNorm2d(width)
        self.layer1 = BasicBlock(width, width, 1)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.fc = torch.nn.Linear(2 * width, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.stem(x))), 3, 2, 1)
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _randomize_bn(model, gen):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


RESNET_SPECS = {"x": P("dp", None, None, None), "*conv*.weight": P("tp", None, None, None),
                "stem.weight": P("tp", None, None, None)}


# ---- torch: ViT block ----------------------------------------------------------------------
class ViTBlock(torch.nn.Module):
    """Patch embedding (a strided conv), class token, position embedding, one pre-norm encoder
    block (multi-head attention, GELU MLP) and a classification head."""

    def __init__(self, dim=16, heads=4, patch=4, image=16, classes=10):
        super().__init__()
        self.heads = heads
        self.patch = torch.nn.Conv2d(3, dim, patch, patch)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos = torch.nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.1)
        self.ln1 = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.ln2 = torch.nn.LayerNorm(dim)
        self.fc1 = torch.nn.Linear(dim, 4 * dim)
        self.fc2 = torch.nn.Linear(4 * dim, dim)
        self.head = torch.nn.Linear(dim, classes)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        b, n, d = t.shape
        q, k, v = self.qkv(self.ln1(t)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        t = t + self.proj(a)
        t = t + self.fc2(F.gelu(self.fc1(self.ln2(t))))
        return self.head(t[:, 0])


VIT_SPECS = {"x": P("dp", None, None, None), "qkv.weight": P("tp", None), "proj.weight": P(None, "tp"),
             "fc1.weight": P("tp", None), "fc2.weight": P(None, "tp")}


@pytest.mark.parametrize("which", ["resnet", "vit"])
def test_torch_vision_model(which):
    gen = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 30)))
    torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=gen)))
    model = (ResNet() if which == "resnet" else ViTBlock()).eval()
    if which == "resnet":
        _randomize_bn(model, gen)
    # the Triton interpreter's time grows with the elements each kernel covers: small images
    x = torch.randn(2, 3, 8, 8, generator=gen) if which == "resnet" else torch.randn(4, 3, 16, 16, generator=gen)
    with torch.no_grad():
        want = model(x).numpy()
    g = shardc.from_torch(model, (x,))
    _close(g.evaluate(x)[0], want, "evaluate")
    prog = shardc.partition(g, Mesh({"dp": 2, "tp": 2}), specs=RESNET_SPECS if which == "resnet" else VIT_SPECS)
    assert any("tp" in c.axes for c in prog.collectives)  # inference: dp needs no collective
    _close(prog.simulate(x)[0], want, "simulate")
    exe = shardc.compile(prog, "triton")
    assert exe.kernels
    _close(exe.run_interpreted(x)[0], want, "triton kernels (interpreted)")


# ---- JAX: U-Net down/up block --------------------------------------------------------------
def _conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def unet_block(params, x):
    """Down: conv-relu, conv-relu, 2x2 max pool; bottom conv; up: 2x2 transposed conv, concatenate
    the skip, conv-relu; 1x1 head."""
    d = jax.nn.relu(_conv(x, params["down1"]))
    d = jax.nn.relu(_conv(d, params["down2"]))
    p = lax.reduce_window(d, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    m = jax.nn.relu(_conv(p, params["mid"]))
    u = lax.conv_transpose(m, params["up"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    u = jax.nn.relu(_conv(jnp.concatenate([u, d], -1), params["fuse"]))
    return _conv(u, params["head"])


def test_jax_unet_block():
    rng = np.random.default_rng()
    shapes = {"down1": (3, 3, 3, 8), "down2": (3, 3, 8, 8), "mid": (3, 3, 8, 16), "up": (2, 2, 16, 8),
              "fuse": (3, 3, 16, 8), "head": (1, 1, 8, 2)}
    params = {k: (rng.standard_normal(s) / np.sqrt(np.prod(s[:3]))).astype(np.float32) for k, s in shapes.items()}
    x = rng.standard_normal((4, 8, 8, 3)).astype(np.float32)
    want = np.asarray(unet_block(params, x))
    g = shardc.from_jax(unet_block, params, x)
    _close(g.evaluate(params, x)[0], want, "evaluate")
    specs = {"x": P("dp", None, None, None), "params['down2']": P(None, None, None, "tp"),
             "params['mid']": P(None, None, None, "tp"), "params['fuse']": P(None, None, None, "tp")}
    prog = shardc.partition(g, Mesh({"dp": 2, "tp": 2}), specs=specs)
    _close(prog.simulate(params, x)[0], want, "simulate")
    exe = shardc.compile(prog, "pallas")
    assert exe.kernels
    _close(exe.run_interpreted(params, x)[0], want, "pallas kernels (interpreted)")


@pytest.mark.parametrize("target", ["triton", "pallas"])
def test_numerics_decompositions_as_kernels(target):
    """The special-function decompositions (select-heavy polynomials, scans) fuse into kernels that
    agree with torch on the interpreters, batch split over two devices."""
    x, y, p = torch.randn(4, 8), torch.randn(4, 8), torch.rand(4, 8) * 3 + 0.1

    def f(x, y, p):
        return (torch.atan2(x, y), torch.asinh(x), torch.lgamma(p), torch.digamma(p), torch.special.bessel_j0(5 * x),
                torch.cumprod(x, 1), torch.cummax(x, 1)[0], torch.special.chebyshev_polynomial_t(x, 4 * p))
    want = f(x, y, p)
    prog = shardc.partition(shardc.from_torch(f, (x, y, p)), Mesh({"x": 2}), specs={"x": P("x", None)})
    for got, w in zip(shardc.compile(prog, target).run_interpreted(x, y, p), want):
        np.testing.assert_allclose(np.asarray(got), w.numpy(), rtol=1e-4, atol=1e-4)
