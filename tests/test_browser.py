"""The explorers as students meet them: a real JupyterLab, driven by a real (headless) Chromium.

For each of 00, 04 and 06 the test
1. writes a copy of the notebook with its parameters set (``smoke`` profile, ``explorers=True``, every
   output folder in a temporary directory) into a temporary JupyterLab root,
2. opens it in JupyterLab, runs it through the *Run > Run All Cells* menu and waits until the last cell
   has run, then saves it and checks the saved copy: every cell ran, no cell raised,
3. operates the explorer like a student: drags its sliders, picks another entry of its dropdown, plays
   an audio player, and after each move checks that the figure (the PNG the browser shows) and, where
   there is sound, the audio players changed.

Screenshots of every explorer state and the executed notebooks land in ``reports/browser/``.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``,
``/usr/bin/chromedriver``; CI installs them in ``.ci/run``), the ``selenium`` package (the ``dev``
extra) and the real recordings. Without any of them the tests skip and the reason names what is missing.
The server listens on 127.0.0.1 only, with a random token; the browser runs with a throw-away profile
and no background networking.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from avlib import reproduce
from avlib.paths import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SHOTS = ROOT / "reports" / "browser"
NOTEBOOK_TIMEOUT = 900          # s for a whole notebook at smoke (about 30-60 s on an idle 2-core machine)
UPDATE_TIMEOUT = 60             # s for an explorer to redraw after a control moved (one kernel round trip)


def _missing_browser() -> str | None:
    """Why the browser test cannot run here, or None."""
    for exe, package in (("chromium", "chromium"), ("chromedriver", "chromium-driver")):
        if shutil.which(exe) is None:
            return (f"no `{exe}` on PATH: install the Debian package `{package}` "
                    f"(`apt-get install chromium chromium-driver`, as `.ci/run` does)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the Python package `selenium` is missing: pip install -e '.[dev]'"
    return None


# ----------------------------------------------------------------------------------------------
# JupyterLab server and browser (one of each for the whole module)
# ----------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server on loopback, serving ``root``; ``api()`` talks to its REST API."""

    def __init__(self, root: Path, data_root: Path):
        self.root, self.port, self.token = root, _free_port(), base64.b32encode(os.urandom(20)).decode().lower()
        self.url = f"http://127.0.0.1:{self.port}"
        home = root.parent / "jupyter-home"             # settings, runtime files: nothing from ~/.jupyter
        settings = home / "settings"
        # All cells stay in the DOM (JupyterLab's default windowing detaches cells scrolled out of view),
        # no news / update prompts pop up over the notebook, and no autosave writes a half-run notebook
        # (the test saves once, at the end).
        for rel, value in (("@jupyterlab/notebook-extension/tracker.jupyterlab-settings", {"windowingMode": "none"}),
                           ("@jupyterlab/apputils-extension/notification.jupyterlab-settings",
                            {"fetchNews": "false", "checkForUpdates": False}),
                           ("@jupyterlab/docmanager-extension/plugin.jupyterlab-settings", {"autosave": False})):
            (settings / rel).parent.mkdir(parents=True, exist_ok=True)
            (settings / rel).write_text(json.dumps(value))
        env = {k: v for k, v in os.environ.items() if k not in reproduce.KERNEL_ENV_UNSET}
        env.update(reproduce.KERNEL_ENV)
        env.update({"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                    "AVLIB_DATA_ROOT": str(data_root),
                    "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
                    "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_PLATFORM_DIRS": "1"})
        self.log_path = home / "lab.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
             "--ServerApp.allow_root=True",                  # CI containers run as root
             f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={home / 'workspaces'}"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            try:
                self.api("status")
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"JupyterLab did not start; its log:\n{self.log_tail()}")
                time.sleep(0.5)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log (kernel deaths and restarts show up there)."""
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def session(self, name: str) -> dict | None:
        return next((s for s in self.api("sessions") if s["path"] == name), None)

    def shutdown_kernels(self) -> None:
        """Shut down every notebook's kernel (frees its memory and CPU threads for the next notebook)."""
        for s in self.api("sessions"):
            self.api(f"sessions/{s['id']}", method="DELETE")

    def close(self) -> None:
        self.proc.terminate()                               # the server shuts its kernels down
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    why = _missing_browser()
    if why:
        pytest.skip(why)
    from conftest import _data_dir

    data = _data_dir()
    if data is None:
        pytest.skip("real recordings (fsdd/, mnist/) not found: set AVLIB_DATA_ROOT or put ../shared/data "
                    "beside the checkout")
    base = tmp_path_factory.mktemp("browser")
    (base / "lab").mkdir()
    server = Lab(base / "lab", data)
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser(lab):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    profile = lab.root.parent / "chromium-profile"          # fresh profile: no cached state between runs
    for flag in ("--headless=new", "--no-sandbox",          # no sandbox: CI runs as root in a container
                 "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 # Without these Chromium keeps trying to reach Google services and stalls where
                 # nothing outside is reachable.
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--disable-default-apps", "--disable-extensions",
                 "--autoplay-policy=no-user-gesture-required",   # play() from the test, no click needed
                 "--mute-audio", "--window-size=1600,1400", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
    driver.set_page_load_timeout(120)
    driver.set_script_timeout(60)
    driver.get(f"{lab.url}/lab?token={lab.token}")             # logs in (cookie) once for the module
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, lab, request):
    """The browser for one test. Afterwards, pass or fail, a screenshot of the whole page is kept in
    ``reports/browser/<test>_page.png`` (the first thing to look at when a test fails) and the test's
    kernel is shut down."""
    yield browser
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / f"{request.node.name}_page.png"))
    lab.shutdown_kernels()


