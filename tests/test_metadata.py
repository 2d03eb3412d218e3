"""Generation metadata: each format from its own fixture, hostile metadata bounded, and the recorded prompt
answered by predict, submit, the HTTP API and the Python API (and ignored with --no-metadata)."""

from __future__ import annotations

import csv
import io
import json
import logging
import time
import tracemalloc

import httpx
import numpy as np
import pytest
from PIL import Image

from api.app import create_app
from api.settings import Settings
from conftest import EXAMPLES, run_cli
from hostile_images import mutations
from metadata_files import (A1111, COMFY_NEGATIVE, COMFY_POSITIVE, chunk, comfy_graph, comfy_png, cyclic_graph, deflated,
                            many_text_chunks, png, with_exif, with_xmp, xmp_packet, ztxt_bomb)
from retriever.evaluation.run import submit
from retriever.metadata import MetadataLimits, image_metadata, read_metadata
from server import LiveServer

CAT = Image.open(EXAMPLES / "cat.jpg").convert("RGB")
A1111_PROMPT = "a steampunk hummingbird made of brass gears, intricate, highly detailed"


# ---- one fixture per format ----------------------------------------------------------------------------------

@pytest.mark.parametrize("version, generator", [("v1.10.1", "AUTOMATIC1111"), ("f2.0.1v1.10.1-previous-669-gdfdcbab6",
                                                 "Forge"), ("stable-diffusion.cpp", "stable-diffusion.cpp")])
def test_a1111_parameters_chunk(version, generator):
    rec = read_metadata(png({"parameters": A1111.replace("v1.10.1", version)}))
    assert rec.prompt == A1111_PROMPT and rec.negative_prompt == "blurry, lowres, watermark"
    assert rec.generator == generator and rec.found_in == "png:parameters"
    assert rec.settings["Steps"] == "28" and rec.settings["Seed"] == "3141592" and rec.settings["Model"] == "dreamshaper_8"
    assert rec.settings["Lora hashes"] == "gears: 1a2b, brass: 3c4d"  # a quoted value keeps its commas


def test_comfyui_follows_the_samplers_positive_input_past_a_negative_node_wired_first():
    rec = read_metadata(comfy_png())
    assert rec.generator == "ComfyUI" and rec.found_in == "png:prompt"
    assert rec.prompt == f"{COMFY_POSITIVE}, volumetric light"  # through ControlNet, a combine and a string node
    assert rec.negative_prompt == COMFY_NEGATIVE and "unused" not in rec.prompt + rec.negative_prompt
    assert rec.settings["seed"] == 42 and rec.settings["steps"] == 25 and rec.settings["model"] == "sdxl_base_1.0.safetensors"
    flux = {"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in snow"}},
            "2": {"class_type": "BasicGuider", "inputs": {"conditioning": ["1", 0], "model": ["5", 0]}},
            "3": {"class_type": "SamplerCustomAdvanced", "inputs": {"guider": ["2", 0], "noise": ["6", 0]}},
            "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0]}}}
    assert read_metadata(comfy_png(flux)).prompt == "a red fox in snow"  # FLUX: the prompt comes through the guider


