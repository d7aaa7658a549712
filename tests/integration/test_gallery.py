"""The gallery (`kandinsky-batch gallery`) opened in a real headless Chromium, from file and S3 storage.

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package: missing, the tests skip
locally and fail in CI (CI=true). Each test keeps a screenshot under its tmp dir, and in
$KB_TEST_ARTIFACTS when that is set.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from kandinsky_batch.keys import job_id
from kandinsky_batch.schema import JobState
from kandinsky_batch.settings import Settings
from kandinsky_batch.storage import Storage, image_key, metadata_key
from kandinsky_batch.store.status import StatusStore
from producer.cli.base import CliContext
from producer.cli.gallery import gallery
from producer.client import Client
from producer.gallery import write_gallery
from tests.conftest import IN_CI
from tests.helpers.s3server import create_bucket, running_s3_server

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TINY = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}


def missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module, driven by Debian's matching chromedriver."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium is not installed (pip install -e '.[dev]')")
    if not (os.access(CHROMIUM, os.X_OK) and os.access(DRIVER, os.X_OK)):
        missing(f"no {CHROMIUM} or {DRIVER}: apt-get install chromium chromium-driver")
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    yield driver
    driver.quit()


# --- helpers: batches made through the store, the page's state -------------------------------------


def png(seed: int, size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (seed * 37 % 256, seed * 91 % 256, 128)).save(buf, format="PNG")
    return buf.getvalue()


def stored_batch(
    store: StatusStore,
    storage: Storage,
    seeds: list[int],
    clips: list[float | None],
    failed: frozenset[int] = frozenset(),
) -> str:
    """A finished batch written through the real store: a PNG and metadata (with `clip_score`) per job."""
    batch = f"gal-{uuid.uuid4().hex[:10]}"
    store.create_jobs(batch, list(enumerate(seeds)))
    for i, (seed, clip) in enumerate(zip(seeds, clips, strict=True)):
        job = job_id(batch, i)
        assert store.start(job, "gallery-test", 1, {"prompt": f"prompt {i}", **TINY, "seed": seed})[0]
        if i in failed:
            assert store.fail(job, "bad_input", f"image: cannot read input {i}")
            continue
        image = storage.put(image_key(batch, job, 0, "png"), png(seed), "image/png")
        meta: dict[str, Any] = {"seed": seed, "outputs": [image]}
        if clip is not None:
            meta["clip_score"] = clip
        uri = storage.put(metadata_key(batch, job), json.dumps(meta).encode(), "application/json")
        assert store.succeed(job, [image], uri)
    return batch


def size_of(source: Path | bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        return image.size


def file_of(href: str) -> Path:
    return Path(urllib.request.url2pathname(href.removeprefix("file://")))


def open_page(browser: Any, index: Path, fragment: str = "") -> None:
    browser.get("about:blank")  # a new fragment alone would not load the page again
    browser.get(index.resolve().as_uri() + fragment)
    wait_for(
        browser, "return window.KB_GALLERY !== undefined && document.querySelector('#page-info').textContent"
    )


def wait_for(browser: Any, script: str, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := browser.execute_script(script)):
        assert time.monotonic() < deadline, f"timed out waiting for: {script}"
        time.sleep(0.05)
    return value


def card_ids(browser: Any) -> list[str]:
    return browser.execute_script("return [...document.querySelectorAll('.card')].map(c => c.dataset.id)")


def choose(browser: Any, control: str, value: str) -> None:
    """Set a control as a user would and fire its change event."""
    browser.execute_script(
        "const c = document.getElementById(arguments[0]); c.value = arguments[1];"
        "c.dispatchEvent(new Event('change'));",
        control,
        value,
    )


def assert_every_image_loads(browser: Any) -> int:
    """Scroll each card's image into view (they are lazy) and wait until it decoded: none broken."""
    count = browser.execute_script("return document.querySelectorAll('.card img').length")
    for k in range(count):
        browser.execute_script("document.querySelectorAll('.card img')[arguments[0]].scrollIntoView()", k)
        wait_for(browser, f"const i = document.querySelectorAll('.card img')[{k}]; return i.complete")
    broken = browser.execute_script(
        "return [...document.querySelectorAll('.card img')]"
        ".filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
    )
    assert broken == []
    return int(count)


