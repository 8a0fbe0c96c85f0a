"""The whole system as ``make run`` starts it, driven in Debian's headless Chromium.

One ``fedcifar serve --run RUN --train-preset smoke`` process trains and serves (as ``make run``
does with the paper preset). The test interrupts it mid-training like Ctrl-C in a terminal,
checks that both stop cleanly, starts it again to resume, and then uses the real pages:
upload a CIFAR-100 test image and read the five predictions, open the dashboard and see the
curves and the partition figure. Screenshots go to test-artifacts/.

Chromium and ChromeDriver come from Debian (``make browser-deps``, run by ``make test``).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from helpers import wait_for
from httpcheck import free_port, get_json

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="Debian chromium and chromium-driver are not installed (make browser-deps)",
    ),
]


class System:
    """``fedcifar serve --run RUN --train-preset smoke`` in its own process group."""

    def __init__(self, run_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("ab")
        cmd = [sys.executable, "-m", "fedcifar", "serve", "--run", str(run_dir), "--train-preset", "smoke"]
        cmd += ["--port", str(self.port), "--reload-interval", "0.5"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=env)

    def trainer_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def ctrl_c(self, timeout: float = 90) -> int:
        """SIGINT to the whole process group, as a terminal's Ctrl-C sends it."""
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    """Started, interrupted mid-training, restarted (resumed); yields the running second system."""
    root = tmp_path_factory.mktemp("system")
    run_dir, log = root / "run", root / "system.log"
    first = System(run_dir, log)
    try:
        wait_for(lambda: get_json(first.url + "/health")[0] == 503, 120, "the server to answer", first.proc)
        wait_for(lambda: get_json(first.url + "/health")[0] == 200, 300, "round 1's model", first.proc)
        trainers = first.trainer_pids()
        assert trainers, "training should still be running (round 2)"
        code = first.ctrl_c()
        assert code == 0, log.read_text()[-3000:]
        for pid in trainers:
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    finally:
        first.kill()
    assert "interrupted; the last complete round is saved" in log.read_text()

    second = System(run_dir, log)  # resumes from round 1
    try:
        wait_for(lambda: get_json(second.url + "/health")[0] == 200, 120, "the resumed server", second.proc)
        yield second, run_dir
    finally:
        second.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must never try to download a driver
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1100",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(exist_ok=True)
    yield driver
    driver.quit()


def test_upload_page_shows_five_labelled_predictions(system, browser, cifar, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server, _ = system
    index = 3
    image = tmp_path / "cifar-test-3.png"
    Image.fromarray(cifar.test_x[index].permute(1, 2, 0).numpy()).save(image)
    browser.get(server.url + "/")
    WebDriverWait(browser, 30).until(lambda d: "round" in d.find_element(By.ID, "model-badge").text)
    # Nothing of a result (no empty "Top 5" card, no broken preview image) before the first upload.
    assert not browser.find_element(By.ID, "result").is_displayed()
    assert not browser.find_element(By.ID, "preview").is_displayed()
    browser.find_element(By.ID, "file-input").send_keys(str(image))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#predictions li")) == 5)

    assert browser.find_element(By.ID, "result").is_displayed()
    rows = browser.find_elements(By.CSS_SELECTOR, "#predictions li")
    names = [r.find_element(By.CLASS_NAME, "name").text for r in rows]
    probs = [float(r.find_element(By.CLASS_NAME, "prob").text.rstrip("%")) for r in rows]
    labels = {c.replace("_", " ") for c in cifar.classes}
    assert all(n in labels for n in names) and len(set(names)) == 5
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 100.5
    assert browser.find_element(By.ID, "preview").get_attribute("naturalWidth") == "32"
    assert "answered by the model of round" in browser.find_element(By.ID, "result-meta").text
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None
    browser.save_screenshot(str(ARTIFACTS / "browser-upload.png"))

    # Drag and drop: the same file dropped on the zone, then classified again.
    payload = base64.b64encode(image.read_bytes()).decode()
    browser.execute_script(
        """
        const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
        document.getElementById("drop-zone").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
        """,
        payload,
    )
    assert "dropped.png" in browser.find_element(By.ID, "file-name").text
    browser.find_element(By.ID, "predictions").get_attribute("innerHTML")
    browser.execute_script("document.getElementById('predictions').replaceChildren()")
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#predictions li")) == 5)
    again = [
        r.find_element(By.CLASS_NAME, "name").text for r in browser.find_elements(By.CSS_SELECTOR, "#predictions li")
    ]
    assert len(again) == 5


def test_upload_page_explains_a_bad_file(system, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server, _ = system
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    browser.get(server.url + "/")
    browser.find_element(By.ID, "file-input").send_keys(str(bad))
    browser.find_element(By.ID, "submit").click()
    error = WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "error").text)
    assert "not an image" in error
    assert get_json(server.url + "/health")[0] == 200  # still serving


