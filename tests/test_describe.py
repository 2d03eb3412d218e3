"""The lite describe stage: subjects named only as far as the classifier is sure, a medium decided from the
pixels, and no art-medium component on a photograph."""

import csv

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import EXAMPLES, REPO
from retriever.imagenet import imagenet_classes
from retriever.profile import DescribeConfig
from retriever.stages.candidates import Candidate
from retriever.stages.describe import Describer, Description
from retriever.stages.medium import decide_medium, medium_phrase, names_art_medium, pixel_stats

CFG = DescribeConfig(enabled=True)
CLASSES = imagenet_classes()


def describer(words=None):
    return Describer(CFG, (lambda w: w in words) if words is not None else (lambda w: True))


def probs(**mass):
    p = np.full(1000, 1e-6, np.float32)
    for name, value in mass.items():
        p[CLASSES.index(name.replace("_", " "))] = value
    return p / p.sum()


def cand(text, kind="flavour"):
    return Candidate(text, kind, "s", "ix", 0, 0.5, 0.5)


def test_subject_is_named_only_as_far_as_the_classifier_is_sure():
    d = describer()
    assert d._subject(probs(tabby=0.9, tiger_cat=0.1)) == ("a tabby", pytest.approx(0.9, abs=1e-3))
    name, conf = d._subject(probs(tabby=0.3, tiger_cat=0.3, Persian_cat=0.3, bubble=0.1))
    assert name == "a domestic cat" and conf == pytest.approx(0.9, abs=1e-3)  # the most specific sure parent
    spread = probs(tabby=0.2, moped=0.2, espresso=0.2, doormat=0.2, bubble=0.2)
    assert d._subject(spread) == (None, 0.0)  # only generic parents ("object", "whole") are that sure


def test_medium_from_pixels(tmp_path):
    drawing = Image.new("RGB", (300, 200), "white")
    ImageDraw.Draw(drawing).ellipse((40, 40, 160, 160), fill=(30, 90, 220))
    stats = pixel_stats(drawing)
    assert decide_medium(stats, 0.0, CFG) == "illustration"
    cat = pixel_stats(Image.open(EXAMPLES / "cat.jpg"))
    assert decide_medium(cat, 0.0, CFG) == "photo" and medium_phrase("photo", cat, CFG) == "a photo"
    grey = pixel_stats(Image.open(EXAMPLES / "cat.jpg").convert("L"))
    assert medium_phrase(decide_medium(grey, 0.0, CFG), grey, CFG) == "a black and white photo"
    # the classifier sees a book jacket or a comic: made by hand (brush texture) or drawn (smooth)
    brushy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    assert decide_medium(pixel_stats(brushy), 0.9, CFG) == "painting"
    assert decide_medium(pixel_stats(drawing.resize((60, 40))), 0.9, CFG) == "illustration"


def test_a_photo_never_gets_an_art_medium_component():
    d = describer()
    photo = Description("photo", "a photo", "a tabby", 0.9)
    flavours = [cand(t) for t in ("illustration", "octane render", "digital painting", "trending on artstation",
                                  "sharp focus", "by greg rutkowski", "furry art", "soft light", "3 d render")]
    cands = {"subject": [cand("tabby", "subject")], "flavour": flavours, "artist": [cand("by monet", "artist")],
             "movement": [cand("impressionism", "movement")]}
    cleaned, style = d.apply(photo, cands, [cand("highly detailed"), cand("concept art")])
    texts = [c.text for cs in cleaned.values() for c in cs] + [c.text for c in style]
    assert cleaned["medium"][0].text == "a photo" and cleaned["subject"][0].text == "a tabby"
    assert set(cleaned) == {"medium", "subject", "flavour", "style"}  # no artists, no movements
    assert [c.text for c in cleaned["flavour"]] == ["sharp focus", "soft light"]
    assert cleaned["style"][0].text == "highly detailed" and style == []  # the style term went into {style}
    assert not any(names_art_medium(t) for t in texts if t != "a photo")
    painting = Description("painting", "a painting", "a tabby", 0.9)
    assert "illustration" in [c.text for c in d.apply(painting, cands, [])[0]["flavour"]]  # art is fine on art


def test_lookalikes_misspellings_and_near_duplicates_are_dropped():
    d = describer(words={"espresso", "coffee", "cup", "foam", "highly", "detailed"})
    desc = Description("photo", "a photo", "an espresso", 0.8)
    kept = [t for t in ("espoo", "esuthio", "detaild foam", "espresso cup", "espressos", "coffee foam",
                        "highly detailed") if d.keep(t, desc)]
    assert kept == ["coffee foam", "highly detailed"]


def test_photographs_through_the_lite_pipeline_never_get_art_flavours(lite_interrogator):
    import skimage.data

    images = [Image.open(p) for p in sorted(EXAMPLES.glob("*.jpg"))]
    images += [Image.fromarray(getattr(skimage.data, n)()) for n in ("astronaut", "chelsea", "coffee", "camera")]
    describer = lite_interrogator.describer
    images = [im.convert("RGB") for im in images]
    probabilities, features = lite_interrogator.retrieval_space.classifier.predict(images)
    descriptions = describer.describe(probabilities, images, features)
    photos = [im for im, desc in zip(images, descriptions) if desc.medium == "photo"]
    assert len(photos) >= 6
    for result in lite_interrogator.interrogate_batch(photos, flavours=8):  # a long chain: many chances
        assert result.prompt.startswith(("a photo", "a black and white photo")), result.prompt
        assert not names_art_medium(result.prompt.removeprefix("a black and white photo").removeprefix("a photo"))


def test_the_dev_set_is_40_real_images_in_two_disjoint_halves():
    from retriever.evaluation.tables import read_pairs

    halves = {name: read_pairs(REPO / "data_manifests" / "devset" / f"{name}.csv") for name in ("dev", "heldout")}
    images = {name: [str(p) for p in paths] for name, (paths, _) in halves.items()}
    assert len(images["dev"]) == len(images["heldout"]) == 20 and not set(images["dev"]) & set(images["heldout"])
    assert all(Image.open(p).size[0] >= 100 for paths in images.values() for p in paths)  # real, decodable
    with open(EXAMPLES.parent / "eval.csv") as f:
        examples = {row["image"].split("/")[-1].split(".")[0] for row in csv.DictReader(f)}
    held_names = " ".join(images["heldout"])
    assert all(any(k in held_names for k in (name, {"cat": "chelsea", "galaxies": "hubble", "clock": "clock_motion",
                                                     "motorcycle": "motorcycle_left"}.get(name, name)))
               for name in examples)  # images eval.csv also uses are only in the held-out half


def test_a_misnamed_graphic_class_is_a_profile_error():
    from retriever.errors import ProfileError

    with pytest.raises(ProfileError, match="not ImageNet-1k class names: website"):
        Describer(DescribeConfig(enabled=True, graphic_classes=["web site", "website"]), lambda w: True)


def test_the_separable_3x3_spread_equals_reducing_sliding_windows():
    from retriever.stages.medium import _spread_3x3

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, shape, dtype=np.int16) for shape in [(3, 3, 3), (3, 40, 3), (57, 4, 3), (64, 48, 3)]]
    arrays.append(np.asarray(Image.open(EXAMPLES / "cat.jpg").convert("RGB"), dtype=np.int16))
    for rgb in arrays:
        windows = np.lib.stride_tricks.sliding_window_view(rgb, (3, 3), axis=(0, 1))
        expected = (windows.max(axis=(-1, -2)) - windows.min(axis=(-1, -2))).max(axis=-1)
        assert np.array_equal(_spread_3x3(rgb), expected)
