"""Screenshots of the MLflow UI on the project's runs, for the README: `python scripts/ui_screenshots.py`.

    python scripts/ui_screenshots.py [--tracking-uri sqlite:///logs/mlflow.db] [--experiment search]
                                     [--runs 2] [--out docs]

Serves the store with `mlflow ui` on a free loopback port and photographs, in headless Chromium,
the newest ``--runs`` finished runs of the experiment: the runs table (mlflow_runs.png), the newest
run's page with its description and genotype (mlflow_run.png), its cells at the last round with
the step slider (mlflow_run_cells.png), and the chart view comparing the runs' test metrics
(mlflow_compare.png). Needs selenium, chromium and chromedriver (`make install`). Prints the paths.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from federated_nas.cli import one_line_errors

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'logs' / 'mlflow.db'}")
    parser.add_argument("--artifact-root", default=str(ROOT / "logs" / "mlartifacts"))
    parser.add_argument("--experiment", default="search", help="MLflow experiment name (default: search)")
    parser.add_argument("--runs", type=int, default=2, help="how many of the newest finished runs to show")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for the PNG files")
    return parser.parse_args(argv)


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # deferred: mlflow and selenium are slow to import
    from federated_nas.errors import DataError
    from federated_nas.tracking.compare import find_experiment, open_store
    from federated_nas.tracking.ui import compare_url, run_url, runs_url
    from federated_nas.tracking.ui_browser import (
        chart_legend,
        chromium,
        open_page,
        page_text,
        serve_ui,
        step_images,
        wait,
        wait_until_up,
    )
    from selenium.webdriver.common.by import By

    client = open_store(args.tracking_uri)
    experiment_id = find_experiment(client, args.experiment, args.tracking_uri)
    runs = client.search_runs([experiment_id], "attributes.status = 'FINISHED'", max_results=args.runs,
                              order_by=["attributes.start_time DESC"])
    if not runs:
        raise DataError(f"experiment {args.experiment!r} has no finished run to show "
                        "(python src/search.py debug=fast logs one)")
    newest = runs[0]
    last_round = int(newest.data.params.get("federation.rounds", 1))
    names = [run.info.run_name for run in runs]
    args.out.mkdir(parents=True, exist_ok=True)
    shots = []
    with serve_ui(args.tracking_uri, args.artifact_root) as (base, server), chromium() as browser:
        browser.set_window_size(1600, 1300)
        wait_until_up(base, server)

        def shoot(name: str) -> None:
            path = args.out / name
            browser.save_screenshot(str(path))
            shots.append(path)

        open_page(browser, runs_url(base, experiment_id), lambda d: all(n in page_text(d) for n in names),
                  "the runs in the runs table")
        shoot("mlflow_runs.png")
        open_page(browser, run_url(base, experiment_id, newest.info.run_id),
                  lambda d: "Description" in page_text(d), "the run's page")
        shoot("mlflow_run.png")
        open_page(browser, run_url(base, experiment_id, newest.info.run_id, "model-metrics"),
                  lambda d: "arch" in page_text(d), "the run's charts")
        step_images(browser, "_cell", last_round)
        cell = browser.find_element(By.CSS_SELECTOR, "img[src*='normal_cell']")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", cell)  # below the run's params
        shoot("mlflow_run_cells.png")
        open_page(browser, compare_url(base, experiment_id), lambda d: "test" in page_text(d), "the chart view")
        chart_legend(browser, "test/acc", search="test/")
        section = browser.find_element(By.XPATH, "//*[normalize-space(text())='test']")
        browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", section)  # past the image charts
        wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "svg.main-svg")) >= 6, "six test charts drawn")
        shoot("mlflow_compare.png")
    for path in shots:
        print(path)


if __name__ == "__main__":
    main()
