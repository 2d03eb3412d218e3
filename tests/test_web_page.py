"""The web page in headless Chromium (Debian's), driven by Playwright; screenshots go to test-artifacts/."""

import csv
import hashlib
import io

import pytest

from api.app import create_app
from api.settings import Settings
from browser import ARTIFACTS, chromium, page_in
from conftest import EXAMPLES
from server import LiveServer

CAT, COFFEE = EXAMPLES / "cat.jpg", EXAMPLES / "coffee.jpg"


@pytest.fixture(scope="module")
def server(lite_interrogator):
    with LiveServer(create_app(Settings(), lite_interrogator)) as live:
        yield live


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture()
def page(server, browser):
    with page_in(browser) as (page, problems):
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(server.url + "/")
        yield page, problems, requests
        # a refused upload shows in the console as a failed resource; anything else is a problem
        assert [p for p in problems if "status of 400" not in p and "status of 415" not in p] == []
        assert all(u.startswith(server.url) or u.startswith(("blob:", "data:")) for u in requests), requests


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def wait_prompt(page) -> str:
    page.wait_for_function("document.querySelector('#prompt').textContent.length > 0", timeout=30_000)
    return page.inner_text("#prompt")


def test_one_image_prompt_alternatives_negative_and_copy(page, lite_interrogator):
    page, _, _ = page
    page.set_input_files("#file", str(CAT))
    prompt = wait_prompt(page)
    expected = lite_interrogator.interrogate(CAT)
    assert prompt == expected.prompt and "cat" in prompt.lower()
    alts = page.locator("#alternatives li .alt").all_inner_texts()
    assert alts == expected.alternatives[:5] and 1 <= len(alts) <= 5
    assert page.locator("#alternatives li button.copy").count() == len(alts)
    assert not page.is_visible("#negative")  # an option, collapsed: not beside the prompt
    page.click("#negative-box summary")
    assert page.is_visible("#negative") and page.inner_text("#negative") == expected.negative_prompt
    page.click("button.copy[data-for=prompt]")
    assert page.evaluate("navigator.clipboard.readText()") == prompt
    page.locator("#alternatives li button.copy").first.click()
    assert page.evaluate("navigator.clipboard.readText()") == alts[0]
    page.click("button.copy[data-for=negative]")
    assert page.evaluate("navigator.clipboard.readText()") == expected.negative_prompt
    assert page.locator("#candidates tbody tr").count() > 0 and page.locator("#timings tbody tr").count() >= 5
    shot(page, "web-page.png")


def test_mode_selector(page, lite_interrogator):
    page, _, _ = page
    page.select_option("#mode", "fast")
    page.set_input_files("#file", str(CAT))
    assert wait_prompt(page) == lite_interrogator.interrogate(CAT, mode="fast").prompt
    assert "mode fast" in page.inner_text("#status")
    page.select_option("#mode", "negative")  # a new mode re-runs the image on the page
    page.wait_for_function("document.querySelector('#status').textContent.includes('round trip')"
                           " && document.querySelector('#status').textContent.includes('mode negative')", timeout=30_000)
    assert page.inner_text("#prompt") == lite_interrogator.interrogate(CAT, mode="negative").prompt
    shot(page, "web-page-negative-mode.png")
    page.select_option("#mode", "classic")
    page.set_input_files("#file", str(CAT))  # the same file again still runs
    page.wait_for_function("document.querySelector('#status').textContent.includes('mode classic')"
                           " && document.querySelector('#status').textContent.includes('round trip')", timeout=30_000)
    assert page.inner_text("#prompt") == lite_interrogator.interrogate(CAT, mode="classic").prompt


def test_several_files_give_a_table_and_a_csv(page, tmp_path):
    page, _, _ = page
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    page.set_input_files("#file", [str(CAT), str(broken), str(COFFEE)])
    page.wait_for_function("document.querySelectorAll('#results tbody tr').length === 3", timeout=60_000)
    cells = [page.locator("#results tbody tr").nth(i).locator("td").all_inner_texts()[1:5] for i in range(3)]
    assert [c[0] for c in cells] == ["cat.jpg", "broken.png", "coffee.jpg"]
    assert "cat" in cells[0][1].lower() and cells[1][3] and not cells[1][1] and cells[2][1]
    assert page.is_hidden("#single")
    assert page.locator("#results tbody img.thumb").count() == 3
    copies = page.locator("#results tbody button.copy")
    assert copies.count() == 2  # one per answered row
    copies.nth(1).click()
    assert page.evaluate("navigator.clipboard.readText()") == cells[2][1]
    with page.expect_download() as download:
        page.click("#csv")
    rows = list(csv.DictReader(io.StringIO(open(download.value.path()).read())))
    assert [r["file"] for r in rows] == ["cat.jpg", "broken.png", "coffee.jpg"]
    assert rows[0]["prompt"] == cells[0][1] and rows[1]["error"]
    shot(page, "web-page-table.png")


def test_an_error_clears_the_previous_result_and_the_same_file_runs_twice(page, tmp_path):
    page, _, requests = page
    page.set_input_files("#file", str(CAT))
    wait_prompt(page)
    assert page.locator("#alternatives li").count() > 0
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(CAT.read_bytes()[:300])
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert "corrupt" in page.inner_text("#error")
    assert page.is_hidden("#single") and page.inner_text("#prompt") == ""  # not in the Prompt box, no Copy shown
    assert page.locator("#alternatives li").count() == 0 and page.locator("#candidates tbody tr").count() == 0
    assert page.inner_text("#negative") == "" and not page.is_visible("#preview")
    shot(page, "web-page-error.png")
    posts = lambda: sum("/v1/interrogate" in u for u in requests)  # noqa: E731
    before = posts()
    page.set_input_files("#file", str(bad))  # the same file picked again is sent again
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    page.wait_for_timeout(300)
    assert posts() == before + 1


def test_edit_and_send_stores_the_correction(page, server):
    page, _, _ = page
    page.set_input_files("#file", str(CAT))
    prompt = wait_prompt(page)
    assert page.input_value("#corrected") == prompt
    page.fill("#corrected", "a tabby cat asleep on a sofa, soft window light")
    page.select_option("#rating", "2")
    page.click("#send")
    page.wait_for_function("document.querySelector('#sent').textContent.includes('saved')", timeout=30_000)
    row = server.server.config.app.state.feedback.rows()[-1]
    assert row["corrected_prompt"] == "a tabby cat asleep on a sofa, soft window light" and row["rating"] == 2
    assert row["prompt"] == prompt and row["image_sha256"] == hashlib.sha256(CAT.read_bytes()).hexdigest()


def test_docs_are_served_without_a_network(page, server):
    page, _, requests = page
    page.goto(server.url + "/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
    assert page.locator(".opblock-summary-path", has_text="/v1/interrogate").count() >= 1
    assert any("/docs-assets/swagger-ui-bundle.js" in u for u in requests)
    shot(page, "docs.png")
