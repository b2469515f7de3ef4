"""The project's own repost stream: forum posts, their reposts, and the truth about each one.

``python -m devkit.posts --n N --seed S --out DIR`` writes ``posts.jsonl`` and ``truth.jsonl``; the
defaults regenerate the committed ``demo/`` files.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from devkit.posts import DEFAULT_N, DEFAULT_SEED, KINDS, generate, write_stream

DEMO_DIR = Path(__file__).resolve().parents[2] / "demo"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.posts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=DEFAULT_N, help=f"posts in the stream (default {DEFAULT_N})")
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})"
    )
    parser.add_argument("--out", type=Path, default=DEMO_DIR, help="output directory (default: demo/)")
    args = parser.parse_args(argv)
    try:
        stream = generate(args.n, args.seed)
    except ValueError as error:
        parser.error(str(error))
    posts, truth = write_stream(stream, args.out)
    counts = Counter(row["kind"] for row in stream.truth)
    tenants = Counter(row["tenant"] for row in stream.posts)
    print(f"wrote {len(stream.posts)} posts to {posts} and their truth to {truth}")
    print("kinds: " + ", ".join(f"{kind} {counts[kind]}" for kind in KINDS))
    print("tenants: " + ", ".join(f"{tenant} {count}" for tenant, count in sorted(tenants.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
