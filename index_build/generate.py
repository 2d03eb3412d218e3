"""Generate (image, prompt) pairs with Stable Diffusion: the training data of the Kaggle winners' regressors.

prompts (a text file, a table, or a build manifest: DiffusionDB, COCO captions, your own)
  -> rows (prompt, seed): ``seeds`` images per prompt, each seed derived from the prompt
  -> shards of ``shard_size`` rows, each a job for the build's runner (local, or Ray GPU actors placed as
     the index build places them: ``index_build.ray_runner.RayRunner``)
  -> images through diffusers' ``StableDiffusionPipeline`` with DPM-Solver++ (``DPMSolverMultistepScheduler``,
     ``algorithm_type="dpmsolver++"``) at ``steps`` steps, fp16 on CUDA, written atomically to an image cache
  -> ``pairs.parquet``: image (relative to the table), prompt, seed, model, steps.

Resumable: a shard is done when its record exists (written after its last image); a rerun skips done
shards and, inside an unfinished shard, images already in the cache. ``--shard-index i --num-shards n``
splits one job across machines that share the output folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from retriever.errors import MissingWeightsError, UnpromptError
from retriever.files import atomic_write, write_bytes_atomic

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-base"  # SD 2.0 at 512 px (diffusers' Stable Diffusion 2 docs)
HF_HOST = "huggingface.co"


@dataclass
class GenerateOptions:
    model: str = DEFAULT_MODEL  # a hub repo id or a local folder saved by diffusers' save_pretrained
    steps: int = 16  # DPM-Solver++ steps (the 2nd place's 16)
    guidance: float = 7.5
    seeds: int = 2  # images per prompt
    size: int = 0  # image side in pixels (0: the model's own)
    batch_size: int = 8
    shard_size: int = 512  # rows per shard (one runner job)
    seed: int = 0
    quality: int = 92  # JPEG quality of the cached images


def _seed(prompt: str, k: int, base: int) -> int:
    return (int(hashlib.sha256(f"{base}\n{prompt}".encode()).hexdigest()[:12], 16) + k) % (2**63)


def image_name(opts: GenerateOptions, prompt: str, seed: int) -> str:
    key = hashlib.sha256(json.dumps([opts.model, opts.steps, opts.guidance, opts.size, prompt, seed]).encode())
    digest = key.hexdigest()[:24]
    return f"images/{digest[:2]}/{digest}.jpg"


def plan_rows(prompts: Sequence[str], opts: GenerateOptions) -> list[dict]:
    seen, rows = set(), []
    for p in prompts:
        p = " ".join(str(p).split())
        if not p or p in seen:
            continue
        seen.add(p)
        for k in range(opts.seeds):
            s = _seed(p, k, opts.seed)
            rows.append({"prompt": p, "seed": s, "image": image_name(opts, p, s)})
    if not rows:
        raise UnpromptError("no prompts to generate from")
    return rows


def pipeline_id(opts: GenerateOptions) -> str:
    """The runner's key for the pipeline (a Ray runner's actors build it from the factory under this key)."""
    return f"diffusers:{opts.model}"


class PairGenerator:
    """The runner's "encoder": ``encode_text`` takes a shard's rows (JSON) and writes their images; it returns
    one flag a row (1: the image is in the cache)."""

    def __init__(self, opts: GenerateOptions, out: str | Path) -> None:
        self.opts, self.out = opts, Path(out)
        self.pipe = load_pipeline(opts.model)
        self.model_id = pipeline_id(opts)
        self.dim = 1

    def encode_text(self, texts: list[str]) -> np.ndarray:
        import torch

        rows = [json.loads(t) for t in texts]
        ok = np.zeros((len(rows), 1), np.float32)
        todo = []
        for i, r in enumerate(rows):
            if (self.out / r["image"]).is_file():
                ok[i] = 1
            else:
                todo.append(i)
        size = self.opts.size or None
        for s in range(0, len(todo), self.opts.batch_size):
            batch = todo[s : s + self.opts.batch_size]
            generators = [torch.Generator(device="cpu").manual_seed(rows[i]["seed"]) for i in batch]
            images = self.pipe([rows[i]["prompt"] for i in batch], num_inference_steps=self.opts.steps,
                               guidance_scale=self.opts.guidance, height=size, width=size, generator=generators,
                               output_type="pil").images
            for i, image in zip(batch, images):
                path = self.out / rows[i]["image"]
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_write(path, fsync=False, clean_stale=False) as tmp:  # one per image
                    image.convert("RGB").save(tmp, format="JPEG", quality=self.opts.quality)
                ok[i] = 1
        return ok


def _how_to_provide(model: str) -> str:
    return (f"Download it on a machine with access (`hf download {model}`, or `huggingface-cli download {model}`), "
            f"then pass the folder with --model /path/to/{model.split('/')[-1]} (or copy it into the Hugging Face "
            "cache, HF_HOME)")


def load_pipeline(model: str):
    """``StableDiffusionPipeline`` with DPM-Solver++ at fp16 on CUDA (fp32 on the CPU), from a local folder or
    the hub (the fp16 variant where the repo has one); a clear error when the weights are not available."""
    import torch

    from retriever._compat import ensure_torchvision_importable
    from retriever.device import pick_device, pick_dtype
    from retriever.encoders.clip import _host_reachable

    ensure_torchvision_importable()  # before diffusers imports transformers' image processors
    try:
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    except ImportError:
        raise MissingWeightsError("generate-pairs needs diffusers: `pip install 'unprompt[generate]'`") from None
    device = pick_device()
    dtype = pick_dtype(device)
    local = Path(model).expanduser()
    if local.exists() and not (local / "model_index.json").is_file():
        raise MissingWeightsError(f"{local} is not a diffusers pipeline folder (no model_index.json)")
    source = str(local) if local.exists() else model
    offline = not local.exists() and not _host_reachable(HF_HOST)
    kwargs = {"torch_dtype": dtype, "safety_checker": None, "requires_safety_checker": False}
    if importlib.util.find_spec("accelerate") is None:
        kwargs["low_cpu_mem_usage"] = False  # what diffusers falls back to anyway, without its notice
    try:
        try:
            pipe = StableDiffusionPipeline.from_pretrained(
                source, local_files_only=offline, **kwargs, **({"variant": "fp16"} if dtype == torch.float16 else {}))
        except (OSError, ValueError):
            if dtype != torch.float16:
                raise
            pipe = StableDiffusionPipeline.from_pretrained(source, local_files_only=offline, **kwargs)
    except (OSError, ValueError, EnvironmentError) as exc:
        why = "huggingface.co cannot be reached and it is not in the local cache" if offline else \
            f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"
        raise MissingWeightsError(f"Stable Diffusion pipeline {model} is not available ({why}). "
                                  f"{_how_to_provide(model)}") from None
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _local_runner(opts: GenerateOptions, out: Path):
    from index_build.embed import LocalRunner

    generator = PairGenerator(opts, out)
    return LocalRunner(generator.encode_text)


def generator_for(opts: GenerateOptions, out: str) -> PairGenerator:
    """Picklable entry point for Ray actors: each builds its own pipeline once."""
    return PairGenerator(opts, out)


def generate_pairs(prompts: Sequence[str], out: str | Path, opts: GenerateOptions, runner=None,
                   shard_index: int = 0, num_shards: int = 1, progress: bool = True) -> Path:
    """Generate every missing image of this machine's shards, then write ``out/pairs.parquet`` over the shards
    that are done (all of them once every machine has finished). Returns the table's path."""
    import polars as pl
    from tqdm.auto import tqdm

    from index_build.embed import ShardJob

    if not 0 <= shard_index < num_shards:
        raise UnpromptError(f"--shard-index must be in [0, {num_shards})")
    if opts.size < 0 or opts.size % 8:
        raise UnpromptError(f"--size {opts.size}: give 0 (the model's own) or a multiple of 8 (the VAE's stride)")
    if not 0 < opts.quality <= 100:
        raise UnpromptError("JPEG quality must be in (0, 100]")
    out = Path(out)
    work = out / "work"
    (work / "parts").mkdir(parents=True, exist_ok=True)
    (work / "done").mkdir(parents=True, exist_ok=True)
    rows = plan_rows(prompts, opts)
    settings = {**asdict(opts), "rows": len(rows),
                "prompts_sha256": hashlib.sha256("\n".join(r["prompt"] for r in rows).encode()).hexdigest()}
    for k in ("batch_size", "quality"):
        settings.pop(k)
    record = out / "generate.json"
    if record.is_file() and json.loads(record.read_text()) != settings:
        raise UnpromptError(f"{out} holds pairs generated with other prompts or settings ({record}): "
                            "give another --out, or delete it to start again")
    write_bytes_atomic(record, json.dumps(settings, indent=1).encode())
    n_shards = (len(rows) + opts.shard_size - 1) // opts.shard_size
    jobs = []
    for i in range(shard_index, n_shards, num_shards):
        done = work / "done" / f"{i:06d}.parquet"
        if done.is_file():
            continue
        part = work / "parts" / f"{i:06d}.parquet"
        chunk = rows[i * opts.shard_size : (i + 1) * opts.shard_size]
        if not part.is_file():
            with atomic_write(part, fsync=False) as tmp:
                pl.DataFrame({"text": [json.dumps(r) for r in chunk]}).write_parquet(tmp)
        jobs.append(ShardJob("pairs", done, part, len(chunk), pipeline_id(opts)))
    if jobs:
        runner = runner or _local_runner(opts, out)
        with tqdm(total=sum(j.rows for j in jobs), desc="generate", unit="image", disable=not progress) as bar:
            for job, flags in runner.run(jobs):
                frame = pl.read_parquet(job.part).select(pl.col("text").str.json_decode(
                    pl.Struct({"prompt": pl.String, "seed": pl.UInt64, "image": pl.String}))).unnest("text")
                frame = frame.with_columns(ok=pl.Series(np.asarray(flags).reshape(-1) > 0))
                with atomic_write(job.path, fsync=False) as tmp:
                    frame.write_parquet(tmp)
                bar.update(job.rows)
    return write_table(out, opts)


