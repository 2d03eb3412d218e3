"""Recall of the index choice on real embeddings, not synthetic ones (synthetic vectors flatter IVF-PQ).

    .venv/bin/python bench/recall_real.py          # needs the lite index (`unprompt setup`)

Corpus: the all-MiniLM-L6-v2 vectors of the ~107k real prompt components of the lite index, less 1,000
held-out texts. Queries: (a) those 1,000 held-out texts' vectors (text -> text), and (b) cross-modal: the lite
bridge's image vectors (EfficientNet-Lite2 -> MiniLM space, as serving computes them) of real photographs
(the example images and scikit-image's colour images, each also flipped and cropped), searching the texts.
Baseline: exact inner-product search over the same vectors, in the same run. Each configuration is searched
as ``TextIndex.search`` serves: a shortlist of k x rescore from FAISS, rescored exactly from the float16 vectors.
The row marked `choose_index` is what a build picks by default when it takes the IVF-PQ path.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

K = 60


def real_images():
    import skimage.data
    from PIL import Image, ImageOps

    from retriever.images import load_image

    base = [load_image(p) for p in sorted((Path(__file__).resolve().parents[1] / "data_manifests" / "examples"
                                           / "images").glob("*.jpg"))]
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "motorcycle_left", "retina", "cat", "colorwheel", "logo", "skin", "lily", "kidney"):
        try:
            arr = getattr(skimage.data, name)()
        except Exception:  # some need a download (pooch) or are not RGB: skip them
            continue
        if arr.ndim == 3 and arr.shape[2] >= 3:
            base.append(Image.fromarray(arr[..., :3].astype(np.uint8)))
    out = []
    for im in base:
        w, h = im.size
        out += [im, ImageOps.mirror(im), im.crop((0, 0, w * 3 // 4, h * 3 // 4)), im.crop((w // 4, h // 4, w, h)),
                im.crop((w // 8, h // 8, w * 7 // 8, h * 7 // 8)), im.rotate(10, expand=False)]
    return out


def exact_topk(corpus: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    s = queries @ corpus.T
    return np.argsort(-s, axis=1)[:, :k]


def served_search(index, vectors16: np.ndarray, queries: np.ndarray, k: int, rescore: int) -> list[np.ndarray]:
    _, ids = index.search(np.ascontiguousarray(queries, np.float32), k * rescore)
    out = []
    for q, row in zip(queries, ids):
        row = row[row >= 0]
        exact = np.asarray(vectors16[row], np.float32) @ q
        out.append(row[np.argsort(-exact, kind="stable")[:k]])
    return out


def main() -> int:
    import faiss

    from index_build.choose import choose_index
    from index_build.faiss_build import new_index, sample_rows, train
    from retriever.index import TextIndex
    from retriever.paths import index_dir
    from retriever.pipeline import Interrogator
    from retriever.profile import load_profile

    lite = TextIndex.load(index_dir("components-lite"))
    all_vectors = lite.index.reconstruct_n(0, lite.index.ntotal).astype(np.float32)
    rng = np.random.default_rng(0)
    held = np.sort(rng.choice(len(all_vectors), 1000, replace=False))
    mask = np.ones(len(all_vectors), bool)
    mask[held] = False
    corpus, text_queries = all_vectors[mask], all_vectors[held]
    corpus16 = corpus.astype(np.float16)
    t = time.perf_counter()
    interrogator = Interrogator.from_profile(load_profile("lite"))
    images = real_images()
    image_queries = interrogator.retrieval_space.encode_images(images)
    print(f"corpus {len(corpus):,} real MiniLM component vectors ({corpus.shape[1]}-d); queries: 1,000 held-out texts, "
          f"{len(images)} real images (bridge vectors, {time.perf_counter() - t:.0f} s)")
    truth = {"text": exact_topk(corpus, text_queries, K), "image": exact_topk(corpus, image_queries, K)}
    queries = {"text": text_queries, "image": image_queries}

    default = choose_index(len(corpus), corpus.shape[1], exact_max=0)
    nlist = int(default.factory.split("IVF")[1].split(",")[0].split("_")[0])
    print(f"choose_index(n={len(corpus):,}, exact_max=0): {default.factory}, nprobe {default.nprobe}")
    print(f"{'factory':<28}{'nprobe':>7}{'rescore':>8}{'recall@60 text':>16}{'recall@60 image':>17}{'ms/query':>10}")
    built = {}
    for factory in sorted({default.factory, f"IVF{nlist},PQ{corpus.shape[1] // 2}x4fs",
                           f"IVF{nlist},PQ{corpus.shape[1] // 4}x4fs"}):
        index = new_index(corpus.shape[1], type(default)(factory, False, 1, ""))
        train(index, corpus[sample_rows(len(corpus))])
        index.add(corpus)
        built[factory] = index
    for factory, index in built.items():
        ivf = faiss.extract_index_ivf(index)
        for nprobe in sorted({default.nprobe, nlist // 8, nlist // 4, nlist // 2}):
            ivf.nprobe = max(1, nprobe)
            for rescore in (10, 20):
                recalls, ms = {}, 0.0
                for kind in ("text", "image"):
                    t = time.perf_counter()
                    got = served_search(index, corpus16, queries[kind], K, rescore)
                    ms += (time.perf_counter() - t) * 1000
                    recalls[kind] = np.mean([len(set(g) & set(e)) / K for g, e in zip(got, truth[kind])])
                mark = "  <- choose_index" if (factory, nprobe, rescore) == (default.factory, default.nprobe, 10) else ""
                n_q = sum(len(q) for q in queries.values())
                print(f"{factory:<28}{nprobe:>7}{rescore:>8}{recalls['text']:>16.4f}{recalls['image']:>17.4f}"
                      f"{ms / n_q:>10.2f}{mark}", flush=True)
    t = time.perf_counter()
    exact_topk(corpus, text_queries[:200], K)
    print(f"exact search (baseline): {(time.perf_counter() - t) * 1000 / 200:.2f} ms/query, recall 1.0 by definition")
    return 0


if __name__ == "__main__":
    sys.exit(main())
