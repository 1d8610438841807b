"""Cut the shipped sample out of the hftbacktest BTCUSDT recording, reproducibly.

Why a script: the sample must be re-creatable byte for byte from the original file, so anyone can check
that nothing was altered. Lines are copied verbatim (the first `SECONDS` of local receive time, which
includes the buffered depth updates and the REST snapshot at line 8), and gzip is written with
`mtime=0` so the output does not depend on when it was made.

Usage: python venues/data/make_sample.py [SOURCE] [DEST] [SECONDS]
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[2] / "shared" / "data" / "market" / "binance_spot_btcusdt_20240808.gz"
DEFAULT_DEST = HERE / "binance_spot_btcusdt_sample.gz"
SECONDS = 180.0


def make_sample(source: Path, dest: Path, seconds: float = SECONDS) -> int:
    """Copy the first `seconds` of recording (by local receive time) from `source` to `dest`."""
    first: int | None = None
    lines = 0
    with gzip.open(source, "rb") as src, open(dest, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as out:
            for line in src:
                ts = int(line.split(b" ", 1)[0])
                if first is None:
                    first = ts
                if ts - first > seconds * 1e9:
                    break
                out.write(line)
                lines += 1
    return lines


if __name__ == "__main__":
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE
    dst = Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_DEST
    secs = float(sys.argv[3]) if len(sys.argv) > 3 else SECONDS
    n = make_sample(src, dst, secs)
    print(f"wrote {n} lines to {dst} ({dst.stat().st_size} bytes)")