def test_dashboard_shows_live_curves_and_partition(system, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server, run_dir = system
    browser.get(server.url + "/dashboard")
    # Round 2 lands while the page is open: it must appear without a reload.
    WebDriverWait(browser, 300, poll_frequency=1).until(
        lambda d: d.execute_script("return document.body.dataset.rounds") == "2"
    )
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "state").text == "finished")
    assert browser.find_element(By.ID, "round").text == "2 / 2"
    assert browser.find_element(By.ID, "test-acc").text.endswith("%")
    p10, worst = browser.find_element(By.ID, "client-acc").text.split(" / ")  # per-client fairness
    assert p10.endswith("%") and worst.endswith("%")
    assert not browser.find_element(By.ID, "privacy").is_displayed()  # no dp: no epsilon tile
    # The model lands just after its metrics row; the badge follows within a poll or two (hot reload).
    WebDriverWait(browser, 30).until(lambda d: "round 2" in d.find_element(By.ID, "model-badge").text)
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script(
            "const i = document.getElementById('partition'); return i.complete && i.naturalWidth"
        )
    )
    coloured = """
        const c = document.getElementById(arguments[0]);
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < data.length; i += 4) {
          const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
          if (a > 200 && Math.max(r, g, b) - Math.min(r, g, b) > 80) n++;
        }
        return n;
    """
    assert browser.execute_script(coloured, "acc-chart") > 200  # coloured curve pixels, not just axes
    assert browser.execute_script(coloured, "loss-chart") > 200
    browser.save_screenshot(str(ARTIFACTS / "browser-dashboard.png"))
    status, run = get_json(server.url + "/api/run")
    assert status == 200 and run["metrics"]["round"] == [1.0, 2.0] and (run_dir / "partition.png").exists()
    assert all(v is not None for v in run["metrics"]["client_acc_p10"])


def test_stopping_the_server_stops_cleanly(system):
    server, run_dir = system
    os.kill(server.proc.pid, signal.SIGINT)  # to the server only: it must stop its trainer itself
    assert server.proc.wait(timeout=90) == 0
    assert not server.trainer_pids()
    assert (run_dir / "checkpoint.safetensors").exists()


def test_dashboard_shows_a_training_failure_while_serving_the_last_model(browser, tmp_path):
    """A trainer that fails (here: a corrupt checkpoint it cannot resume) leaves the server up; the page says why."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from fedcifar.model import ModelSpec
    from fedcifar.track.checkpoint import export_global

    run_dir = tmp_path / "failing-run"
    run_dir.mkdir()
    spec = ModelSpec("resnet20", "batch", 100)
    export_global(run_dir, spec.build(seed=0).state_dict(), {**spec.to_dict(), "round": 5, "test_acc": 0.05})
    (run_dir / "checkpoint.safetensors").write_bytes(b"not a checkpoint" * 10)
    failing = System(run_dir, tmp_path / "failing.log")
    try:
        wait_for(lambda: get_json(failing.url + "/health")[0] == 200, 120, "the server", failing.proc)
        browser.get(failing.url + "/dashboard")
        box = WebDriverWait(browser, 120).until(
            lambda d: d.find_element(By.ID, "trainer-error") if d.find_element(By.ID, "trainer-error").text else None
        )
        assert box.is_displayed()
        assert "exit code 2" in box.text and "not a readable safetensors file" in box.text
        assert "Still serving the last model" in box.text
        assert "round 5" in browser.find_element(By.ID, "model-badge").text
        assert get_json(failing.url + "/health") == (200, {"status": "ok", "model_round": 5})
        code, run = get_json(failing.url + "/api/run")
        assert run["trainer"]["state"] == "failed" and run["trainer"]["exit_code"] == 2
        assert str(tmp_path) not in json.dumps(run)  # the trainer's error names the file, not the server's paths
        os.kill(failing.proc.pid, signal.SIGTERM)
        assert failing.proc.wait(timeout=60) == 1  # the exit code still reports the failed training
    finally:
        failing.kill()
