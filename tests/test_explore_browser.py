"""The thought explorer in a real browser: headless Chromium (Debian's `chromium` package), driven through
the Chrome DevTools protocol (a websocket): it clicks a question in the list, types a new question into
the box and presses Enter, and the tests read what the DOM shows. The static 500-question file is opened
and its render time (performance.now() when the page finished drawing, written into the DOM) checked. A graph
question (ProsQA-shaped) is drawn as an SVG graph whose node colours follow the thought step.

Marked `browser`: deselect with `-m 'not browser'`. Without Chromium they skip, unless CI is set (then
they fail: CI installs Chromium, see .ci/run).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from coconav.data.tasks import make_splits
from coconav.inference import CoconavModel
from coconav.recipes import explore

from conftest import GRAPH_RECORD, graph_example, graph_model

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-extensions",
    "--window-size=1400,1000",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing in CI: .ci/run installs it with apt-get install chromium")
        pytest.skip("headless Chromium is not installed (apt-get install chromium); CI runs these tests")
    return CHROMIUM


class Browser:
    """One headless Chromium page, driven through the DevTools protocol."""

    def __init__(self, executable: str, profile: Path) -> None:
        websocket = pytest.importorskip("websocket")  # websocket-client, in the [test] extra
        self.process = subprocess.Popen(
            [
                executable,
                *BROWSER_FLAGS,
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        for _ in range(600):  # Chromium writes its port here once it listens
            if port_file.is_file() and port_file.read_text().strip():
                break
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
            page = next(t for t in json.load(response) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60)
        self.ids = itertools.count(1)

    def call(self, method: str, **params) -> dict:
        message_id = next(self.ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:  # skip events until our answer
            reply = json.loads(self.ws.recv())
            if reply.get("id") == message_id:
                assert "error" not in reply, reply
                return reply["result"]

    def eval(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str, seconds: float = 30.0):
        """Poll a JS expression until it is truthy (a page that never gets there fails the test)."""
        for _ in range(int(seconds / 0.05)):
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"the page never satisfied {expression!r}")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && document.body.dataset.ready === '1'")

    def click(self, selector: str) -> None:
        """A real mouse click at the centre of the element."""
        box = self.eval(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView();"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def type(self, text: str) -> None:
        """Keyboard input into the focused element, then Enter."""
        if text:
            self.call("Input.insertText", text=text)
        for kind in ("keyDown", "keyUp"):
            self.call(
                "Input.dispatchKeyEvent",
                type=kind,
                key="Enter",
                code="Enter",
                windowsVirtualKeyCode=13,
                **({"text": "\r"} if kind == "keyDown" else {}),
            )

    def close(self) -> None:
        self.ws.close()
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture
def browser(chromium: str, tmp_path: Path):
    b = Browser(chromium, tmp_path / "profile")
    yield b
    b.close()


def serve(explorer):
    """Serve `explorer` on a free port in a thread; yields (explorer, its URL), then stops the server."""
    server = explore.make_server(explorer, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield explorer, f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def served(tiny_run: Path):
    """The explorer of the tiny run, served on a free port in a thread."""
    yield from serve(explore.build(tiny_run, data="test"))


def test_open_a_question_and_type_a_new_one(browser: Browser, served) -> None:
    explorer, url = served
    browser.open(url)
    assert browser.eval("document.querySelectorAll('#list .row').length") == len(explorer.questions)
    # 1. click question 2 in the list: its trajectory, thoughts and answer appear
    browser.click('#list .row[data-id="2"]')
    browser.wait_for("document.getElementById('detail').dataset.qid === '2'")
    q = explorer.questions[2]
    [traj] = q["trajectories"]
    assert browser.eval("document.querySelector('#detail .traj-answer').textContent") == traj["answer"]
    assert browser.eval("document.querySelectorAll('#detail .step-row').length") == len(traj["steps"]) == 7
    first_tokens = browser.eval(
        "[...document.querySelectorAll('#detail .step-row')[0].querySelectorAll('.tok')]"
        ".map(e => e.firstChild.textContent.trim())"
    )
    assert first_tokens == [tok for tok, _ in traj["steps"][0]["top_tokens"]]
    assert browser.eval("location.hash") == "#q=2"
    # 2. type a new question and press Enter: the model's own answer and thoughts for it
    browser.click("#ask-input")
    browser.type("4 + 5 ?")
    browser.wait_for("document.getElementById('detail').dataset.qid === 'asked'")
    expected = explorer.model.generate("4 + 5 ?", return_trajectories=True)
    assert browser.eval("document.querySelector('#detail .question-text').textContent") == "4 + 5 ?"
    assert browser.eval("document.querySelector('#detail .traj-answer').textContent") == expected["answer"]
    assert browser.eval("document.querySelectorAll('#detail .step-row').length") == expected["num_thoughts"] + 1
    # 3. an empty question: the server's message on the page, and the page keeps working
    browser.eval("document.getElementById('ask-input').value = ''")
    browser.click("#ask-input")
    browser.type("")
    assert "empty" in browser.wait_for("document.getElementById('ask-error').textContent")
    browser.open(url + "#q=999")
    assert "unknown question id" in browser.wait_for("(document.getElementById('detail-error') || {}).textContent")
    # 4. the PCA chart has a point per shown state
    points = sum(len(t["steps"]) for q in explorer.questions for t in q["trajectories"])
    assert browser.eval("document.querySelectorAll('#chart-pca circle').length") >= points


def test_the_url_opens_a_question_and_submits_a_typed_one(chromium: str, served, tmp_path: Path) -> None:
    """The no-driver path (--dump-dom): #q=ID opens a question, ?ask=TEXT goes through the question box."""
    explorer, url = served
    dom = subprocess.run(
        [
            chromium,
            *BROWSER_FLAGS,
            f"--user-data-dir={tmp_path / 'p'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            url + "?ask=7%20-%202%20%3F",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    expected = explorer.model.generate("7 - 2 ?")
    assert 'data-qid="asked"' in dom and f'<span class="answer traj-answer">{expected}</span>' in dom


def test_the_static_500_question_file_opens_in_under_2_seconds(
    browser: Browser, tiny_run: Path, tmp_path: Path
) -> None:
    model = CoconavModel.from_pretrained(tiny_run)
    examples = make_splits(
        "arithmetic", seed=1, train_size=0, validation_size=0, test_size=500, min_difficulty=1, max_difficulty=6
    ).test
    explorer = explore.Explorer(model=model, checkpoint=str(tiny_run), data="arithmetic:500")
    explorer.evaluate(examples, batch_size=250)
    out = explore.write_static(explorer, tmp_path / "explorer.html")
    size = out.stat().st_size
    assert size < 5 * 2**20, size
    browser.open(out.as_uri())
    render_ms = float(browser.eval("document.getElementById('render-ms').textContent"))
    print(
        f"static file: {len(explorer.questions)} questions x 6 thoughts, {size / 2**20:.2f} MiB, rendered in {render_ms:.0f} ms"
    )
    assert render_ms < 2000, render_ms  # the requirement: opens in under 2 s
    assert browser.eval("document.querySelectorAll('#list .row').length") == 500
    browser.click('#list .row[data-id="7"]')
    browser.wait_for("document.getElementById('detail').dataset.qid === '7'")
    assert (
        browser.eval("document.querySelector('#detail .traj-answer').textContent")
        == explorer.questions[7]["trajectories"][0]["answer"]
    )


@pytest.fixture(scope="module")
def served_multi(nav_checkpoint: Path):
    """The explorer of the tiny navigator checkpoint at K = 3, served on a free port in a thread."""
    yield from serve(explore.build(nav_checkpoint, data="test", num_trajectories=3, max_questions=4))


def test_k_trajectories_are_stacked_under_the_fused_answer(browser: Browser, served_multi) -> None:
    explorer, url = served_multi
    browser.open(url)
    browser.click('#list .row[data-id="1"]')
    browser.wait_for("document.getElementById('detail').dataset.qid === '1'")
    q = explorer.questions[1]
    assert browser.eval("document.querySelector('#detail .fused-answer').textContent") == q["answer"]
    assert browser.eval("document.querySelector('#detail .agreement').textContent") == f"{q['agreement']:.2f}"
    headings = browser.eval("[...document.querySelectorAll('#detail .trajectory h2')].map(e => e.textContent)")
    assert headings == [f"Trajectory {k} of 3" for k in (1, 2, 3)]
    assert browser.eval("[...document.querySelectorAll('#detail .traj-answer')].map(e => e.textContent)") == [
        t["answer"] for t in q["trajectories"]
    ]
    rows = browser.eval(
        "[...document.querySelectorAll('#detail .trajectory')].map(d => d.querySelectorAll('.step-row').length)"
    )
    assert rows == [len(t["steps"]) for t in q["trajectories"]]
    points = sum(len(t["steps"]) for q in explorer.questions for t in q["trajectories"])
    assert browser.eval("document.querySelectorAll('#chart-pca circle').length") >= points
    # a typed question gets the same K
    browser.click("#ask-input")
    browser.type("4 + 5 ?")
    browser.wait_for("document.getElementById('detail').dataset.qid === 'asked'")
    assert browser.eval("document.querySelectorAll('#detail .trajectory').length") == 3
    assert browser.eval("document.querySelector('#detail .fused-answer').textContent") == explorer.model.generate(
        "4 + 5 ?", num_trajectories=3
    )


@pytest.fixture(scope="module")
def graph_explorer() -> explore.Explorer:
    """The graph question twice, through a tiny random model over its words (3 thoughts: steps h_0..h_3)."""
    explorer = explore.Explorer(model=graph_model(), checkpoint="graph-model", data="graph.json")
    explorer.evaluate([graph_example(), graph_example()], batch_size=2)
    return explorer


NODE_FILLS = "[...document.querySelectorAll('#graph .node rect.body')].map(r => r.getAttribute('fill'))"
FRONTIER = "[...document.querySelectorAll('#graph .node.frontier')].map(g => Number(g.dataset.i)).sort((a, b) => a - b)"


def check_graph(browser: Browser, explorer: explore.Explorer) -> None:
    """Question 1's graph: every node drawn and marked; the colours change with the step control."""
    browser.click('#list .row[data-id="1"]')
    browser.wait_for("document.getElementById('detail').dataset.qid === '1'")
    graph = explorer.questions[1]["graph"]
    assert browser.eval("document.querySelectorAll('#graph .node').length") == len(GRAPH_RECORD["idx_to_symbol"])
    assert browser.eval("document.querySelectorAll('#graph .edge').length") == len(GRAPH_RECORD["edges"])
    assert browser.eval("document.querySelectorAll('#graph .edge.on-path').length") == len(graph["path"]) - 1 == 3
    marks = "(c) => Number(document.querySelector(`#graph .node.${c}`).dataset.i)"
    assert browser.eval(f"['root', 'target', 'neg-target'].map({marks})") == [0, 6, 8]
    labels = browser.eval("[...document.querySelectorAll('#graph .node text')].map(t => t.textContent)")
    assert labels[6] == "lempus ✓" and labels[8] == "tumpus ✗" and labels[2] == "wumpus"
    assert browser.eval("document.getElementById('graph-step').max") == "3"  # h_0..h_3
    # step 0: the frontier is distance 1 (wumpus, zumpus); the node of the unknown word is grey
    before = browser.eval(NODE_FILLS)
    assert before[9] == "#e4e4e4" and len(set(before[:9])) > 1
    assert browser.eval(FRONTIER) == [2, 3]
    # the next thought: the colours change, and the frontier moves one edge on (rempus, gorpus)
    browser.click("#graph-next")
    browser.wait_for("document.getElementById('graph-box').dataset.step === '1'")
    after = browser.eval(NODE_FILLS)
    assert after != before and after[9] == "#e4e4e4"
    assert browser.eval(FRONTIER) == [4, 5]
    assert "becomes thought 2" in browser.eval("document.getElementById('graph-step-label').textContent")
    # the slider goes straight to the last step (followed by <eot>), and back to the first
    browser.eval(
        "(() => { const s = document.getElementById('graph-step'); s.value = 3;"
        " s.dispatchEvent(new Event('input')); })()"
    )
    assert "then <eot>" in browser.eval("document.getElementById('graph-step-label').textContent")
    browser.click("#graph-prev")
    browser.click("#graph-prev")
    browser.click("#graph-prev")
    assert browser.eval(NODE_FILLS) == before


def test_the_graph_is_drawn_and_coloured_by_thought_in_the_static_file(
    browser: Browser, graph_explorer: explore.Explorer, tmp_path: Path
) -> None:
    out = explore.write_static(graph_explorer, tmp_path / "graph.html")
    browser.open(out.as_uri())
    check_graph(browser, graph_explorer)


def test_the_graph_is_drawn_and_coloured_by_thought_on_the_server(
    browser: Browser, graph_explorer: explore.Explorer
) -> None:
    for _, url in serve(graph_explorer):
        browser.open(url)
        check_graph(browser, graph_explorer)
