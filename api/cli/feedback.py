"""`unprompt feedback export`: the corrections users sent, as inputs for the next head and index."""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

from api.cli.common import Formatter, help_texts
from retriever.errors import UnpromptError


def run_export(args: argparse.Namespace) -> int:
    from retriever.feedback import DB_NAME, FeedbackStore, export, store_dir
    from retriever.files import check_output_dir

    out = check_output_dir(args.out, "--out")
    store = FeedbackStore(Path(args.db) if args.db else store_dir() / DB_NAME)
    try:
        done = export(store, out, args.min_rating)
    except sqlite3.DatabaseError as exc:  # not an SQLite file, a damaged one, or one locked too long
        raise UnpromptError(f"{store.path}: cannot read the feedback database ({exc})") from None
    print(f"{done.pairs}: {done.pairs_rows} (image, corrected prompt) pairs"
          + ("" if done.pairs_rows else " (no images were kept: the service keeps them with "
                                        "UNPROMPT_FEEDBACK_KEEP_IMAGES=1)"))
    print(f"{done.texts}: {done.text_rows} distinct corrected prompts; manifest {done.manifest}")
    print(f"next: unprompt train-regressor --pairs {done.pairs} --out HEAD.pt   (needs pairs)")
    print(f"      unprompt build-index {done.manifest} --append --out INDEX_DIR")
    return 0


def register(sub) -> None:
    text = help_texts()["feedback"]
    group = sub.add_parser("feedback", help=text["summary"], description=text["description"],
                           formatter_class=Formatter, epilog="examples:\n" + "\n".join(f"  {e}" for e in text["examples"]))
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser("export", help="write pairs.csv, corrected_prompts.txt and feedback.toml",
                           formatter_class=Formatter)
    p.add_argument("--out", required=True, help="folder to write the three files into")
    p.add_argument("--db", default=None, help="feedback database (default: $UNPROMPT_HOME/feedback/feedback.sqlite3)")
    p.add_argument("--min-rating", type=int, choices=range(1, 6), default=None, metavar="1-5",
                   help="leave out rows rated below this (unrated rows are kept)")
    p.set_defaults(func=run_export)
