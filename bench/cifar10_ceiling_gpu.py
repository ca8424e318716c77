"""How far airbench94's algorithm gets on the JPEG copy of CIFAR-10 as compute grows (PyTorch, one CUDA GPU).

Not a cnnlab benchmark: a measuring stick for issue #4's "≥ 94 % in 60 minutes"
target. airbench94 (K. Jordan, 2024) reports 94.01 % on the PNG originals with
width 1 for 9.9 epochs; this script runs the same algorithm (whitening
convolution, identity-initialised convolutions, BatchNorm with frozen scales,
GELU, label smoothing 0.2, Nesterov SGD with airbench's scaled learning rates,
warm-up and decay, lookahead averaging, alternating flips, 2-pixel
translations, 6-view test-time augmentation), rewritten here in PyTorch from
its description, on ``cifar10-jpg.zip`` with larger widths and more epochs, to
show where accuracy levels off on these JPEGs. cnnlab's Keras implementation
runs on the CPU; this one needs a GPU only to make 100× airbench94's compute
affordable.

Each configuration is ``WIDTH:EPOCHS[:SEEDS]``; ``relative compute`` is
width² × epochs / 9.9 (training FLOPs relative to airbench94, up to the
first layer's share).

Usage (Python with torch + CUDA, e.g. the device machine's python3):
    python bench/cifar10_ceiling_gpu.py --data ../shared/data/cifar10-jpg.zip
    python bench/cifar10_ceiling_gpu.py 0.75:13:3 1:9.9 2:40 4:80

Results are appended to bench/results/cifar10_ceiling_gpu.jsonl.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
import zipfile
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DEFAULT_CONFIGS = ("0.75:13", "1:9.9", "1:20", "2:40", "4:80")


def _decode(item):
    import numpy as np
    from PIL import Image

    name, data = item
    return name, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def load_cifar(path: Path) -> dict:
    """{"train": (uint8 NHWC, labels), "test": ...} from the zip or an unpacked folder."""
    import numpy as np

    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        items = [(str(p.relative_to(path)), p.read_bytes()) for p in files]
    else:
        with zipfile.ZipFile(path) as zf:
            items = [
                (n, zf.read(n))
                for n in zf.namelist()
                if n.lower().endswith((".jpg", ".jpeg", ".png"))
            ]
    with Pool() as pool:
        decoded = pool.map(_decode, items, chunksize=500)
    out = {}
    for split in ("train", "test"):
        pairs = []
        for name, arr in decoded:
            parts = Path(name).parts
            if split in parts:
                pairs.append((CLASSES.index(parts[parts.index(split) + 1]), arr))
        out[split] = (np.stack([a for _, a in pairs]), np.array([c for c, _ in pairs]))
    return out


def make_net(width: float):
    import torch
    from torch import nn

    class BatchNorm(nn.BatchNorm2d):
        def __init__(self, c):
            super().__init__(c, eps=1e-12, momentum=0.4)  # running stats move 40 % per step
            self.weight.requires_grad = False

    class Conv(nn.Conv2d):
        def __init__(self, cin, cout, k=3, padding="same", bias=False):
            super().__init__(cin, cout, kernel_size=k, padding=padding, bias=bias)

        def reset_parameters(self):
            super().reset_parameters()
            if self.bias is None:  # identity in the first cin filters
                nn.init.dirac_(self.weight.data[: self.weight.size(1)])

    class Group(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv1, self.pool, self.norm1 = Conv(cin, cout), nn.MaxPool2d(2), BatchNorm(cout)
            self.conv2, self.norm2, self.act = Conv(cout, cout), BatchNorm(cout), nn.GELU()

        def forward(self, x):
            x = self.act(self.norm1(self.pool(self.conv1(x))))
            return self.act(self.norm2(self.conv2(x)))

    class Scale(nn.Module):
        def forward(self, x):
            return x / 9

    w = [round(64 * width), round(256 * width), round(256 * width)]
    net = nn.Sequential(
        Conv(3, 24, 2, padding=0, bias=True),
        nn.GELU(),
        Group(24, w[0]),
        Group(w[0], w[1]),
        Group(w[1], w[2]),
        nn.MaxPool2d(3),
        nn.Flatten(),
        nn.Linear(w[2], 10, bias=False),
        Scale(),
    )
    net[0].weight.requires_grad = False
    return net.cuda().to(memory_format=torch.channels_last)


def init_whitening(layer, x, eps: float = 5e-4) -> None:
    """Set the 2x2 filters to the eigenvectors of the patch covariance (and their negatives)."""
    import torch

    c, (h, w) = x.shape[1], layer.weight.shape[2:]
    patches = x.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w).float()
    flat = patches.view(len(patches), -1)
    evals, evecs = torch.linalg.eigh(flat.T @ flat / len(flat), UPLO="U")
    evals, evecs = evals.flip(0).view(-1, 1, 1, 1), evecs.T.reshape(c * h * w, c, h, w).flip(0)
    scaled = evecs / torch.sqrt(evals + eps)
    layer.weight.data[:] = torch.cat((scaled, -scaled))


def tta_logits(net, x):
    import torch.nn.functional as F

    def mirror(z):
        return 0.5 * net(z) + 0.5 * net(z.flip(-1))

    p = F.pad(x, (1,) * 4, "reflect")
    return 0.5 * mirror(x) + 0.25 * (mirror(p[:, :, 0:32, 0:32]) + mirror(p[:, :, 2:34, 2:34]))


def train_and_test(data: dict, width: float, epochs: float, seed: int) -> dict:
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(seed)
    mean = torch.tensor([125.307, 122.961, 113.8575], device="cuda").view(1, 3, 1, 1)
    std = torch.tensor([51.5865, 50.847, 51.255], device="cuda").view(1, 3, 1, 1)

    def prep(a):
        x = torch.tensor(a, device="cuda").permute(0, 3, 1, 2).float()
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

    xtr, ytr = prep(data["train"][0]), torch.tensor(data["train"][1], device="cuda")
    xte, yte = prep(data["test"][0]), torch.tensor(data["test"][1], device="cuda")
    bs, momentum = 1024, 0.85
    kilo = 1024 * (1 + 1 / (1 - momentum))
    lr, wd = 11.5 / kilo, 0.0153 * bs / kilo
    lr_bias = lr * 64.0
    steps_per_epoch = len(xtr) // bs
    total = math.ceil(steps_per_epoch * epochs)
    net = make_net(width)
    norm_biases = [p for k, p in net.named_parameters() if "norm" in k and p.requires_grad]
    others = [p for k, p in net.named_parameters() if "norm" not in k and p.requires_grad]
    opt = torch.optim.SGD(
        [
            dict(params=norm_biases, lr=lr_bias, weight_decay=wd / lr_bias),
            dict(params=others, lr=lr, weight_decay=wd / lr),
        ],
        momentum=momentum,
        nesterov=True,
    )
    warm = int(total * 0.23)

    def lr_factor(step):
        if step < warm:
            return 0.2 + 0.8 * step / warm
        return 1.0 - 0.93 * (step - warm) / (total - warm)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    alpha = 0.95**5 * (torch.arange(total + 1) / total) ** 3
    slow = {k: v.clone() for k, v in net.state_dict().items()}

    def lookahead(decay):
        for s, p in zip(slow.values(), net.state_dict().values()):
            if p.dtype.is_floating_point:
                s.lerp_(p, 1 - decay)
                p.copy_(s)

    init_whitening(net[0], xtr[:5000])
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.2, reduction="none")
    n = len(xtr)
    flipped = torch.where((torch.rand(n, device="cuda") < 0.5).view(-1, 1, 1, 1), xtr.flip(-1), xtr)
    padded = F.pad(flipped, (2,) * 4, "reflect")
    ar = torch.arange(32, device="cuda")
    torch.cuda.synchronize()
    t0, step = time.perf_counter(), 0
    for epoch in range(math.ceil(epochs)):
        net[0].bias.requires_grad = epoch < 3  # the whitening bias learns for 3 epochs
        net.train()
        rows = torch.randint(0, 5, (n, 1), device="cuda") + ar
        cols = torch.randint(0, 5, (n, 1), device="cuda") + ar
        imgs = padded[
            torch.arange(n, device="cuda").view(-1, 1, 1),
            :,
            rows.view(n, 32, 1),
            cols.view(n, 1, 32),
        ]
        imgs = imgs.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        if epoch % 2 == 1:
            imgs = imgs.flip(-1)
        perm = torch.randperm(n, device="cuda")
        for i in range(steps_per_epoch):
            idx = perm[i * bs : (i + 1) * bs]
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = net(imgs[idx])
            loss = loss_fn(out.float(), ytr[idx]).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 5 == 0:
                lookahead(alpha[step].item())
            if step >= total:
                lookahead(1.0)
                break
        if step >= total:
            break
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    net.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        tta = torch.cat(
            [tta_logits(net, xte[i : i + 2000]).float() for i in range(0, len(xte), 2000)]
        )
        plain = torch.cat([net(xte[i : i + 2000]).float() for i in range(0, len(xte), 2000)])
    return {
        "width": width,
        "epochs": epochs,
        "seed": seed,
        "relative compute": round(width**2 * epochs / 9.9, 2),
        "test accuracy (TTA)": round((tta.argmax(1) == yte).float().mean().item(), 4),
        "test accuracy (one view)": round((plain.argmax(1) == yte).float().mean().item(), 4),
        "GPU train s": round(seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "configs",
        nargs="*",
        default=list(DEFAULT_CONFIGS),
        metavar="WIDTH:EPOCHS[:SEEDS]",
        help=f"[{' '.join(DEFAULT_CONFIGS)}]",
    )
    ap.add_argument(
        "--data", default=str(_common.CIFAR_ZIP), help="cifar10-jpg.zip or its unpacked folder"
    )
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        raise SystemExit("needs PyTorch with CUDA (pip install torch)") from None
    if not torch.cuda.is_available():
        raise SystemExit(
            "needs a CUDA GPU: 100x airbench94's compute takes minutes there and days on a CPU"
        )
    t0 = time.perf_counter()
    data = load_cifar(Path(args.data))
    print(
        f"{len(data['train'][1])} train / {len(data['test'][1])} test images decoded in "
        f"{time.perf_counter() - t0:.1f} s; {torch.cuda.get_device_name()}",
        flush=True,
    )
    rows = []
    for spec in args.configs:
        width, epochs, *seeds = (float(v) for v in spec.split(":"))
        for seed in range(int(seeds[0]) if seeds else 1):
            rows.append(train_and_test(data, width, epochs, seed))
            print(rows[-1], flush=True)
    print()
    print(_common.table(rows))
    path = _common.append_result(
        "cifar10_ceiling_gpu",
        {"args": vars(args), "gpu": torch.cuda.get_device_name(), "rows": rows},
    )
    print(f"\nappended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