def test_invokeai_three_generations_of_metadata():
    new = read_metadata(png({"invokeai_metadata": json.dumps({
        "positive_prompt": "an oil painting of a harbour at dawn", "negative_prompt": "photo, blurry", "seed": 9,
        "steps": 30, "cfg_scale": 7.5, "scheduler": "euler", "model": {"name": "juggernautXL", "base": "sdxl"}})}))
    assert (new.prompt, new.negative_prompt, new.generator) == ("an oil painting of a harbour at dawn", "photo, blurry",
                                                                "InvokeAI")
    assert new.settings["model"] == "juggernautXL" and new.settings["steps"] == 30
    v2 = read_metadata(png({"sd-metadata": json.dumps({"model_weights": "stable-diffusion-1.5", "image": {
        "prompt": [{"prompt": "a knight on a horse, dramatic [cartoon, lowres]", "weight": 1.0}], "steps": 50,
        "seed": 7, "sampler": "k_lms"}})}))
    assert (v2.prompt, v2.negative_prompt) == ("a knight on a horse, dramatic", "cartoon, lowres")
    assert v2.settings["model_weights"] == "stable-diffusion-1.5" and v2.found_in == "png:sd-metadata"
    dream = read_metadata(png({"Dream": '"a cottage in the woods [people]" -s 40 -S 1234 -W 512 -H 768 -C 7.5 -A k_euler'}))
    assert (dream.prompt, dream.negative_prompt) == ("a cottage in the woods", "people")
    assert dream.settings["seed"] == "1234" and dream.settings["sampler"] == "k_euler"


def test_novelai_description_and_comment():
    rec = read_metadata(png({"Title": "AI generated image", "Description": "1girl, cherry blossoms, masterpiece",
                             "Software": "NovelAI", "Source": "Stable Diffusion XL C1E1DE52",
                             "Comment": json.dumps({"steps": 28, "sampler": "k_euler_ancestral", "seed": 5,
                                                    "scale": 5.0, "uc": "lowres, bad anatomy"})}))
    assert (rec.prompt, rec.negative_prompt, rec.generator) == ("1girl, cherry blossoms, masterpiece",
                                                                "lowres, bad anatomy", "NovelAI")
    assert rec.settings["model"] == "Stable Diffusion XL C1E1DE52" and rec.settings["scale"] == 5.0


def test_diffusiondb_prompt_chunk():
    rec = read_metadata(png({"prompt": "portrait of a cyborg queen, by artgerm and greg rutkowski", "seed": "1021"}))
    assert (rec.prompt, rec.generator, rec.settings) == ("portrait of a cyborg queen, by artgerm and greg rutkowski",
                                                         "DiffusionDB", {"seed": "1021"})


def test_fooocus_and_swarmui_json():
    fooocus = {"prompt": "a cozy cabin, snow", "negative_prompt": "people", "steps": 30, "base_model": "juggernautXL"}
    for data in (png({"parameters": json.dumps(fooocus)}), png({"Comment": json.dumps(fooocus)})):
        rec = read_metadata(data)
        assert (rec.prompt, rec.negative_prompt, rec.generator) == ("a cozy cabin, snow", "people", "Fooocus")
    swarm = {"sui_image_params": {"prompt": "a koi pond", "negativeprompt": "blurry", "seed": 3, "model": "flux-dev"}}
    rec = read_metadata(with_exif(b"UNICODE\x00" + json.dumps(swarm).encode("utf-16-be")))
    assert (rec.prompt, rec.negative_prompt, rec.generator, rec.settings["model"]) == ("a koi pond", "blurry", "SwarmUI",
                                                                                       "flux-dev")


@pytest.mark.parametrize("fmt, comment", [
    ("JPEG", b"UNICODE\x00" + A1111.encode("utf-16-be")),  # AUTOMATIC1111 (piexif's "unicode")
    ("WEBP", b"UNICODE\x00" + A1111.encode("utf-16-le")),  # little-endian writers
    ("JPEG", b"ASCII\x00\x00\x00" + A1111.encode("utf-8")),
    ("JPEG", b"\x00" * 8 + A1111.encode("utf-8")),  # undefined character code
])
def test_exif_user_comment(fmt, comment):
    rec = read_metadata(with_exif(comment, fmt))
    assert rec.prompt == A1111_PROMPT and rec.negative_prompt == "blurry, lowres, watermark"
    assert rec.found_in == "exif:UserComment" and rec.generator == "AUTOMATIC1111"


