"""Train the distill example's teacher on the digits vendored with dfkd-guard, and write its test set.

    python examples/distill/train_teacher.py          # teacher.pt and digits_test.npz beside this file

The teacher is an ordinary classifier (``my_models.DigitNet``) trained with
cross-entropy; ``digits.toml`` then distils it without any data. Both files are
plain: a state dict (``torch.save(model.state_dict())``) and an ``.npz`` of
uint8 images and labels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from my_models import DigitNet

from dfkd_guard.bench.data import load_digits

HERE = Path(__file__).resolve().parent
MEAN, STD = 0.1307, 0.3081  # the usual MNIST normalisation, as in digits.toml


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="Adam steps of 64 images")
    parser.add_argument("--out", type=Path, default=HERE, help="folder of teacher.pt and digits_test.npz")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    images, labels = load_digits("train")
    test_images, test_labels = load_digits("test")
    model = DigitNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(args.steps):
        index = torch.randint(len(images), (64,))
        loss = F.cross_entropy(model((images[index] - MEAN) / STD), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model((test_images - MEAN) / STD).argmax(1) == test_labels).float().mean())
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / "teacher.pt")
    pixels = (test_images * 255).round().to(torch.uint8).numpy()
    np.savez_compressed(args.out / "digits_test.npz", images=pixels, labels=test_labels.numpy())
    print(
        f"teacher test accuracy {accuracy:.4f}; wrote {args.out / 'teacher.pt'} and {args.out / 'digits_test.npz'}"
    )
    return accuracy


if __name__ == "__main__":
    main()