# ----------------------------------------------------------------------------------------------
# Driving JupyterLab
# ----------------------------------------------------------------------------------------------
def _wait(what: str, predicate, timeout: float, poll: float = 0.5):
    """``predicate()`` until it returns something truthy (that is returned); fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def _write_notebook(lab: Lab, name: str, **params) -> str:
    """The committed notebook with papermill's parameter cell injected (as ``make reproduce`` does),
    every output folder under the temporary root; returns its path relative to the JupyterLab root."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(ROOT / "notebooks" / f"{name}.ipynb"))
    work = lab.root.parent / "work" / name
    params = {"profile": "smoke", "seed": 0, "device": "cpu", "explorers": True,
              "out_dir": str(work / "reports"), "run_dir": str(work / "runs"), **params}
    nb = parameterize_notebook(nb, params)
    nbformat.write(nb, lab.root / f"{name}.ipynb")
    return f"{name}.ipynb"


def _click_menu(driver, menu: str, entry: str) -> None:
    """Click the main menu ``menu`` (e.g. "Run"), then its entry labelled ``entry`` ("Run All Cells")."""
    from selenium.webdriver.common.by import By

    def labelled(css, text):
        return next((e for e in driver.find_elements(By.CSS_SELECTOR, css) if e.text.strip() == text), None)

    _wait(f"the {menu!r} menu", lambda: labelled(".lm-MenuBar-item", menu), 30).click()
    try:
        item = _wait(f"{menu} > {entry}", lambda: labelled(".lm-Menu-itemLabel", entry), 10)
    except AssertionError:
        shown = [e.text.strip() for e in driver.find_elements(By.CSS_SELECTOR, ".lm-Menu-itemLabel") if e.text]
        raise AssertionError(f"no entry {entry!r} in JupyterLab's {menu!r} menu; it shows {shown}") from None
    item.click()


_PROMPTS_JS = """
return Array.from(document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt'))
            .map(e => e.textContent.trim());
"""


def _read_notebook(path: Path) -> nbformat.NotebookNode | None:
    """The notebook at ``path``, or None while it is being written."""
    try:
        return nbformat.read(path, as_version=4)
    except (ValueError, OSError):              # a partly written file does not parse yet
        return None


