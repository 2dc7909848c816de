"""JPEG decode + bilinear resize to the R50 1x training size, per library, on one thread.

    python bench/decode_resize.py            # 32 COCO-sized JPEGs (640x480 -> 800x1067)

Compares PIL (decode, ``Image.resize`` bilinear), torch (PIL decode, ``F.interpolate`` on a uint8
channels-last tensor, what the loader used before), torchvision.io (``decode_jpeg`` +
``v2.functional.resize``) and OpenCV (``cv2.imdecode`` + ``cv2.resize`` INTER_LINEAR) where installed.
Also reports, against the torch result, the largest pixel difference (all are bilinear; upscaling
makes antialiasing irrelevant). Prints one JSON object.
"""

from __future__ import annotations

import io
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from machine_info import machine_info  # bench/machine_info.py, beside this script

SIZE = (800, 1067)  # (h, w): 480x640 fitted into (1333, 800)


def _jpegs(n: int) -> list[bytes]:
    gen = np.random.default_rng(0)
    out = []
    for _ in range(n):
        yy, xx = np.mgrid[0:480, 0:640]
        img = np.stack([(xx * gen.uniform(0.2, 0.4)) % 256, (yy * 0.5) % 256, (xx + yy) % 256], -1)
        img = (img + gen.normal(0, 12, img.shape)).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _pil(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB").resize((SIZE[1], SIZE[0]), Image.BILINEAR))


def _torch(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        x = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)[None]
    x = x.contiguous(memory_format=torch.channels_last)
    y = F.interpolate(x, size=SIZE, mode="bilinear", align_corners=False, antialias=True)
    return y[0].permute(1, 2, 0).numpy()


def _torchvision(data: bytes) -> np.ndarray:
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2 import functional as TF

    x = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    y = TF.resize(x, list(SIZE), interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return y.permute(1, 2, 0).numpy()


def _opencv(data: bytes) -> np.ndarray:
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return cv2.resize(rgb, (SIZE[1], SIZE[0]), interpolation=cv2.INTER_LINEAR)


def main() -> None:
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    files = _jpegs(32)
    libraries = {"pil": _pil, "torch": _torch, "torchvision": _torchvision, "opencv": _opencv}
    reference = [_torch(f) for f in files[:4]]
    results: dict[str, dict] = {}
    for name, fn in libraries.items():
        try:
            fn(files[0])
        except ImportError as exc:
            results[name] = {"error": f"not installed ({exc})"}
            continue
        start = time.perf_counter()
        for _ in range(2):
            for f in files:
                fn(f)
        ms = 1000 * (time.perf_counter() - start) / (2 * len(files))
        diff = max(
            int(np.abs(fn(f).astype(np.int16) - r.astype(np.int16)).max())
            for f, r in zip(files[:4], reference, strict=True)
        )
        results[name] = {"ms_per_image": round(ms, 2), "max_abs_diff_vs_torch": diff}
    timed = {k: v["ms_per_image"] for k, v in results.items() if "ms_per_image" in v}
    fastest = min(timed, key=timed.get)
    print(
        json.dumps(
            {
                "machine": machine_info(),
                "size": {"from": [480, 640], "to": list(SIZE)},
                "libraries": results,
                "fastest": fastest,
                "speedup_vs_torch": round(timed["torch"] / timed[fastest], 2),
                "speedup_vs_pil": round(timed["pil"] / timed[fastest], 2),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
