"""How fast `deepkit.datasets.pentomino.generate` makes Pentomino images.

Times ``generate(80000)`` (the largest training set of the paper; target:
80,000 images in at most 10 s on the 2-core CPU) `--repeats` times and
prints each time and the best, in images per second (the first call of a
process also pays for the first touch of the output's memory: about 1 s for
the 312 MiB of 80,000 images on our VM), beside a per-image loop measured in
the same run on `--loop-images` images: one scene at a time, each sprite
rotated, scaled and placed with numpy, its grown mask added to a collider
and the whole scene redrawn on an overlap — the way the authors'
``SpritePlacer`` works, written here in present-day numpy. The ratio is the
speed-up that vectorizing buys. numpy only; no Keras, no TensorFlow.

    python benchmarks/pentomino.py
"""

import argparse
import platform
import time

import numpy as np

from deepkit.datasets import pentomino as P


def loop_generate(size, seed=0):
    """Pentomino scenes one by one (same distribution as `P.generate`, not the same draws)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((size, 64, 64), "uint8")
    labels = np.zeros(size, "int32")
    hints = np.zeros((size, 64), "int32")
    for i in range(size):
        while True:
            label = int(rng.integers(2))
            first = int(rng.integers(10))
            other = first if label else (first + 1 + int(rng.integers(9))) % 10
            collider = np.zeros((68, 68), "int32")  # 64 + a 2-pixel border
            scene = []
            for shape in (first, other, other):
                scale = 1 + int(rng.integers(2))
                bitmap = P.sprite(shape, int(rng.integers(4)), scale)
                block = int(rng.integers(64))
                top, left = 8 * (block // 8), 8 * (block % 8)
                h, w = bitmap.shape
                # The mask: the sprite grown by one pixel per unit of scale (margin(1), then scale).
                grown = np.pad(bitmap, scale)
                for _ in range(scale):  # grow by one pixel, `scale` times
                    g = np.pad(grown, 1)
                    grown = np.max([g[a:a + grown.shape[0], b:b + grown.shape[1]]
                                    for a in range(3) for b in range(3)], axis=0)
                collider[top + 2 - scale:top + 2 + h + scale,
                         left + 2 - scale:left + 2 + w + scale] += grown
                scene.append((top, left, bitmap, block, shape))
            if collider.max() <= 1:
                break
        for top, left, bitmap, block, shape in scene:
            h, w = bitmap.shape
            images[i, top:top + h, left:left + w] = bitmap
            hints[i, block] = shape + 1
        labels[i] = label
    return images, labels, hints


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=80000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop-images", type=int, default=2000)
    args = parser.parse_args()

    print(f"numpy {np.__version__}, Python {platform.python_version()}, {platform.machine()}")
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        data = P.generate(args.images, seed=0)
        times.append(time.perf_counter() - start)
        megabytes, label_mean = data.images.nbytes / 2 ** 20, data.labels.mean()
        del data  # the next call reuses the memory
    best = min(times)
    target = 10 * args.images / 80000
    print(f"generate({args.images}): " + ", ".join(f"{t:.2f} s" for t in times)
          + f"; best {best:.2f} s = {args.images / best:,.0f} images/s; first call "
          f"{times[0]:.2f} s = {args.images / times[0]:,.0f} images/s (it also touches the "
          f"{megabytes:.0f} MiB of images for the first time); target {target:.0f} s: "
          + ("met" if max(times) <= target else "missed"))
    print(f"  label mean {label_mean:.4f}")

    start = time.perf_counter()
    loop_generate(args.loop_images, seed=0)
    loop = time.perf_counter() - start
    print(f"per-image loop, {args.loop_images} images: {loop:.2f} s = "
          f"{args.loop_images / loop:,.0f} images/s; generate is "
          f"{(args.images / best) / (args.loop_images / loop):.0f}x faster")


if __name__ == "__main__":
    main()
