"""(image, prompt) pairs from a hub dataset whose images come in zip parts, for training the head
(`unprompt fetch-pairs`, then `unprompt train-regressor --pairs OUT/pairs.parquet`).

A pairs manifest (``data_manifests/diffusiondb-2m-pairs.toml``) names the dataset, its revision, the path
template of a part and of the JSON inside it that maps each image's file name to its record, and the key of
the prompt in that record. DiffusionDB 2M: ``images/part-000001.zip`` .. ``part-002000.zip``, each holding
1,000 PNGs and ``part-000001.json`` ``{"<name>.png": {"p": prompt, "se": seed, "c": cfg, "st": steps,
"sa": sampler}}`` (poloclub/diffusiondb's loading script, scripts/diffusiondb.py).

Layout of OUT: ``images/<part>/<name>`` (the bytes as published, after a decode check), ``parts/<part>.parquet``
(one part's rows, written last: its presence means the part is done, so a rerun skips it), ``pairs.parquet``
(every done part of the range in order, cut at the row limit; rewritten atomically after each part). A part's
zip is downloaded into ``OUT/.downloads`` (resumable, checksummed) and deleted once its images are out.
"""

from __future__ import annotations

import json
import shutil
import tomllib
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import polars as pl
from pydantic import Field, ValidationError

from index_build.manifest import resolve_manifest_path
from index_build.remote import HubPath, cached_download
from retriever.errors import ManifestError, UnpromptWarning
from retriever.files import atomic_write
from retriever.images import IMAGE_SUFFIXES, ImageLimits, ImageRejected, admit_image
from retriever.strict import Strict, format_validation_error

TABLE = "pairs.parquet"
MAX_JSON_BYTES = 64 << 20  # a part's prompt file: about 1 MB for 1,000 records


class PairsManifest(Strict):
    name: str
    description: str = ""
    license: str = ""
    dataset: str = Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
    revision: str = "main"
    part_path: str = Field(description="path of part N inside the dataset, with {part} (format spec allowed)")
    records_file: str = Field(description="name of the JSON of image name -> record inside part N, with {part}")
    prompt_key: str = "p"
    parts: tuple[int, int] = Field(description="first and last part number the dataset has")
    images_per_part: int = Field(default=1000, ge=1)


def load_pairs_manifest(value: str | Path) -> PairsManifest:
    path = resolve_manifest_path(value)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ManifestError(f"pairs manifest {path} cannot be read: {exc}") from None
    data.setdefault("name", path.stem)
    try:
        manifest = PairsManifest.model_validate(data)
        manifest.part_path.format(part=1), manifest.records_file.format(part=1)
    except ValidationError as exc:
        raise ManifestError(f"pairs manifest {path} is invalid: {format_validation_error(exc)}") from None
    except (KeyError, ValueError, IndexError) as exc:
        raise ManifestError(f"pairs manifest {path}: part_path and records_file take {{part}} only ({exc})") from None
    return manifest


def parse_part_range(value: str, manifest: PairsManifest) -> tuple[int, int]:
    """'5' or '1-20' within the manifest's parts."""
    lo, _, hi = value.partition("-")
    try:
        first, last = int(lo), int(hi or lo)
    except ValueError:
        raise ManifestError(f"--parts {value!r}: give a part number or a range like 1-20") from None
    a, b = manifest.parts
    if not a <= first <= last <= b:
        raise ManifestError(f"--parts {value!r}: {manifest.name} has parts {a}-{b}")
    return first, last


@dataclass
class PairsReport:
    table: Path
    rows: int
    parts_done: list[int] = field(default_factory=list)  # this run
    parts_reused: list[int] = field(default_factory=list)
    parts_failed: dict[int, str] = field(default_factory=dict)
    skipped_images: int = 0


def _safe_name(name: str) -> str | None:
    """A zip member or JSON key as a plain file name, or None (folders, traversal, odd suffixes)."""
    p = PurePosixPath(name)
    if len(p.parts) != 1 or p.name in ("", ".", "..") or "\\" in name or p.suffix.lower() not in IMAGE_SUFFIXES:
        return None
    return p.name