def test_exif_jis_comment_and_comfyui_webp():
    text = "桜の木の下の猫、水彩画\nSteps: 20, Sampler: Euler, Seed: 3"
    assert read_metadata(with_exif(b"JIS\x00\x00\x00\x00\x00" + text.encode("iso2022_jp"))).prompt == "桜の木の下の猫、水彩画"
    webp = with_exif(b"", "WEBP", **{"0x0110": "prompt:" + json.dumps(comfy_graph())})  # ComfyUI's animated WebP
    assert read_metadata(webp).prompt.startswith(COMFY_POSITIVE)


def test_xmp_description_parameters_and_draw_things():
    described = with_xmp(xmp_packet('<dc:description><rdf:Alt><rdf:li xml:lang="x-default">a glass whale in a '
                                    'desert</rdf:li></rdf:Alt></dc:description><xmp:CreatorTool>Draw Things'
                                    '</xmp:CreatorTool>'))
    rec = read_metadata(described)
    assert (rec.prompt, rec.generator, rec.found_in) == ("a glass whale in a desert", "Draw Things", "xmp:description")
    attributed = with_xmp(xmp_packet("", f'sd:parameters="{A1111_PROMPT}&#10;Steps: 9, Seed: 1, Sampler: Euler"'), "WEBP")
    assert read_metadata(attributed).prompt == A1111_PROMPT
    drawn = with_xmp(xmp_packet('<exif:UserComment><rdf:Alt><rdf:li xml:lang="x-default">'
                                + json.dumps({"c": "a paper boat", "uc": "blurry", "seed": 4}).replace('"', "&quot;")
                                + "</rdf:li></rdf:Alt></exif:UserComment>"))
    assert (read_metadata(drawn).prompt, read_metadata(drawn).negative_prompt) == ("a paper boat", "blurry")
    assert read_metadata(png(itxt={"XML:com.adobe.xmp": xmp_packet("", f'sd:parameters="{A1111_PROMPT}"')})).prompt \
        == A1111_PROMPT  # PNG keeps XMP in an iTXt chunk


def test_control_and_bidi_characters_of_a_record_never_come_out(tmp_path):
    """A recorded prompt is printed, answered and written one to a line: escapes, NULs, line breaks and bidi
    overrides of the file are not passed on."""
    hostile = '=HYPERLINK("x")\x1b]0;pwned\x07\nSteps: 20, Sampler: Euler a, CFG scale: 7'
    rec = read_metadata(png({"parameters": hostile}))
    assert rec.prompt == '=HYPERLINK("x") ]0;pwned' and rec.settings["Steps"] == "20"
    text = ("a red\x00fox\r\n\u202ein the\u2066 snow\x85\x9b31m\u2069, soft\nNegative prompt: blurry,\n\tgrainy\u202c\n"
            "Steps: 9, Sampler: Euler\x1b[2J, Seed: 1")
    raw = png(itxt={"parameters": text})
    rec = read_metadata(raw)
    assert rec.prompt == "a red fox in the snow 31m, soft" and rec.negative_prompt == "blurry, grainy"
    assert rec.settings["Sampler"] == "Euler [2J"
    for value in (rec.prompt, rec.negative_prompt, rec.generator, *map(str, rec.settings.values()), *rec.settings):
        assert value.isprintable() and "\u202e" not in value, value
    (tmp_path / "f.png").write_bytes(png({"parameters": hostile}))
    res = run_cli("predict", str(tmp_path / "f.png"), "--no-embedding", "--top", "1")
    assert res.returncode == 0 and '=HYPERLINK("x") ]0;pwned' in res.stdout and "\x1b" not in res.stdout, res.stdout


def test_a_photos_own_metadata_is_no_prompt():
    camera = with_exif(b"ASCII\x00\x00\x00holiday in Rome", **{"0x010e": "OLYMPUS DIGITAL CAMERA", "0x0131": "v1.0"})
    caption = with_xmp(xmp_packet('<dc:description><rdf:Alt><rdf:li xml:lang="x-default">Two dogs on a beach'
                                  '</rdf:li></rdf:Alt></dc:description><xmp:CreatorTool>Adobe Photoshop 25.0'
                                  '</xmp:CreatorTool>'))
    assert read_metadata(camera) is None and read_metadata(caption) is None
    assert read_metadata((EXAMPLES / "cat.jpg").read_bytes()) is None


