#!/usr/bin/env python
"""The README's pictures of the page, made as a user makes them: headless Chromium on `petclassifier serve`.
Part one: photos labelled, one explained; part two: a model taught from two classes of photos, then tried.

    python scripts/page_screenshots.py --checkpoint runs/<breed run> --teach ../shared/data/cats-vs-dogs/train \
        --try-photos a.jpg b.jpg --photos pug.jpg cat.jpg airship.jpg --out docs
"""

import argparse
import shutil
import sys
from pathlib import Path

from benchmarks.serve_load import started_server
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from petclassifier.data.images import photos_under


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))))
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1240,1500",
                     "--hide-scrollbars"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


def shown(driver, selector: str, count: int = 1, seconds: int = 300):
    WebDriverWait(driver, seconds).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, selector)) >= count)
    return driver.find_elements(By.CSS_SELECTOR, selector)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="the model the page serves")
    parser.add_argument("--photos", nargs="+", required=True, help="photos for part one (the first two explained)")
    parser.add_argument("--teach", required=True, help="a folder of class folders: 10 photos of each are taught")
    parser.add_argument("--try-photos", nargs="+", required=True, help="photos tried on the taught model")
    parser.add_argument("--out", default="docs", help="where web-page.png and web-teach.png go")
    args = parser.parse_args()
    out = Path(args.out)
    with started_server(args.checkpoint, "--device", "cpu") as (_, line):
        driver = browser()
        try:
            driver.get(line.split(" at ")[-1].split()[0])
            shown(driver, "#facts dd", 7)
            shown(driver, "#files")[0].send_keys("\n".join(str(Path(p).resolve()) for p in args.photos))
            shown(driver, "#results .card .label", len(args.photos))
            for button in shown(driver, "#results .card button", 2)[:2]:
                button.click()
            shown(driver, "#results .cam img", 2)
            driver.execute_script("document.getElementById('teach').hidden = true")
            driver.save_screenshot(str(out / "web-page.png"))
            driver.execute_script("document.getElementById('teach').hidden = false")

            classes = sorted(p for p in Path(args.teach).resolve().iterdir() if p.is_dir())
            for folder, name, files in zip(classes, shown(driver, ".class-name", 2),
                                           shown(driver, "#teach-classes input[type=file]", 2)):
                name.clear()
                name.send_keys(folder.name)
                files.send_keys("\n".join(photos_under(folder)[:10]))
            shown(driver, "#hood summary")[0].click()
            shown(driver, "#train")[0].click()
            shown(driver, "#per-class tr", len(classes) + 1)
            shown(driver, "#try-files")[0].send_keys("\n".join(str(Path(p).resolve()) for p in args.try_photos))
            shown(driver, "#try-results .card .label", len(args.try_photos))
            shown(driver, "#try-results .card button")[0].click()
            shown(driver, "#try-results .cam img")
            driver.execute_script("window.scrollTo(0, 0)")
            shown(driver, "#teach")[0].screenshot(str(out / "web-teach.png"))
        finally:
            driver.quit()
    print(f"wrote {out / 'web-page.png'} and {out / 'web-teach.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