def write_table(out: Path, opts: GenerateOptions) -> Path:
    import polars as pl

    done = sorted((out / "work" / "done").glob("*.parquet"))
    if not done:
        raise UnpromptError(f"{out}: no finished shards yet")
    frame = pl.read_parquet(done).filter(pl.col("ok")).drop("ok").with_columns(
        model=pl.lit(opts.model), steps=pl.lit(opts.steps)).select("image", "prompt", "seed", "model", "steps")
    table = out / "pairs.parquet"
    with atomic_write(table) as tmp:
        frame.write_parquet(tmp)
    return table


def read_prompt_source(prompts: str | None = None, manifest: str | None = None, column: str = "prompt",
                       limit: int = 0) -> list[str]:
    """Prompts from a text file or table (``prompts``), or every text of a build manifest's sources."""
    if bool(prompts) == bool(manifest):
        raise UnpromptError("give --prompts (a text file or table) or --manifest (a build manifest), not both")
    if prompts:
        from retriever.evaluation.tables import read_prompts

        texts = read_prompts(prompts, column)
    else:
        import tempfile

        from index_build.manifest import load_manifest
        from index_build.read import read_manifest

        with tempfile.TemporaryDirectory(prefix="unprompt-prompts-") as tmp:
            staged = read_manifest(load_manifest(manifest), Path(tmp), shard_size=65536)
            texts = [t for s in staged for t in s.all_texts()]
    return texts[:limit] if limit else texts
