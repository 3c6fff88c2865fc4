"""`rexomni app`: the handlers without a browser, then the page in headless Chromium.

The browser test needs Chromium and its driver (Debian: `apt-get install chromium chromium-driver`;
scripts/test.sh installs them when run as root) and is skipped, saying so, where they are missing.
With REXOMNI_APP_SCREENSHOT=PATH it saves the page after a run (docs/images/app.png is made so).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time

import numpy as np
import pytest
from PIL import Image

from rexomni import app as rexomni_app
from rexomni.app import InputError, add_corner, load_examples, parse_boxes, read_image, render, run_task, split_phrases
from rexomni.result import Result

EXAMPLE = os.path.join(rexomni_app.EXAMPLES_DIR, "scene1.png")
CATEGORIES = "red circle, blue square, yellow star, green triangle"


@pytest.fixture(scope="module")
def shipped_model():
    """The model shipped with the package: trained, so it answers the example scenes in a few tokens."""
    from rexomni.api import RexOmni

    return RexOmni.from_pretrained(device="cpu")


def _result():
    return Result(task="detection", width=224, height=224, labels=["red circle", "blue square", "red circle"],
                  scores=np.array([0.9, 0.5, 0.2], np.float32),
                  boxes=np.array([[10, 10, 60, 60], [100, 100, 180, 180], [150, 20, 200, 70]], np.float32),
                  raw_text="...", num_generated_tokens=30, seconds=0.25)


# --------------------------------------------------------------------------- handlers


def test_typed_phrases_and_boxes():
    assert split_phrases(" red circle,, blue square ,") == ["red circle", "blue square"]
    assert parse_boxes("10,20,30,40\n[1, 2, 3, 4]; 5,6,7.5,8") == [[10, 20, 30, 40], [1, 2, 3, 4], [5, 6, 7.5, 8]]
    assert parse_boxes("  \n") == []
    with pytest.raises(InputError, match="'1,2,3'.*four numbers"):
        parse_boxes("1,2,3")
    with pytest.raises(InputError, match="'a,b,c,d'"):
        parse_boxes("a,b,c,d")
    with pytest.raises(InputError, match="x1 must exceed x0"):
        parse_boxes("30,0,10,10")


def test_bad_input_gets_a_message_naming_it(tmp_path, shipped_model):
    broken = tmp_path / "holiday.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(InputError, match="no image"):
        read_image(None)
    with pytest.raises(InputError, match="'holiday.png'.*image file"):
        read_image({"path": str(broken), "orig_name": "holiday.png"})  # an upload, as the page sends it
    image = read_image(EXAMPLE)
    for task, text, boxes, message in [("detect", " , ", "", "at least one category"),
                                       ("point", "", "", "at least one category"),
                                       ("visual prompt", "", "", "at least one example box"),
                                       ("GUI element (box)", "", "", "describe the element"),
                                       ("segment", "dog", "", "unknown task 'segment'")]:
        with pytest.raises(InputError, match=message):
            run_task(shipped_model, image, task, text, "", boxes)


@pytest.mark.parametrize("task, text, boxes, asked", [
    ("detect", CATEGORIES, "", "detection"), ("detect all", "", "", "detect_all"),
    ("point", "blue square", "", "pointing"),
    ("visual prompt", "", "8,106,71,169", "visual_prompting"), ("keypoints", "", "", "keypoint"),
    ("OCR (boxes)", "word", "", "ocr_box"), ("OCR (polygons)", "", "", "ocr_polygon"),
    ("GUI element (box)", "search button", "", "gui_grounding"), ("GUI element (point)", "menu", "", "gui_pointing")])
def test_every_task_answers_and_renders(shipped_model, task, text, boxes, asked):
    image = read_image(EXAMPLE)
    result = run_task(shipped_model, image, task, text, "", boxes)
    assert result.task == asked
    view = render(image, result, 0.0)
    assert len(view.rows) == len(result) and view.drawn.size == image.size
    assert view.headers[2:] == (["x", "y"] if asked.endswith("pointing") else ["x0", "y0", "x1", "y1"])


def test_run_button_warns_in_the_page_and_keeps_the_last_answer(tmp_path, shipped_model):
    pytest.importorskip("gradio", reason="the app extra is not installed")
    broken = tmp_path / "notes.png"
    broken.write_bytes(b"\x89PNG truncated")
    upload = {"path": str(broken), "orig_name": "notes.png"}
    with pytest.warns(UserWarning, match="notes.png"):  # gr.Warning outside a page event is a UserWarning
        outputs = rexomni_app.on_run(shipped_model, upload, "detect", CATEGORIES, "", "", 0.0)
    drawn, table, raw, summary, state = outputs
    assert "notes.png" in summary and summary.startswith("⚠️")
    assert all(o == {"__type__": "update"} for o in (drawn, table, raw, state))  # gr.skip(): left as they were
    with pytest.warns(UserWarning, match="at least one category"):
        summary = rexomni_app.on_run(shipped_model, {"path": EXAMPLE}, "detect", "", "", "", 0.0)[3]
    assert "at least one category" in summary


def test_run_then_threshold_filters_without_the_model(shipped_model):
    pytest.importorskip("gradio", reason="the app extra is not installed")
    drawn, table, raw, summary, state = rexomni_app.on_run(shipped_model, {"path": EXAMPLE}, "detect", CATEGORIES,
                                                           "", "", 0.0)
    result = state["result"]
    assert len(result) >= 1 and raw == result.raw_text and "tokens written" in summary
    assert len(table["value"]["data"]) == len(result)
    assert set(result.labels) <= set(split_phrases(CATEGORIES))
    # The slider's handler gets only the kept answer: it cannot run the model.
    above_all = float(result.scores.max()) + 0.01
    drawn_high, table_high, summary_high = rexomni_app.on_threshold(state, above_all)
    assert table_high["value"]["data"] == [] and f"{len(result)} below score" in summary_high
    assert np.array_equal(np.asarray(drawn_high), np.asarray(state["image"]))  # nothing left to draw
    assert not np.array_equal(np.asarray(drawn), np.asarray(drawn_high))


def test_render_filters_draws_and_tabulates():
    image = Image.new("RGB", (224, 224), "white")
    view = render(image, _result(), 0.4)
    assert view.headers == ["label", "score", "x0", "y0", "x1", "y1"]
    assert view.rows == [["red circle", 0.9, 10.0, 10.0, 60.0, 60.0], ["blue square", 0.5, 100.0, 100.0, 180.0, 180.0]]
    assert "**2 item(s)** shown, 1 below score 0.40 hidden" in view.summary and "30 tokens" in view.summary
    everything = render(image, _result(), 0.0)
    assert len(everything.rows) == 3
    # The third box (score 0.2) is drawn only at the low threshold.
    region = (slice(20, 70), slice(150, 200))
    assert np.array_equal(np.asarray(view.drawn)[region], np.asarray(image)[region])
    assert not np.array_equal(np.asarray(everything.drawn)[region], np.asarray(image)[region])
    points = Result(task="pointing", width=224, height=224, labels=["dog"], scores=np.array([0.7], np.float32),
                    points=np.array([[12.25, 40]], np.float32))
    view = render(image, points, 0.0)
    assert view.headers == ["label", "score", "x", "y"] and view.rows == [["dog", 0.7, 12.2, 40.0]]


def test_clicking_two_corners_adds_a_box():
    text, pending, message = add_corner("", None, 80, 90)
    assert (text, pending) == ("", [80, 90]) and "opposite corner" in message
    text, pending, message = add_corner(text, pending, 20, 30)  # corners in any order
    assert (text, pending) == ("20,30,80,90", None)
    text, _, _ = add_corner(text, [1, 1], 5, 6)
    assert parse_boxes(text) == [[20, 30, 80, 90], [1, 1, 5, 6]]
    assert add_corner(text, [5, 5], 5, 40)[:2] == (text, None)  # an empty box is not added


def test_examples_come_from_the_repository():
    rows = load_examples()
    assert len(rows) == 6 and all(os.path.isfile(row[0]) for row in rows)
    assert rows[0][1:] == ["detect", CATEGORIES, ""]
    assert rows[4][1] == "visual prompt" and parse_boxes(rows[4][3]) == [[88, 141, 136, 184]]
    assert load_examples(os.path.dirname(EXAMPLE) + "/missing") == []


def test_missing_gradio_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` fail
    with pytest.raises(ImportError, match=r"rexomni\[app\]"):
        rexomni_app.build_app(None)
    from rexomni.cli import main

    assert main(["app"]) == 2
    assert "rexomni[app]" in capsys.readouterr().err
    assert main(["--help"]) == 0 and "app" in capsys.readouterr().out


# --------------------------------------------------------------------------- in a browser


def _browser():
    """Headless Chromium through Selenium, or a skip that says what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="the app extra (selenium) is not installed")
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not (binary and driver):
        pytest.skip("no Chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,960"):
        options.add_argument(arg)  # --no-sandbox: CI runs as root
    return webdriver.Chrome(service=webdriver.ChromeService(driver), options=options)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_app(shipped_model):
    pytest.importorskip("gradio", reason="the app extra is not installed")
    port = _free_port()
    page = rexomni_app.build_app(shipped_model)
    rexomni_app.launch(page, port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    page.close()


def test_page_in_a_real_browser(served_app):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()
    try:
        wait = WebDriverWait(browser, 60)
        browser.get(served_app)
        # Pick the first example: it fills the image and the categories.
        wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#examples [data-testid='dataset-cell-0-0']")).click()
        input_src = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#input-image img")).get_attribute("src")
        text = browser.find_element(By.CSS_SELECTOR, "#text textarea")
        assert text.get_attribute("value") == CATEGORIES

        start = time.perf_counter()
        browser.find_element(By.ID, "run").click()
        output = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#output-image img"))[0]
        rows = wait.until(lambda b: _table_rows(b))
        seconds = time.perf_counter() - start
        print(f"\nrexomni app: submit to drawn result {seconds:.2f} s (shipped model, CPU)")
        output_src = output.get_attribute("src")
        assert output_src and output_src != input_src and output_src.endswith(".png")
        for label, score, *box in rows:
            assert label in CATEGORIES.split(", ") and 0 < float(score) <= 1
            x0, y0, x1, y1 = map(float, box)
            assert 0 <= x0 <= x1 <= 224 and 0 <= y0 <= y1 <= 224
        assert "<|box_start|>" in browser.find_element(By.CSS_SELECTOR, "#raw textarea").get_attribute("value")
        assert "tokens written" in browser.find_element(By.ID, "summary").text
        # The drawn image is the input with the answer on it: same size, other pixels.
        drawn = Image.open(_download(output_src))
        assert drawn.size == (224, 224)
        assert not np.array_equal(np.asarray(drawn.convert("RGB")), np.asarray(Image.open(EXAMPLE).convert("RGB")))
        if os.environ.get("REXOMNI_APP_SCREENSHOT"):
            _save_screenshot(browser, os.environ["REXOMNI_APP_SCREENSHOT"])

        # The threshold hides every item without a new run; the raw answer stays.
        browser.find_element(By.CSS_SELECTOR, "#threshold input[type='range']").send_keys(Keys.END)  # to 1.0
        wait.until(lambda b: "hidden" in b.find_element(By.ID, "summary").text)
        assert _table_rows(browser) == []
        assert "<|box_start|>" in browser.find_element(By.CSS_SELECTOR, "#raw textarea").get_attribute("value")

        # No categories: a message in the page, not a trace.
        text.send_keys(Keys.CONTROL, "a", Keys.DELETE)  # clear() would not tell the page
        browser.find_element(By.ID, "run").click()
        wait.until(lambda b: "at least one category" in b.find_element(By.ID, "summary").text)
        assert "Traceback" not in browser.page_source

        # Visual prompt: the example row brings one box; two clicks on the image add another.
        browser.find_element(By.CSS_SELECTOR, "#examples [data-testid='dataset-cell-4-0']").click()
        boxes = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#boxes textarea"))
        wait.until(lambda b: boxes.get_attribute("value") == "88,141,136,184")
        image = browser.find_element(By.CSS_SELECTOR, "#input-image img")
        for x, y, reply in [(80, 90, "First corner"), (20, 30, "Added")]:  # image pixels (shown at natural size)
            ActionChains(browser).move_to_element_with_offset(  # offsets are from the element's centre
                image, x - image.size["width"] / 2, y - image.size["height"] / 2).click().perform()
            wait.until(lambda b, reply=reply: reply in b.find_element(By.ID, "summary").text)
        assert parse_boxes(boxes.get_attribute("value")) == [[88, 141, 136, 184], [20, 30, 80, 90]]
        browser.find_element(By.ID, "run").click()
        wait.until(lambda b: "object_1" in b.find_element(By.CSS_SELECTOR, "#raw textarea").get_attribute("value"))
    finally:
        browser.quit()


def _table_rows(browser) -> list[list[str]]:
    """The items table's cells as text, row by row (Gradio draws rows as ``role=gridcell`` elements)."""
    from selenium.webdriver.common.by import By

    rows: dict[int, list[str]] = {}
    for cell in browser.find_elements(By.CSS_SELECTOR, "#table [role='gridcell'][data-row]"):
        rows.setdefault(int(cell.get_attribute("data-row")), []).append(cell.get_attribute("textContent").strip())
    return [cells for _, cells in sorted(rows.items()) if any(cells)]


def _download(url: str):
    import io
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:
        return io.BytesIO(response.read())


def _save_screenshot(browser, path: str) -> None:
    """The page as a small PNG (64 colours) for docs/app.md."""
    import io

    browser.execute_script("window.scrollTo(0, 0)")
    shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    shot.quantize(64).save(path, optimize=True)