def _extract_part(zpath: Path, part: int, manifest: PairsManifest, images: Path, limits: ImageLimits,
                  ) -> tuple[pl.DataFrame, int]:
    """A part's zip -> its images under ``images`` and a frame of its rows; (rows, images skipped)."""
    records_name = manifest.records_file.format(part=part)
    rows, skipped = [], 0
    with zipfile.ZipFile(zpath) as z:
        members = {info.filename: info for info in z.infolist()}
        info = members.get(records_name)
        if info is None:
            raise ValueError(f"no {records_name} in the zip")
        if info.file_size > MAX_JSON_BYTES:
            raise ValueError(f"{records_name} is {info.file_size} bytes")
        records = json.loads(z.read(info))
        if not isinstance(records, dict):
            raise ValueError(f"{records_name} is not a JSON object of image name -> record")
        folder = images / f"{part:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        for key, record in records.items():
            name = _safe_name(key)
            prompt = record.get(manifest.prompt_key) if isinstance(record, dict) else None
            member = members.get(key)
            if name is None or member is None or not isinstance(prompt, str) or not prompt.strip() \
                    or member.file_size > limits.max_bytes:
                skipped += 1
                continue
            data = z.read(member)
            try:
                admit_image(data, limits, name)
            except ImageRejected:
                skipped += 1
                continue
            (folder / name).write_bytes(data)
            extra = {k: record.get(k) for k in ("se", "c", "st", "sa")}
            rows.append({"image": f"images/{part:06d}/{name}", "prompt": prompt, "part": part,
                         "seed": extra["se"], "cfg": extra["c"], "steps": extra["st"], "sampler": extra["sa"]})
    schema = {"image": pl.String, "prompt": pl.String, "part": pl.Int32, "seed": pl.Int64, "cfg": pl.Float64,
              "steps": pl.Int64, "sampler": pl.String}
    frame = pl.DataFrame(rows, schema=schema, strict=False) if rows else pl.DataFrame(schema=schema)
    return frame, skipped


def fetch_pairs(manifest: PairsManifest, out: str | Path, parts: tuple[int, int], limit: int | None = None,
                limits: ImageLimits = ImageLimits(), progress: bool = False) -> PairsReport:
    """Parts ``parts[0]..parts[1]`` into ``out`` until ``limit`` pairs are there; resumable part by part."""
    from tqdm.auto import tqdm

    out = Path(out)
    part_dir, images, downloads = out / "parts", out / "images", out / ".downloads"
    part_dir.mkdir(parents=True, exist_ok=True)
    report = PairsReport(out / TABLE, 0)
    where = HubPath(manifest.dataset, manifest.revision, "")
    have = 0
    for part in tqdm(range(parts[0], parts[1] + 1), desc="parts", unit="part", disable=not progress):
        if limit is not None and have >= limit:
            break
        done = part_dir / f"{part:06d}.parquet"
        if done.is_file():
            have += pl.scan_parquet(done).select(pl.len()).collect().item()
            report.parts_reused.append(part)
            continue
        url = where.resolve_url(manifest.part_path.format(part=part))
        zpath = cached_download(url, f"part {part}", downloads)
        try:
            frame, skipped = _extract_part(zpath, part, manifest, images, limits)
        except (zipfile.BadZipFile, ValueError, UnicodeDecodeError, EOFError) as exc:
            shutil.rmtree(zpath.parent, ignore_errors=True)  # fetched again on the next run
            report.parts_failed[part] = f"{exc.__class__.__name__}: {exc}"
            warnings.warn(f"part {part} ({url}) skipped: {exc}", UnpromptWarning)
            continue
        with atomic_write(done) as tmp:
            frame.write_parquet(tmp)
        shutil.rmtree(zpath.parent, ignore_errors=True)
        report.parts_done.append(part)
        report.skipped_images += skipped
        have += frame.height
    finished = [part_dir / f"{p:06d}.parquet" for p in range(parts[0], parts[1] + 1)
                if (part_dir / f"{p:06d}.parquet").is_file()]
    table = pl.concat([pl.read_parquet(f) for f in finished]) if finished else pl.DataFrame()
    if limit is not None:
        table = table.head(limit)
    if table.height == 0:
        raise ManifestError(f"no pairs from parts {parts[0]}-{parts[1]} of {manifest.name}"
                            + (f" ({len(report.parts_failed)} parts failed)" if report.parts_failed else ""))
    with atomic_write(report.table) as tmp:
        table.write_parquet(tmp)
    report.rows = table.height
    return report
