from functools import partial

import numpy as np
import pytest

from index_build.build import BuildOptions, build_index
from index_build.manifest import load_manifest
from retriever.encoders import text_tower_for
from retriever.index import TextIndex
from retriever.profile import ClipSpaceSpec

ray = pytest.importorskip("ray")


def test_ray_embedding_gives_the_same_shards_and_index(tmp_path, tiny_clip):
    tiny = tiny_clip["unprompt-tiny-a"]
    spec = ClipSpaceSpec(kind="open_clip", model="unprompt-tiny-a", pretrained=str(tiny["checkpoint"]),
                         model_config_file=str(tiny["config"]))
    (tmp_path / "t.txt").write_text("\n".join(f"a painting of thing number {i}, oil on canvas" for i in range(300)))
    (tmp_path / "m.toml").write_text("[[sources]]\nname = 'things'\npath = 't.txt'\nkind = 'caption'\n")
    manifest = load_manifest(tmp_path / "m.toml")
    encoder = text_tower_for(spec)
    local = build_index(manifest, encoder, tmp_path / "local", BuildOptions(shard_size=50, progress=False))

    from index_build.ray_runner import RayRunner

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        runner = RayRunner(partial(text_tower_for, spec), actors=2)
        remote = build_index(manifest, encoder, tmp_path / "ray",
                             BuildOptions(shard_size=50, progress=False, runner=runner))
    finally:
        ray.shutdown()
    assert remote.embedded == {"things": 300}
    for a, b in zip(sorted((tmp_path / "local" / ".shards").rglob("*.npy")),
                    sorted((tmp_path / "ray" / ".shards").rglob("*.npy"))):
        assert a.name == b.name
        np.testing.assert_allclose(np.load(a).astype(np.float32), np.load(b).astype(np.float32), atol=1e-3)
    assert local.record.files["index"].sha256 == remote.record.files["index"].sha256
    assert len(TextIndex.load(tmp_path / "ray")) == 300