def run_notebook(driver, lab: Lab, name: str, **params) -> nbformat.NotebookNode:
    """Open ``name`` in JupyterLab, *Run All Cells*, wait for the end, save; returns the saved notebook
    after checking that every code cell ran and none raised."""
    path = _write_notebook(lab, name, **params)
    driver.get(f"{lab.url}/lab/tree/{path}")
    _wait(f"the kernel of {name} to start",
          lambda: (s := lab.session(path)) and s["kernel"]["execution_state"] == "idle", 120)
    _wait(f"{name} to render its cells", lambda: driver.execute_script(_PROMPTS_JS), 60)
    _click_menu(driver, "Run", "Run All Cells")
    # Run All marks every cell [*] at once; each gets its number as it finishes. A failing cell stops
    # the run and the cells after it fall back to [ ].
    _wait(f"{name} to start running", lambda: any("*" in p for p in driver.execute_script(_PROMPTS_JS)), 30)
    _wait(f"{name} to finish (cells still queued or running)",
          lambda: (p := driver.execute_script(_PROMPTS_JS)) and not any("*" in x for x in p),
          NOTEBOOK_TIMEOUT, poll=2)
    file = lab.root / path
    before = file.stat().st_mtime_ns
    _click_menu(driver, "File", "Save Notebook")
    _wait(f"{name} to be saved", lambda: file.stat().st_mtime_ns != before, 30)
    nb = _wait(f"{name} to be readable", lambda: _read_notebook(file), 10)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(lab.root / path, SHOTS / path)
    errors = [f"{o.ename}: {o.evalue}" for c in nb.cells if c.cell_type == "code"
              for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, f"{name} raised in JupyterLab: {errors} (executed copy: {SHOTS / path})"
    not_run = [c.source.splitlines()[0] for c in nb.cells
               if c.cell_type == "code" and c.source.strip() and not c.get("execution_count")]
    assert not not_run, (f"{name}: cells that did not run: {not_run}; "
                         f"JupyterLab's log ends with:\n{lab.log_tail()}")
    return nb


# ----------------------------------------------------------------------------------------------
# Operating an explorer
# ----------------------------------------------------------------------------------------------
class Explorer:
    """The explorer widget in the notebook's output: a VBox holding the controls and an Output widget."""

    def __init__(self, driver, name: str):
        from selenium.webdriver.common.by import By

        self.driver, self.name, self.by = driver, name, By
        boxes = _wait(f"the explorer of {name} to render", lambda: [
            b for b in driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output .widget-vbox")
            if b.find_elements(By.CSS_SELECTOR, ".widget-slider")], 60)
        assert len(boxes) == 1, f"{name}: expected one explorer, found {len(boxes)}"
        self.box = boxes[0]
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", self.box)
        self.shot_no = 0

    def sliders(self) -> dict:
        """``{description: slider element}``."""
        return {s.find_element(self.by.CSS_SELECTOR, ".widget-label").text.strip(): s
                for s in self.box.find_elements(self.by.CSS_SELECTOR, ".widget-slider")}

    def shown(self) -> dict:
        """What the student sees and hears now: the data URLs of the images and audio players."""
        return self.driver.execute_script("""
            const out = arguments[0].querySelector('.widget-output');
            return {images: Array.from(out.querySelectorAll('img')).map(i => i.src),
                    audio: Array.from(out.querySelectorAll('audio')).map(a => a.currentSrc
                           || (a.querySelector('source') || {}).src || a.src)};""", self.box)

    def settled(self) -> dict:
        """The shown state once it has images and stopped changing (the Output widget is cleared and
        refilled on every redraw)."""
        def stable():
            first = self.shown()
            time.sleep(0.5)
            return first if first["images"] and first == self.shown() else None
        return _wait(f"{self.name}'s explorer to show a figure", stable, UPDATE_TIMEOUT)

    def changed_from(self, before: dict, what: str) -> dict:
        def redrawn():
            now = self.settled()
            return now if now["images"] != before["images"] else None
        return _wait(f"{self.name}'s figure to change after {what}", redrawn, UPDATE_TIMEOUT)

    def drag(self, label: str, fraction: float) -> str:
        """Drag slider ``label``'s handle to ``fraction`` of its track (a real mouse drag; the sliders
        update on release); returns the value the slider then reads."""
        from selenium.webdriver.common.action_chains import ActionChains

        slider = self.sliders()[label]
        handle = slider.find_element(self.by.CSS_SELECTOR, ".noUi-handle")
        track = slider.find_element(self.by.CSS_SELECTOR, ".noUi-target")
        rect = self.driver.execute_script(
            "const t = arguments[0].getBoundingClientRect(), h = arguments[1].getBoundingClientRect();"
            "return [t.left, t.width, h.left + h.width / 2];", track, handle)
        target_x = rect[0] + fraction * rect[1]
        ActionChains(self.driver).click_and_hold(handle).move_by_offset(int(target_x - rect[2]), 0) \
            .release().perform()
        return slider.find_element(self.by.CSS_SELECTOR, ".widget-readout").text.strip()

    def choose(self, option_index: int) -> str:
        """Pick entry ``option_index`` of the explorer's dropdown; returns its text."""
        from selenium.webdriver.support.select import Select

        select = Select(self.box.find_element(self.by.CSS_SELECTOR, ".widget-dropdown select"))
        select.select_by_index(option_index)
        return select.first_selected_option.text

    def play_first_audio(self) -> dict:
        """Press play on the first player and let it run for a moment: ``{duration, played}`` in s."""
        return self.driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const a = arguments[0].querySelector('.widget-output audio');
            a.play().then(() => setTimeout(() => { const t = a.currentTime; a.pause();
                                                   done({duration: a.duration, played: t}); }, 700),
                          e => done({error: String(e)}));""", self.box)

    def screenshot(self, what: str) -> Path:
        self.shot_no += 1
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{self.name}_{self.shot_no}_{what}.png"
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", self.box)
        self.box.screenshot(str(path))
        return path


def _assert_audio_plays(explorer: Explorer, expected_s: float) -> None:
    res = explorer.play_first_audio()
    assert "error" not in res, f"{explorer.name}: the player did not play: {res['error']}"
    assert res["duration"] == pytest.approx(expected_s, rel=0.05), \
        f"{explorer.name}: the player holds {res['duration']:.2f} s of sound, expected {expected_s:.2f} s"
    assert res["played"] > 0, f"{explorer.name}: play() started but the playback position did not move"


def _clip_seconds() -> float:
    """Length of one scene's sound at ``smoke``: what every player must hold."""
    from avlib.config import make_config

    return make_config("smoke").data.clip_seconds


# ----------------------------------------------------------------------------------------------
# The three notebooks
# ----------------------------------------------------------------------------------------------
def test_scene_explorer_00(page, lab):
    """00: the scene slider redraws the scene and swaps its audio player."""
    run_notebook(page, lab, "00_data")
    ex = Explorer(page, "00_data")
    assert list(ex.sliders()) == ["scene"]
    first = ex.settled()
    assert len(first["audio"]) == 1, f"00: expected one audio player, found {len(first['audio'])}"
    ex.screenshot("scene0")
    _assert_audio_plays(ex, _clip_seconds())
    value = ex.drag("scene", 1.0)
    assert value != "0", "dragging the scene slider to the end left it at 0"
    last = ex.changed_from(first, f"the scene slider moved to {value}")
    assert last["audio"] != first["audio"], "the scene changed but the audio player still plays scene 0"
    ex.screenshot(f"scene{value}")


def test_overlay_explorer_04(page, lab):
    """04: the sample slider, the threshold slider and the method dropdown each redraw the overlay."""
    run_notebook(page, lab, "04_localization")
    ex = Explorer(page, "04_localization")
    assert set(ex.sliders()) == {"sample", "threshold"}
    state = ex.settled()
    ex.screenshot("sample0")
    value = ex.drag("sample", 1.0)
    state = ex.changed_from(state, f"the sample slider moved to {value}")
    ex.screenshot(f"sample{value}")
    value = ex.drag("threshold", 0.2)
    state = ex.changed_from(state, f"the threshold slider moved to {value}")
    ex.screenshot(f"threshold{value}")
    method = ex.choose(1)
    ex.changed_from(state, f"the method dropdown switched to {method!r}")
    ex.screenshot("method_" + method.split()[0].lower())


def test_separation_explorer_06(page, lab):
    """06: the example slider redraws the waveforms and swaps every player; the players play."""
    run_notebook(page, lab, "06_separation")
    ex = Explorer(page, "06_separation")
    assert list(ex.sliders()) == ["example"]
    first = ex.settled()
    assert len(first["audio"]) == 5, f"06: expected 5 players (mixture, 2 x ground truth / separated), " \
                                     f"found {len(first['audio'])}"
    ex.screenshot("example0")
    _assert_audio_plays(ex, _clip_seconds())
    value = ex.drag("example", 1.0)
    last = ex.changed_from(first, f"the example slider moved to {value}")
    assert all(a != b for a, b in zip(first["audio"], last["audio"])), \
        "the example changed but some players still play the first example"
    ex.screenshot(f"example{value}")
