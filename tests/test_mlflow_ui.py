"""The MLflow UI as a researcher sees it: two tiny runs, `mlflow ui`, headless Chromium.

Checks what a look at the UI needs and a REST query cannot show: the runs table lands on the
runs, a run's page carries its genotype, the accuracy chart is drawn in its ``test`` section,
the cell drawings load as step images, and the chart view compares both runs. Needs Debian's
``chromium`` and ``chromium-driver`` and the ``selenium`` package (``make install``); skipped
otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from contextlib import closing

import pytest

from conftest import compose_config

selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("no chromium or chromedriver on PATH (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    ElementNotInteractableException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from federated_nas.runs import run_search  # noqa: E402
from federated_nas.tracking.ui import compare_url, run_url, runs_url, ui_command, ui_environment  # noqa: E402

PAGE_SECONDS = 30  # one page's wait on 2 busy cores; a page normally renders in 2-5 s
UI_START_SECONDS = 60
LAST_ROUND = 2  # conftest's tiny runs


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(base: str, server: subprocess.Popen) -> None:
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


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """(base URL, experiment id, [(run id, run name, genotype tag)]) of two finished runs served by `mlflow ui`."""
    from mlflow.tracking import MlflowClient

    tmp_path = tmp_path_factory.mktemp("ui")
    configs = [compose_config("search", tmp_path, ["plots_every=0", f"seed={seed}"], run=f"seed{seed}")
               for seed in (0, 1)]  # plots_every=0: cells drawn at the last round only
    runs = [run_search(configs[0])["mlflow_run_id"]]  # creates the store the UI opens
    uri, port = configs[0].logger.tracking_uri, free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(ui_command(uri, configs[0].logger.artifact_location, port),
                              env=ui_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # its own process group: uvicorn's worker goes with it
    try:
        runs.append(run_search(configs[1])["mlflow_run_id"])  # while the UI starts
        client = MlflowClient(uri)
        experiment_id = client.get_experiment_by_name("search").experiment_id
        described = [(run_id, client.get_run(run_id).info.run_name, client.get_run(run_id).data.tags["genotype"])
                     for run_id in runs]
        wait_for_health(base, server)
        yield base, experiment_id, described
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1600,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver, url: str) -> None:
    """Load ``url`` and close MLflow's assistant panel, which otherwise takes a third of the width."""
    driver.get(url)
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "main, #root > *"), f"{url} to render")
    for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
        if button.is_displayed():
            button.click()


def wait(driver, condition, what: str):
    try:
        return WebDriverWait(driver, PAGE_SECONDS, poll_frequency=0.25).until(condition)
    except TimeoutException:
        pytest.fail(f"the MLflow UI did not show {what} within {PAGE_SECONDS} s; page text starts: "
                    f"{driver.find_element(By.TAG_NAME, 'body').text[:300]!r}")


def page_text(driver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def search_charts(driver, text: str) -> None:
    box = wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "input[placeholder*='Search metric charts']"),
               "the chart search box")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(text)


def show_cells_at_last_round(driver) -> list[str]:
    """Move every image chart's step to the last round (the UI starts them at step 0); the cells' image URLs."""
    search_charts(driver, "cell")
    wait(driver, at_last_round, "the cell image charts at the last round")
    images = wait(driver, lambda d: [image.get_attribute("src") for image in d.find_elements(By.TAG_NAME, "img")
                                     if "normal_cell" in (image.get_attribute("src") or "")],
                  "a normal cell image")
    return images


def at_last_round(driver) -> bool:
    """One attempt at typing the last round into every image chart's step box; True once all show it.

    Repeated by ``wait``: the charts re-render while their images load, which can swap a box under the keys.
    """
    steps = [step for step in driver.find_elements(By.CSS_SELECTOR, "input[type=number]") if step.is_displayed()]
    try:
        for step in steps:
            if step.get_attribute("value") != str(LAST_ROUND):
                driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", step)
                step.send_keys(Keys.END, Keys.BACKSPACE, Keys.BACKSPACE, Keys.BACKSPACE, str(LAST_ROUND), Keys.ENTER)
        return bool(steps) and all(step.get_attribute("value") == str(LAST_ROUND) for step in steps)
    except (ElementNotInteractableException, StaleElementReferenceException):
        return False


def accuracy_chart_legend(driver) -> str:
    search_charts(driver, "test/acc")
    return wait(driver, lambda d: "(test/acc)" in page_text(d) and d.find_elements(By.CSS_SELECTOR, "svg.main-svg")
                and page_text(d), "the test/acc chart")


def test_runs_page_run_page_and_compare_view(ui, browser):
    base, experiment_id, runs = ui
    (run_id, name, genotype), (_, other_name, _) = runs

    open_page(browser, runs_url(base, experiment_id))
    wait(browser, lambda d: name in page_text(d) and other_name in page_text(d), "both runs in the runs table")

    open_page(browser, run_url(base, experiment_id, run_id))
    description = wait(browser, lambda d: "Genotype(normal=" in page_text(d) and page_text(d), "the genotype")
    assert genotype.split("], normal_concat")[0] in description  # the description's full one-line genotype
    assert "global test accuracy, whole test set" in description

    open_page(browser, f"{run_url(base, experiment_id, run_id)}/model-metrics")
    assert f"{name} (test/acc)" in accuracy_chart_legend(browser)
    images = show_cells_at_last_round(browser)
    assert any(f"step%2B{LAST_ROUND}%2B" in src and run_id in src for src in images), images

    open_page(browser, compare_url(base, experiment_id))
    legend = accuracy_chart_legend(browser)
    assert f"{name} (test/acc)" in legend and f"{other_name} (test/acc)" in legend
    compared = show_cells_at_last_round(browser)
    assert {run_id for run_id, _, _ in runs} <= {src.rsplit("run_uuid=", 1)[-1] for src in compared}