def test_a_pil_image_keeps_its_record():
    assert image_metadata(Image.open(io.BytesIO(comfy_png()))).negative_prompt == COMFY_NEGATIVE
    assert image_metadata(Image.open(io.BytesIO(with_exif(b"UNICODE\x00" + A1111.encode("utf-16-be"))))).prompt \
        == A1111_PROMPT


# ---- hostile metadata -------------------------------------------------------------------------------------------

def _bounded(data: bytes) -> tuple[object, float, int]:
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        rec = read_metadata(data)
        return rec, time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_ztxt_and_itxt_bombs_cost_bounded_time_and_memory():
    limits = MetadataLimits()
    bomb = ztxt_bomb(32)  # 32 MiB of text from a chunk of about 32 KiB
    itxt = png(extra_chunks=[(b"iTXt", b"parameters\x00\x01\x00\x00\x00" + deflated(32))])
    for data in (bomb, itxt):
        rec, seconds, peak = _bounded(data)
        assert rec is None  # over the cap: not read, the image is interrogated
        assert peak < len(data) + 3 * limits.max_field_bytes, peak  # never the 32 MiB it claims
        assert seconds < 10.0  # a hang guard, not a speed target (bench/metadata_cost.py measures it)
    many = png(extra_chunks=[(b"zTXt", f"{key}\x00\x00".encode() + deflated(1)) for key in ("prompt", "Comment",
                                                                                          "Dream", "Source") * 10])
    rec, _, peak = _bounded(many)
    assert peak < len(many) + 2 * limits.max_total_bytes


def test_cyclic_huge_and_broken_graphs_fall_back():
    assert read_metadata(comfy_png(cyclic_graph(with_text=False))) is None
    assert read_metadata(comfy_png(cyclic_graph(with_text=True))).prompt == "a lighthouse in a storm"
    chain = {str(i): {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": [str(i + 1), 0]}}
             for i in range(1, 4000)}
    chain["0"] = {"class_type": "KSampler", "inputs": {"seed": 1, "positive": ["1", 0], "negative": ["1", 0]}}
    chain["4000"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "too deep to reach"}}
    huge = {str(i): {"class_type": "Note", "inputs": {}} for i in range(MetadataLimits().max_graph_nodes + 1)}
    odd_ids = {**cyclic_graph(with_text=True), "²": {"class_type": "SaveImage", "inputs": {"images": ["9" * 5000, 0]}},
               "9" * 5000: {"class_type": "KSampler", "inputs": {"steps": 1, "positive": ["²", 0]}}}
    assert read_metadata(comfy_png(odd_ids)).prompt == "a lighthouse in a storm"  # hostile ids sort, never crash
    for graph in (chain, huge):
        rec, seconds, _ = _bounded(comfy_png(graph))
        assert rec is None and seconds < 10.0  # a hang guard
    for broken in ('{"1": {"class_type": "KSampler", "inputs": ', "[" * 200_000, '{"a": ' * 100_000):
        assert read_metadata(png({"prompt": broken})) is None  # broken or pathologically nested JSON
    assert read_metadata(png({"invokeai_metadata": "{not json", "parameters": ""})) is None


