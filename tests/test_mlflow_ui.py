"""The MLflow UI as a researcher sees it: two tiny runs, `mlflow ui`, headless Chromium.

Checks what a look at the UI needs and a REST query cannot show: the runs table lands on the
runs, a run's page carries its genotype, the accuracy chart is drawn in its ``test`` section,
the cell drawings load as step images, and the chart view compares both runs. Needs Debian's
``chromium`` and ``chromium-driver`` and the ``selenium`` package (``make install``); skipped
otherwise.
"""

from __future__ import annotations

import shutil

import pytest

from helpers import compose_config

pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
if not (any(map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))) and shutil.which("chromedriver")):
    pytest.skip("no chromium or chromedriver on PATH (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from federated_nas.runs import run_search  # noqa: E402
from federated_nas.tracking.ui import compare_url, run_url, runs_url  # noqa: E402
from federated_nas.tracking.ui_browser import (  # noqa: E402
    chart_legend,
    chromium,
    open_page,
    page_text,
    serve_ui,
    step_images,
    wait_until_up,
)

LAST_ROUND = 2  # helpers.TINY's runs


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """(base URL, experiment id, [(run id, run name, genotype tag)]) of two finished runs served by `mlflow ui`."""
    from mlflow.tracking import MlflowClient

    tmp_path = tmp_path_factory.mktemp("ui")
    configs = [compose_config("search", tmp_path, ["plots_every=0", f"seed={seed}"], run=f"seed{seed}")
               for seed in (0, 1)]  # plots_every=0: cells drawn at the last round only
    runs = [run_search(configs[0])["mlflow_run_id"]]  # creates the store the UI opens
    uri = configs[0].logger.tracking_uri
    with serve_ui(uri, configs[0].logger.artifact_location) as (base, server):
        runs.append(run_search(configs[1])["mlflow_run_id"])  # while the UI starts
        client = MlflowClient(uri)
        experiment_id = client.get_experiment_by_name("search").experiment_id
        described = [(run_id, client.get_run(run_id).info.run_name, client.get_run(run_id).data.tags["genotype"])
                     for run_id in runs]
        wait_until_up(base, server)
        yield base, experiment_id, described


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def test_runs_page_run_page_and_compare_view(ui, browser):
    base, experiment_id, runs = ui
    (run_id, name, genotype), (other_id, other_name, _) = runs

    open_page(browser, runs_url(base, experiment_id), lambda d: name in page_text(d) and other_name in page_text(d),
              "both runs in the runs table")

    description = open_page(browser, run_url(base, experiment_id, run_id),
                            lambda d: "Genotype(normal=" in page_text(d) and page_text(d), "the genotype")
    assert genotype.split("], normal_concat")[0] in description  # the description's full one-line genotype
    assert "global test accuracy, whole test set" in description

    open_page(browser, run_url(base, experiment_id, run_id, "model-metrics"),
              lambda d: "test" in page_text(d), "the run's metric sections")
    assert f"{name} (test/acc)" in chart_legend(browser, "test/acc")
    assert any(run_id in src for src in step_images(browser, "normal_cell", LAST_ROUND))

    open_page(browser, compare_url(base, experiment_id), lambda d: "test" in page_text(d), "the chart view")
    legend = chart_legend(browser, "test/acc")
    assert f"{name} (test/acc)" in legend and f"{other_name} (test/acc)" in legend
    compared = step_images(browser, "normal_cell", LAST_ROUND)
    assert {src.rsplit("run_uuid=", 1)[-1] for src in compared} == {run_id, other_id}
