"""`unprompt check-sources` (a manifest's files, columns and row counts, from parquet footers) and
`unprompt fetch-pairs` (image, prompt pairs from zip parts on the hub)."""

from __future__ import annotations

import argparse
import json

from api.cli.common import command, err, positive_int


def run_check_sources(args: argparse.Namespace) -> int:
    from index_build.check import check_manifest, describe
    from index_build.manifest import load_manifest

    manifest = load_manifest(args.manifest)
    facts = check_manifest(manifest)
    if args.json:
        print(json.dumps([{"source": f.source.name, "location": f.source.location, "error": f.error,
                           "rows": f.rows, "files": [vars(x) for x in f.files]} for f in facts]))
    else:
        print(describe(manifest, facts))
    failed = [f for f in facts if f.error]
    for f in failed:
        err(f.error)
    return 2 if failed else 0


def register(sub) -> None:
    p = command(sub, "check-sources", run_check_sources, profile=False)
    p.add_argument("manifest", help="manifest file, or the name of one shipped in data_manifests/ (e.g. captions.toml)")
    p.add_argument("--json", action="store_true", help="one JSON list: each source's files, columns, rows, error")
    _register_fetch_pairs(sub)


def run_fetch_pairs(args: argparse.Namespace) -> int:
    from index_build.pairs import fetch_pairs, load_pairs_manifest, parse_part_range
    from retriever.files import check_output_dir

    manifest = load_pairs_manifest(args.manifest)
    parts = parse_part_range(args.parts, manifest)
    out = check_output_dir(args.out, "--out")
    report = fetch_pairs(manifest, out, parts, limit=args.limit, progress=not args.quiet)
    print(f"{report.table}: {report.rows} pairs from parts {parts[0]}-{parts[1]} ({len(report.parts_done)} fetched, "
          f"{len(report.parts_reused)} already there, {report.skipped_images} images skipped)")
    for part, why in report.parts_failed.items():
        err(f"part {part} failed ({why}); run again to retry it")
    return 1 if report.parts_failed else 0


def _register_fetch_pairs(sub) -> None:
    p = command(sub, "fetch-pairs", run_fetch_pairs, profile=False)
    p.add_argument("manifest", help="pairs manifest, or the name of one shipped (diffusiondb-2m-pairs.toml)")
    p.add_argument("--out", required=True, help="folder for images/, parts/ and pairs.parquet (reused: resumes)")
    p.add_argument("--parts", default="1", help="a part number or a range, e.g. 1-20")
    p.add_argument("--limit", type=positive_int, default=None, help="stop once the table has this many pairs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
