"""``vmem data``: write demo/test data sets as WebDataset shards."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.data.fashion_mnist import CLASSES, DEBIAN_DIR, OFFICIAL_URL, write_fashion_mnist
from vmem.helptext import HelpFormatter, positive


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmem data", description=__doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="dataset", required=True)
    fmnist = sub.add_parser(
        "fashion-mnist", help="Fashion-MNIST: 60,000 train + 10,000 test images, 10 classes.",
        description="Reads Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist) "
                    "when installed, else downloads the official files and checks their MD5.",
        formatter_class=HelpFormatter)
    fmnist.add_argument("--out", required=True, help="Output folder or fsspec URL for the shards.")
    fmnist.add_argument("--split", choices=("train", "test", "both"), default="both")
    fmnist.add_argument("--per-class", type=positive, default=None,
                        help="Keep the first N images of each class (default: all).")
    fmnist.add_argument("--classes", default="",
                        help="Comma list of class names to keep (default all), e.g. 'Bag,Trouser'.")
    fmnist.add_argument("--exclude-classes", default="", help="Comma list of class names to leave out.")
    fmnist.add_argument("--shard-size", type=positive, default=10_000, help="Images per tar shard.")
    fmnist.add_argument("--source-dir", type=Path, default=DEBIAN_DIR,
                        help="Folder holding the four .gz files (default: Debian's).")
    fmnist.add_argument("--base-url", default=OFFICIAL_URL, help="Download location if not local.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    splits = ("train", "test") if args.split == "both" else (args.split,)
    names = [c.strip() for c in args.classes.split(",") if c.strip()] or list(CLASSES)
    excluded = [c.strip() for c in args.exclude_classes.split(",") if c.strip()]
    unknown = sorted(set(excluded) - set(CLASSES))
    if unknown:
        raise ValueError(f"unknown Fashion-MNIST classes {unknown}; the classes are {list(CLASSES)}")
    written = write_fashion_mnist(args.out, splits, args.per_class, args.shard_size,
                                  args.base_url, args.source_dir,
                                  [c for c in names if c not in excluded])
    for split, urls in written.items():
        print(f"fashion-mnist {split}: {len(urls)} shards -> {urls[0] if urls else '-'} ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
