"""The page in a real browser: headless Chromium opens `petclassifier serve`, uploads a real photo, and the page
shows the label, cat or dog, the model's facts and, on demand, the Grad-CAM overlay; and it teaches a model of its
own from two classes of photos, epoch by epoch, tries it and downloads its checkpoint."""

from __future__ import annotations

import shutil

import pytest

from .test_web import ZERO_SHOT, photo, run_dir  # noqa: F401  (module fixture: a four-breed checkpoint)

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
pytest.importorskip("starlette", reason="the web extra is not installed (pip install -e '.[web]')")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (dev extra) drives the browser")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="no Chromium with its chromedriver (Debian: apt-get install chromium "
                                       "chromium-driver)")
CAT_BREEDS = ("Abyssinian", "Bengal", "Birman", "Bombay", "British_Shorthair", "Egyptian_Mau", "Maine_Coon", "Persian",
              "Ragdoll", "Russian_Blue")
DOG_BREEDS = ("american_bulldog", "basset_hound", "beagle", "boxer", "chihuahua", "english_setter", "havanese",
              "keeshond", "pug", "samoyed")


@pytest.fixture
def server(run_dir, tmp_path):  # noqa: F811
    """`petclassifier serve` on a free port, as a user starts it; yields its URL."""
    from benchmarks.serve_load import started_server

    log = tmp_path / "serve.log"
    with open(log, "w") as stderr, started_server(str(run_dir), "--device", "cpu", stderr=stderr) as (_, line):
        expected = f"serving {run_dir / 'best.pt'} (breed: 4 classes: Persian, Siamese, beagle, ...) at http://"
        assert line.startswith(expected), line + log.read_text()
        yield line.split(" at ")[1].split()[0]


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def test_the_page_labels_an_uploaded_photo_and_shows_where_the_network_looked(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(selector: str, count: int = 1):
        WebDriverWait(browser, 60).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, selector)) >= count)
        return browser.find_elements(By.CSS_SELECTOR, selector)

    browser.get(server)
    shown("#facts dd", 7)
    facts = dict(zip((e.text for e in shown("#facts dt")), (e.text for e in shown("#facts dd"))))
    assert facts["accuracy"] == "87.5% on 8 test photos" and facts["classes"] == "4", facts
    assert len(shown("#curves svg", 2)) == 2  # accuracy and loss per epoch

    pug, persian = photo("pug", 1), photo("Persian", 1)
    shown("#files")[0].send_keys(f"{pug}\n{persian}")
    labels = [e.text for e in shown(".card .label", 2)]
    assert labels == ["Pug", "Persian"], labels  # as a person writes the class name; the JSON keeps "pug"
    assert [e.text.split()[0] for e in shown(".card .species", 2)] == ["Dog", "Cat"]
    assert [e.text for e in shown(".card .name", 2)] == [pug.name, persian.name]
    assert len(shown(".card .bars li", 8)) == 8  # four classes, each with its bar, for both photos

    shown(".card button")[0].click()
    overlay = shown(".card img.overlay")[0]
    WebDriverWait(browser, 60).until(lambda b: overlay.get_property("naturalWidth") == 160)
    assert "evidence for Pug" in shown(".cam figcaption")[0].text
    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_the_page_teaches_a_model_shows_each_epoch_and_hands_over_its_checkpoint(server, browser, tmp_path):
    import urllib.request

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from petclassifier.models.checkpoint import load_checkpoint

    def shown(selector: str, count: int = 1, seconds: int = 60):
        WebDriverWait(browser, seconds).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, selector)) >= count)
        return browser.find_elements(By.CSS_SELECTOR, selector)

    cats = [photo(breed, 0) for breed in CAT_BREEDS]
    dogs = [photo(breed, 0) for breed in DOG_BREEDS]
    browser.get(server + "#teach")
    names = shown("#teach-classes .class-name", 2)
    for name, typed in zip(names, ("кот", "dog")):  # a class name in any script
        name.clear()
        name.send_keys(typed)
    inputs = shown("#teach-classes input[type=file]", 2)
    inputs[0].send_keys("\n".join(map(str, cats)))
    inputs[1].send_keys("\n".join(map(str, dogs)))
    assert [e.text for e in shown("#teach-classes .count", 2)] == ["10 photos", "10 photos"]
    shown("#train")[0].click()
    assert len(shown("#train-curves svg", 2, seconds=240)) == 2  # the curves, drawn while it trains
    shown("#per-class tr", 3, seconds=240)  # done: a row per class under the header
    rows = [e.text for e in shown("#per-class tr", 3)]
    assert rows[0] == "class accuracy Dog Кот" and rows[1].startswith("Dog ") and rows[2].startswith("Кот "), rows
    assert shown("#findings h3")[0].text == "Photos to look at"  # the doctor's check of the photos

    tried = [photo("Persian", 5), photo("pug", 5)]  # photos it did not learn from
    shown("#try-files")[0].send_keys("\n".join(map(str, tried)))
    assert [e.text for e in shown("#try-results .card .label", 2)] == ["Кот", "Dog"]
    shown("#try-results .card button")[0].click()
    assert "evidence for Кот" in shown("#try-results .cam figcaption")[0].text

    link = shown("#download")[0].get_attribute("href")
    with urllib.request.urlopen(link) as response:
        (tmp_path / "taught.pt").write_bytes(response.read())
    ckpt = load_checkpoint(tmp_path / "taught.pt")
    assert ckpt["class_names"] == ["dog", "кот"] and ckpt.get("temperature"), ckpt.keys()
    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