def test_wrong_encodings_and_damaged_containers():
    utf8 = png(extra_chunks=[(b"tEXt", b"parameters\x00" + "ein Schloss über dem Meer\nSteps: 1, Seed: 2, CFG scale: 3"
                              .encode("utf-8"))])  # UTF-8 in a Latin-1 chunk, as some tools write it
    assert read_metadata(utf8).prompt == "ein Schloss über dem Meer"
    assert read_metadata(with_exif(b"UNICODE\x00\xff\xfe\x00\xd8" + b"\x00" * 7)) is None  # a lone surrogate
    evil = xmp_packet('<dc:description>&lol;</dc:description><xmp:CreatorTool>ComfyUI</xmp:CreatorTool>')
    evil = evil.replace("<x:xmpmeta", '<!DOCTYPE x [<!ENTITY lol "lol">]><x:xmpmeta')
    assert read_metadata(with_xmp(evil)) is None  # no DTD, no entity expansion
    data = png({"parameters": A1111})
    cut = data.find(b"tEXt")
    assert read_metadata(data[: cut + 40]) is None  # cut inside the chunk
    lying = data[: cut - 4] + b"\x7f\xff\xff\xff" + data[cut:]  # a chunk length past the end of the file
    assert read_metadata(lying) is None
    assert read_metadata(b"") is None and read_metadata(b"\x89PNG\r\n\x1a\n") is None


def test_fuzzed_files_never_fail_the_reader(caplog):
    caplog.set_level(logging.WARNING, logger="retriever.metadata")
    cases = mutations(n_per_format=40, seed=3) + [(f"comfy-cut-{n}", comfy_png()[:n]) for n in range(60, 900, 97)]
    for name, data in cases:
        rec = read_metadata(data)
        assert rec is None or isinstance(rec.prompt, str) and rec.prompt, name
    assert not caplog.records, caplog.records[0].getMessage()  # no internal error was swallowed


# ---- the recorded prompt is the answer --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recorded_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recorded")
    (folder / "a1111.png").write_bytes(png({"parameters": A1111}, image=CAT))
    (folder / "comfy.png").write_bytes(comfy_png(image=CAT))
    (folder / "many.png").write_bytes(many_text_chunks(CAT))  # 30 MiB of text, the image itself admitted
    (folder / "cycle.png").write_bytes(comfy_png(cyclic_graph(False), image=CAT))
    return folder


def test_python_api_answers_the_recorded_prompt(lite_interrogator, recorded_dir, monkeypatch):
    it = lite_interrogator
    rec = it.interrogate(recorded_dir / "a1111.png")
    assert (rec.prompt, rec.source, rec.generator) == (A1111_PROMPT, "metadata", "AUTOMATIC1111")
    assert rec.negative_prompt == "blurry, lowres, watermark" and rec.settings["Seed"] == "3141592"
    assert rec.alternatives[0] == rec.interrogated_prompt and "cat" in rec.interrogated_prompt.lower()
    assert np.allclose(rec.embedding, it.metric.encode_text([A1111_PROMPT])[0], atol=1e-5)
    out = rec.as_dict(embeddings=False)
    assert out["source"] == "metadata" and out["recorded_in"] == "png:parameters" and out["interrogated_prompt"]
    plain = it.interrogate(recorded_dir / "a1111.png", metadata=False)
    assert plain.source == "interrogation" and plain.generator is None and "cat" in plain.prompt.lower()
    assert plain.prompt == rec.interrogated_prompt and "settings" not in plain.as_dict(embeddings=False)
    opened = it.interrogate_batch([Image.open(recorded_dir / "comfy.png"), recorded_dir / "many.png",
                                   recorded_dir / "cycle.png"])
    assert opened[0].prompt.startswith(COMFY_POSITIVE) and opened[0].generator == "ComfyUI"
    assert [r.source for r in opened[1:]] == ["interrogation"] * 2  # bounded reading, then interrogation
    off = it.profile.model_copy(update={"metadata": it.profile.metadata.model_copy(update={"enabled": False})})
    monkeypatch.setattr(it, "profile", off)
    assert it.interrogate(recorded_dir / "a1111.png").source == "interrogation"  # the profile can turn it off