def screenshot(browser: Any, tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> Path:
    browser.execute_script("window.scrollTo(0, 0)")
    path = tmp_path / f"{name}.png"
    assert browser.save_screenshot(str(path))
    kept = [path]
    if artifacts := os.environ.get("KB_TEST_ARTIFACTS"):
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        kept.append(Path(shutil.copy(path, Path(artifacts) / path.name)))
    with capsys.disabled():
        print(f"\ngallery screenshot: {', '.join(map(str, kept))}")
    return path


def run_cli(settings: Settings, *argv: str) -> tuple[Path, str]:
    """The gallery command as the CLI runs it; returns the printed index.html path and the note."""
    result = CliRunner().invoke(gallery, list(argv), obj=CliContext(settings), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip().splitlines()[-1]), result.stderr


# --- a batch through a real worker ------------------------------------------------------------------


def test_a_worker_batch_opens_with_every_image_its_error_and_working_sorts(
    worker, client: Client, module_settings: Settings, tmp_path: Path, browser, capsys
):
    missing_input = Path(module_settings.storage_url.removeprefix("file://")) / "no-such-input.png"
    specs = [{"prompt": p, **TINY, "seed": s} for p, s in (("a fox", 30), ("a lighthouse", 10), ("雪山", 20))]
    specs.append({"mode": "img2img", "prompt": "from a lost image", "image": missing_input.as_uri(), **TINY})
    batch = client.submit_batch(specs).batch_id
    final = client.wait(batch, timeout=180)
    assert (final.counts[JobState.SUCCEEDED], final.counts[JobState.FAILED]) == (3, 1)

    index, note = run_cli(module_settings, batch, "-o", str(tmp_path / "gallery"))
    assert index == tmp_path / "gallery" / "index.html" and "4 cards, 3 new thumbnails" in note
    thumbs = sorted((tmp_path / "gallery" / "thumbs").iterdir())
    assert len(thumbs) == 3 and all(size_of(t) == (64, 64) for t in thumbs)

    open_page(browser, index)
    assert card_ids(browser) == [job_id(batch, i) for i in range(4)]
    assert assert_every_image_loads(browser) == 3
    failed = browser.find_element("css selector", f".card[data-id='{job_id(batch, 3)}']")
    assert failed.find_element("css selector", ".error .code").text == "bad_input"
    assert "cannot read" in failed.find_element("css selector", ".error .message").text
    assert failed.find_elements("css selector", "img") == []
    # every link of a card reaches its file: the full image and its metadata JSON
    first = browser.find_element("css selector", f".card[data-id='{job_id(batch, 0)}']")
    image_href = first.find_element("css selector", ".image-link").get_attribute("href")
    meta_href = first.find_element("css selector", ".meta-link").get_attribute("href")
    assert size_of(file_of(image_href)) == (64, 64)
    meta = json.loads(file_of(meta_href).read_text())
    assert meta["seed"] == 30 and meta["spec"]["prompt"] == "a fox"
    # the card shows the score the worker stored in the metadata
    assert first.find_element("css selector", ".clip").text == f"{meta['clip_score']:.3f}"
    screenshot(browser, tmp_path, "gallery-worker-batch", capsys)

    choose(browser, "sort", "seed-asc")
    seeds = browser.execute_script("return [...document.querySelectorAll('.card')].map(c => c.dataset.seed)")
    assert [int(s) for s in seeds[:3]] == [10, 20, 30] and card_ids(browser)[:3] == [
        job_id(batch, i) for i in (1, 2, 0)
    ]
    choose(browser, "sort", "state")
    assert card_ids(browser)[0] == job_id(batch, 3)  # failed first
    choose(browser, "state", "failed")
    assert card_ids(browser) == [job_id(batch, 3)]

    # made once: a second run makes no thumbnail and leaves the first ones untouched
    mtimes = [t.stat().st_mtime_ns for t in thumbs]
    _, note = run_cli(module_settings, batch, "-o", str(tmp_path / "gallery"))
    assert "0 new thumbnails" in note
    assert [t.stat().st_mtime_ns for t in sorted((tmp_path / "gallery" / "thumbs").iterdir())] == mtimes


# --- batches written through the store --------------------------------------------------------------


def test_clip_scores_sort_and_filter_the_cards(client: Client, tmp_path: Path, browser, capsys):
    clips = [0.21, None, 0.35, 0.08, 0.35, None]
    batch = stored_batch(client.status_store, client.storage, [5, 4, 3, 2, 1, 0], clips, failed={5})
    made = write_gallery(client.status_store, client.storage, batch, tmp_path / "g")
    open_page(browser, made.index)
    assert assert_every_image_loads(browser) == 5
    ids = [job_id(batch, i) for i in range(6)]
    clip_texts = browser.execute_script(
        "return [...document.querySelectorAll('.clip')].map(c => c.textContent)"
    )
    assert clip_texts == ["0.210", "—", "0.350", "0.080", "0.350", "—"]

    choose(browser, "sort", "clip-desc")  # ties keep job order; cards without a score go last
    assert card_ids(browser) == [ids[2], ids[4], ids[0], ids[3], ids[1], ids[5]]
    choose(browser, "sort", "clip-asc")
    assert card_ids(browser) == [ids[3], ids[0], ids[2], ids[4], ids[1], ids[5]]
    choose(browser, "min-clip", "0.2")
    assert card_ids(browser) == [ids[0], ids[2], ids[4]]
    choose(browser, "min-clip", "")
    choose(browser, "state", "failed")
    assert card_ids(browser) == [ids[5]]
    # the view is kept in the URL: a reload shows the same cards
    open_page(browser, made.index, "#sort=clip-desc&state=succeeded&min=0.3")
    assert card_ids(browser) == [ids[2], ids[4]]
    screenshot(browser, tmp_path, "gallery-clip-sorted", capsys)


def test_every_gallery_file_gets_the_mode_of_a_new_file(client: Client, tmp_path: Path):
    batch = stored_batch(client.status_store, client.storage, [1, 2], [0.3, None])
    before = os.umask(0o027)
    try:
        made = write_gallery(client.status_store, client.storage, batch, tmp_path / "g")
    finally:
        os.umask(before)
    assert made.thumbs_made == 2
    root = tmp_path / "g"
    files = {p.relative_to(root).as_posix(): p.stat().st_mode & 0o777 for p in root.rglob("*") if p.is_file()}
    assert len(files) == 6 and sum(name.startswith("thumbs/") for name in files) == 2
    assert files == dict.fromkeys(files, 0o666 & ~0o027), {n: oct(m) for n, m in files.items()}


def test_500_jobs_come_in_pages_of_lazy_images(client: Client, tmp_path: Path, browser, capsys):
    n = 500
    seeds = list(range(n))
    batch = stored_batch(client.status_store, client.storage, seeds, [i / n for i in seeds])
    made = write_gallery(client.status_store, client.storage, batch, tmp_path / "g", page_size=100)
    assert (made.cards, made.thumbs_made) == (n, n)
    assert len(json.loads((tmp_path / "g" / "cards.json").read_text())["cards"]) == n

    open_page(browser, made.index)
    assert browser.find_element("id", "page-info").text == "page 1 of 5 (500 cards)"
    assert card_ids(browser) == [job_id(batch, i) for i in range(100)]
    wait_for(browser, "return document.querySelector('.card img').complete")
    loaded = browser.execute_script(
        "return [...document.querySelectorAll('.card img')].filter(i => i.complete).length"
    )
    assert loaded < 100, "images far below the fold wait until they are scrolled to"
    browser.find_element("id", "next").click()
    assert card_ids(browser) == [job_id(batch, i) for i in range(100, 200)]
    for _ in range(3):
        browser.find_element("id", "next").click()
    assert browser.find_element("id", "page-info").text == "page 5 of 5 (500 cards)"
    assert card_ids(browser)[-1] == job_id(batch, n - 1)
    assert not browser.find_element("id", "next").is_enabled()
    browser.find_element("id", "prev").click()
    assert card_ids(browser)[0] == job_id(batch, 300)
    choose(browser, "sort", "clip-desc")  # sorting spans every page, not just the one shown
    assert card_ids(browser)[0] == job_id(batch, n - 1)
    assert assert_every_image_loads(browser) == 100
    screenshot(browser, tmp_path, "gallery-500-jobs", capsys)


def test_an_s3_batch_gets_local_thumbnails_and_presigned_links(
    redis_url: str, tmp_path: Path, browser, capsys
):
    with running_s3_server() as endpoint:
        bucket = create_bucket(endpoint)
        settings = Settings(
            redis_url=redis_url,
            key_prefix=f"kbt-{uuid.uuid4().hex[:8]}",
            storage_url=f"s3://{bucket}/out",
            s3_endpoint_url=endpoint,
            s3_access_key_id="test",
            s3_secret_access_key="test",
            s3_region="us-east-1",
            s3_addressing_style="path",
        )
        with Client(settings) as client:
            assert client.storage.uri("x").startswith("s3://")
            batch = stored_batch(client.status_store, client.storage, [7, 8, 9], [0.3, None, 0.1], failed={1})
            index, note = run_cli(settings, batch, "-o", str(tmp_path / "g"))
        assert "3 cards, 2 new thumbnails" in note
        cards = json.loads((tmp_path / "g" / "cards.json").read_text())["cards"]
        assert all(t.startswith("thumbs/") for c in cards for t in c["thumbs"])
        for card in (cards[0], cards[2]):
            [image] = card["images"]
            assert image.startswith(endpoint) and "Signature" in image
            with urllib.request.urlopen(image, timeout=10) as answer:
                assert size_of(answer.read()) == (64, 64)
            with urllib.request.urlopen(card["meta"], timeout=10) as answer:
                assert json.loads(answer.read())["seed"] == card["seed"]

        open_page(browser, index)
        assert assert_every_image_loads(browser) == 2
        assert "presigned and expire" in browser.find_element("id", "note").text
        href = browser.find_element("css selector", ".image-link").get_attribute("href")
        assert href == cards[0]["images"][0]
        failed = browser.find_element("css selector", f".card[data-id='{job_id(batch, 1)}'] .error")
        assert failed.text.startswith("bad_input: image: cannot read")
        screenshot(browser, tmp_path, "gallery-s3", capsys)
