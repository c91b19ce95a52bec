"""Driving the MLflow UI in headless Chromium: what the UI test and the screenshot script share.

Needs ``selenium`` (the ``dev`` extra) and Debian's ``chromium`` and ``chromium-driver``. The UI is
a React app: pages render after their data arrives, so every step waits for what it needs
instead of sleeping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import (
    ElementNotInteractableException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from federated_nas.tracking.ui import ui_command, ui_environment

PAGE_SECONDS = 30  # one page's wait on 2 busy cores; a page normally renders in 2-5 s
UI_START_SECONDS = 60
WINDOW = "1600,1000"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


class UINotShown(AssertionError):
    """The UI did not show what was waited for; the message says what, and how the page began."""


def browser_binaries() -> tuple[str | None, str | None]:
    """(Chromium, chromedriver) on PATH, None where absent."""
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None), shutil.which("chromedriver")


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_ui(tracking_uri: str, artifact_root: str | Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """`mlflow ui` on a free loopback port; yields (base URL, its process), then stops it with its worker.

    The caller waits for it (``wait_until_up``) when it needs it: work done meanwhile overlaps its start.
    """
    port = free_port()
    server = subprocess.Popen(ui_command(tracking_uri, artifact_root, port), env=ui_environment(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # its own process group: uvicorn's worker goes with it
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def wait_until_up(base: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + UI_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow ui exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow ui did not answer {base}/health within {UI_START_SECONDS} s")


@contextlib.contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    binary, driver_path = browser_binaries()
    if binary is None or driver_path is None:
        raise RuntimeError("no chromium or chromedriver on PATH (apt-get install chromium chromium-driver)")
    options = Options()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={WINDOW}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition: Callable[[Any], Any], what: str) -> Any:
    """``condition``'s first truthy value; ``UINotShown`` after ``PAGE_SECONDS``."""
    try:
        return WebDriverWait(driver, PAGE_SECONDS, poll_frequency=0.25).until(condition)
    except TimeoutException:
        raise UINotShown(f"the MLflow UI did not show {what} within {PAGE_SECONDS} s; page text starts: "
                         f"{page_text(driver)[:300]!r}") from None


def page_text(driver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def open_page(driver, url: str, ready: Callable[[Any], Any], what: str) -> Any:
    """Load ``url``, wait for ``ready``, and close MLflow's assistant panel (a third of the width)."""
    driver.get(url)
    shown = wait(driver, ready, what)
    for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
        if button.is_displayed():
            button.click()
    return shown


def search_charts(driver, text: str) -> None:
    """Type into the chart search box of a run's metrics page or of the runs' chart view."""
    box = wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "input[placeholder*='Search metric charts']"),
               "the chart search box")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(text)


def chart_legend(driver, metric: str, search: str | None = None) -> str:
    """Search the charts for ``search`` (default: ``metric``) and wait until ``metric``'s is drawn;
    the page text, in which its legend names the runs."""
    search_charts(driver, search or metric)
    return wait(driver, lambda d: f"({metric})" in page_text(d) and d.find_elements(By.CSS_SELECTOR, "svg.main-svg")
                and page_text(d), f"the {metric} chart")


def step_images(driver, key_part: str, step: int) -> list[str]:
    """Show the image charts matching ``key_part`` at ``step`` (the UI starts them at step 0); their URLs."""
    search_charts(driver, key_part)
    wait(driver, lambda d: _steps_set(d, step), f"the {key_part} image charts at step {step}")
    return wait(driver, lambda d: [src for src in (image.get_attribute("src") or ""
                                                   for image in d.find_elements(By.TAG_NAME, "img"))
                                   if key_part in src and f"step%2B{step}%2B" in src],
                f"a {key_part} image at step {step}")


def _steps_set(driver, step: int) -> bool:
    """One attempt at typing ``step`` into every image chart's step box; True once all show it.

    Repeated by ``wait``: the charts re-render while their images load, which can swap a box under the keys.
    """
    boxes = [box for box in driver.find_elements(By.CSS_SELECTOR, "input[type=number]") if box.is_displayed()]
    try:
        for box in boxes:
            if box.get_attribute("value") != str(step):
                driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)
                box.send_keys(Keys.CONTROL, "a")  # a number box keeps its caret before the text: select, then type
                box.send_keys(str(step), Keys.ENTER)
        return bool(boxes) and all(box.get_attribute("value") == str(step) for box in boxes)
    except (ElementNotInteractableException, StaleElementReferenceException):
        return False