def test_submit_answers_recorded_prompts(lite_interrogator, recorded_dir, tmp_path):
    prompts = tmp_path / "prompts.csv"
    submit(lite_interrogator, recorded_dir, tmp_path / "sub.csv", progress=False, prompts_out=prompts)
    answered = {r["imgId"]: r["prompt"] for r in csv.DictReader(prompts.open())}
    assert answered["a1111"] == A1111_PROMPT and answered["comfy"].startswith(COMFY_POSITIVE)
    assert answered["many"] == answered["cycle"] and "cat" in answered["cycle"].lower()  # interrogated alike
    rows = (tmp_path / "sub.csv").read_text().splitlines()
    first = np.array([float(r.split(",")[1]) for r in rows[1:385]])  # a1111 sorts first: its 384 rows
    assert np.allclose(first, lite_interrogator.metric.encode_text([A1111_PROMPT])[0], atol=1e-5)


def test_predict_answers_recorded_prompts_unless_told_not_to(lite_profile, recorded_dir):
    res = run_cli("predict", str(recorded_dir), "--format", "jsonl", "--no-embedding", "--top", "1")
    assert res.returncode == 0, res.stderr
    rows = {r["image"].rsplit("/", 1)[1]: r for r in map(json.loads, res.stdout.splitlines())}
    assert (rows["a1111.png"]["prompt"], rows["a1111.png"]["generator"]) == (A1111_PROMPT, "AUTOMATIC1111")
    assert rows["comfy.png"]["negative_prompt"] == COMFY_NEGATIVE and rows["comfy.png"]["source"] == "metadata"
    assert rows["many.png"]["source"] == rows["cycle.png"]["source"] == "interrogation"
    assert rows["cycle.png"]["generator"] is None and "settings" in rows["a1111.png"]
    res = run_cli("predict", str(recorded_dir / "a1111.png"), str(recorded_dir / "comfy.png"), "--format", "csv",
                  "--no-metadata")
    table = list(csv.DictReader(io.StringIO(res.stdout)))
    assert list(table[0]) == ["image", "prompt", "negative_prompt", "error", "source", "generator"]
    assert {r["source"] for r in table} == {"interrogation"} and all("cat" in r["prompt"].lower() for r in table)



@pytest.fixture(scope="module")
def client(lite_interrogator):
    with LiveServer(create_app(Settings(max_wait_ms=5), lite_interrogator)) as live:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            yield c


def test_http_answers_recorded_prompts_and_hostile_metadata_costs_no_5xx(client, recorded_dir):
    comfy = (recorded_dir / "comfy.png").read_bytes()
    body = client.post("/v1/interrogate", content=comfy, headers={"content-type": "image/png"}).json()
    assert (body["source"], body["generator"], body["negative_prompt"]) == ("metadata", "ComfyUI", COMFY_NEGATIVE)
    assert body["prompt"].startswith(COMFY_POSITIVE) and body["settings"]["seed"] == 42 and body["interrogated_prompt"]
    plain = client.post("/v1/interrogate", files={"file": ("c.png", comfy, "image/png")}, params={"metadata": "false"})
    assert plain.status_code == 200 and plain.json()["source"] == "interrogation" and "generator" not in plain.json()
    files = [("files", (n, (recorded_dir / n).read_bytes(), "image/png")) for n in ("a1111.png", "many.png", "cycle.png")]
    files.append(("files", ("bomb.png", ztxt_bomb(32, image=CAT), "image/png")))
    files.append(("files", ("broken.png", png({"parameters": A1111})[:-30] + chunk(b"IEND", b""), "image/png")))
    results = client.post("/v1/interrogate/batch", files=files).json()["results"]
    assert results[0]["result"]["prompt"] == A1111_PROMPT
    assert [r["result"]["source"] for r in results[1:3]] == ["interrogation", "interrogation"]
    # a 32 MiB zTXt bomb: admission refuses the file (Pillow's own text limit), the usual 4xx; broken bytes too
    assert [r["error"]["status"] for r in results[3:]] == [400, 400]
