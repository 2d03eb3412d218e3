"""Build an index with a deterministic fake encoder that sleeps per shard (for kill -9 tests).

usage: python slow_build.py MANIFEST OUT SHARD_SIZE SLEEP_S [FACTORY]
prints the per-source embedded counts as JSON on success.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fakes import HashTextEncoder  # noqa: E402
from index_build.build import BuildOptions, build_index  # noqa: E402
from index_build.manifest import load_manifest  # noqa: E402


class SlowEncoder(HashTextEncoder):
    def __init__(self, sleep: float) -> None:
        super().__init__(dim=32)
        self.sleep = sleep

    def encode_text(self, texts):
        time.sleep(self.sleep)
        return super().encode_text(texts)


manifest, out, shard_size, sleep = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
factory = sys.argv[5] if len(sys.argv) > 5 else None
report = build_index(load_manifest(manifest), SlowEncoder(sleep), Path(out),
                     BuildOptions(shard_size=shard_size, factory=factory, progress=False))
print(json.dumps(report.embedded))
