"""The thought explorer (coconav/recipes/explore.py, coconav/decode/trace.py): the page's data is the Python API's
output, the trace changes no decision, errors are JSON 4xx (never a traceback), a burst of concurrent
requests is answered, the server binds to 127.0.0.1 by default, serves only its own routes and answers only
this machine's (or a trusted) Host header, and the static file stays small. A graph question (ProsQA-shaped)
carries its graph and each node's probability per thought, and the frontier analysis is written as JSON.

The model is the session's tiny COCONUT run (conftest.tiny_run), read-only; a navigator with random
(non-zero) steering and a filled persistent memory is attached in memory for the navigator fields. The graph
question runs through conftest.graph_model, a tiny random model over its words.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from coconav.config import NavigatorConfig
from coconav.data.scoring import score
from coconav.data.tasks import make_splits
from coconav.errors import InputError
from coconav.eval.search import graph_of, node_token_ids, search_frontier
from coconav.inference import CoconavModel
from coconav.model.navigator import Navigator
from coconav.recipes import evaluate_checkpoint, explore

from conftest import GRAPH_DISTANCES, GRAPH_RECORD, assert_close_tree, graph_example, graph_model

TRACE_ONLY = ("correct", "reward")  # keys the explorer adds to the API's trajectory records
STEP_ONLY = ("xy", "node_probs")  # the explorer's 2-D projection of each state; its graph nodes' probabilities
# The page batches its questions otherwise than the API call beside it, so a float may move in its last digit
# (the CPU's summation order): page and API agree to one unit of the page's rounding, or 1e-5 relative.
PAGE_DIGIT = {"abs": 2 * 10**-explore.DIGITS, "rel": 1e-5}


@pytest.fixture(scope="module")
def explorer(tiny_run: Path) -> explore.Explorer:
    return explore.build(tiny_run, data="test")


def api_view(traj: dict) -> dict:
    """A page trajectory without the explorer's own additions: what CoconavModel.generate returned, rounded."""
    out = {k: v for k, v in traj.items() if k not in TRACE_ONLY}
    out["steps"] = [{k: v for k, v in s.items() if k not in STEP_ONLY} for s in traj["steps"]]
    return out


def test_page_data_equals_the_python_api(explorer: explore.Explorer, tiny_run: Path) -> None:
    model = CoconavModel.from_pretrained(tiny_run)
    ids = [0, 3, 5]
    records = model.generate([explorer.questions[i]["question"] for i in ids], return_trajectories=True)
    for i, record in zip(ids, records):
        page = explorer.questions[i]
        assert len(page["trajectories"]) == 1
        assert_close_tree(api_view(page["trajectories"][0]), explore.rounded(record), **PAGE_DIGIT)
        assert len(record["steps"]) == record["num_thoughts"] + 1 == 7  # h_0..h_6 for the tiny run's 6 thoughts
    # correctness and thought counts are what `coconav eval` reports for the same questions
    report = evaluate_checkpoint.run(tiny_run, data="test")
    assert [q["correct"] for q in explorer.questions] == [q["correct"] for q in report["questions"]]
    assert [q["num_thoughts"] for q in explorer.questions] == [q["num_thoughts"] for q in report["questions"]]
    assert_close_tree(
        explorer.summary()["accuracy_by_difficulty"], explore.rounded(report["accuracy_by_difficulty"]), **PAGE_DIGIT
    )


def test_trace_fields_are_the_real_states(explorer: explore.Explorer, tiny_run: Path) -> None:
    model = CoconavModel.from_pretrained(tiny_run)
    question = explorer.questions[2]["question"]
    record = model.generate(question, return_trajectories=True, return_states=True, top_k=3)
    states = record.pop("states")  # [n+1, D]
    assert states.shape == (record["num_thoughts"] + 1, model.lm.hidden_size)
    probs = torch.softmax(model.lm.lm_head(states).float(), dim=-1)
    for t, step in enumerate(record["steps"]):
        top = probs[t].topk(3)
        assert [p for _, p in step["top_tokens"]] == pytest.approx(top.values.tolist())
        assert step["norm"] == pytest.approx(float(states[t].norm()), rel=1e-5)
        if t:
            assert step["cosine_prev"] == pytest.approx(
                float(torch.cosine_similarity(states[t], states[t - 1], dim=0)), abs=1e-5
            )
        assert step["fed"] == (t < record["num_thoughts"])
    assert model.generate(question) == record["answer"]  # the trace changes nothing


def navigated(tiny_run: Path) -> CoconavModel:
    """The tiny COCONUT model with a random navigator: steering on (non-zero up-projection), a filled bank."""
    model = CoconavModel.from_pretrained(tiny_run)
    torch.manual_seed(0)
    nav = Navigator(
        model.lm.hidden_size,
        NavigatorConfig(hidden=16, action_dim=4, max_thoughts=4, memory_size=8, memory_topk=2, init_halt_bias=-5.0),
    ).eval()  # thinks to max_thoughts
    torch.nn.init.normal_(nav.up.weight, std=0.5)
    torch.nn.init.normal_(nav.mean_head.weight, std=0.5)
    nav.bank.write(torch.randn(5, model.lm.hidden_size), torch.randn(5, model.lm.hidden_size), torch.linspace(0, 1, 5))
    model.navigator = nav
    return model


def test_navigator_fields(tiny_run: Path) -> None:
    model = navigated(tiny_run)
    questions = ["1 + 2 ?", "3 * 4 - 5 ?", "9 - 8 + 7 * 6 ?"]
    records = model.generate(questions, return_trajectories=True)
    plain = model.generate(questions, return_trajectories=False)
    assert [r["answer"] for r in records] == plain  # the tracer decides exactly as the navigator alone
    steered = 0
    for r in records:
        n = r["num_thoughts"]
        assert [s["halt_prob"] for s in r["steps"]] == r["halt_probs"]
        assert [s["value"] for s in r["steps"]] == r["values"]
        for t, s in enumerate(r["steps"]):
            assert len(s["episodic_reads"]) == t + 1  # the null slot and steps 0..t-1
            assert sum(s["episodic_reads"]) == pytest.approx(1.0, abs=1e-5)
            assert (s["steer_norm"] is None) == (t == n)
            steered += t < n and s["steer_norm"] > 0
        assert len(r["memory_reads"]) == 2  # memory_topk entries of the 5 stored
        assert sum(m["weight"] for m in r["memory_reads"]) == pytest.approx(1.0, abs=1e-5)
        assert all(0 <= m["slot"] < 5 for m in r["memory_reads"])
    assert steered > 0, "the steering offsets were never recorded"


def test_navigator_trace_reports_the_offset_it_fed(tiny_run: Path) -> None:
    """steer_norm at step t is |U a_t| for the greedy action a_t = mean(h_0..h_t)."""
    model = navigated(tiny_run)
    record = model.generate("3 * 4 - 5 ?", return_trajectories=True, return_states=True)
    states = record["states"][None]  # [1, n+1, D]
    out = model.navigator(states, states[:, 0])
    for t, step in enumerate(record["steps"][:-1]):
        expected = float(model.navigator.steer(out.mean[0, t]).norm().detach())
        assert step["steer_norm"] == pytest.approx(expected, rel=1e-4)


@pytest.fixture(scope="module")
def client(explorer: explore.Explorer):
    return explore.create_app(explorer).test_client()


@pytest.mark.parametrize(
    "path,status",
    [("/api/question/99", 404), ("/api/question/abc", 404), ("/api/question/-1", 404), ("/api/nothing", 404)],
)
def test_unknown_ids_are_json_4xx(client, path: str, status: int) -> None:
    response = client.get(path)
    assert response.status_code == status
    assert "error" in response.get_json() and "Traceback" not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "body,message",
    [
        ({"question": ""}, "empty"),
        ({"question": "   "}, "empty"),
        ({"question": "1 + " * 400}, "more than the limit"),
        ({"question": 3}, "the question must be a string, got int"),
        ({"question": None}, "the question must be a string, got NoneType"),
        ({"q": "1 + 2 ?"}, "send JSON"),
        ("not json", "send JSON"),
    ],
)
def test_bad_questions_are_json_400(client, body, message: str) -> None:
    kwargs = {"json": body} if isinstance(body, dict) else {"data": body}
    response = client.post("/api/ask", **kwargs)
    assert response.status_code == 400
    assert message in response.get_json()["error"]
    assert "Traceback" not in response.get_data(as_text=True)


def test_a_question_longer_than_the_context_is_a_400(client, explorer: explore.Explorer) -> None:
    text = "1+" * 499 + "1"  # under the character limit, but 999 tokens: more than the 512 positions
    assert len(text) <= explore.MAX_QUESTION_CHARS and explorer.model.lm.context_length == 512
    response = client.post("/api/ask", json={"question": text})
    assert response.status_code == 400
    assert "context" in response.get_json()["error"]


def test_ask_answers_a_typed_question(client, explorer: explore.Explorer) -> None:
    response = client.post("/api/ask", json={"question": "4 + 5 ?"})
    assert response.status_code == 200
    q = response.get_json()
    [traj] = q["trajectories"]
    expected = explorer.model.generate("4 + 5 ?", return_trajectories=True)
    assert_close_tree(api_view(traj), explore.rounded(expected), **PAGE_DIGIT)
    assert traj["correct"] is None and traj["reward"] is None  # no reference answer for a typed question
    assert all(s["xy"] is not None and len(s["xy"]) == 2 for s in traj["steps"])


def test_page_and_listing(client, explorer: explore.Explorer) -> None:
    html = client.get("/").get_data(as_text=True)
    assert "coconav thought explorer" in html
    assert '<script id="coconav-data" type="application/json">null</script>' in html  # served: data from the API
    for external in ('src="http', "src='http", 'href="http', "@import", "//cdn"):
        assert external not in html, external
    listing = client.get("/api/questions").get_json()
    assert [q["id"] for q in listing["questions"]] == list(range(len(explorer.questions)))
    assert listing["summary"]["num_questions"] == len(explorer.questions)


def get(url: str, data: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}") if "json" in response.headers[
                "Content-Type"
            ] else {}
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_a_burst_of_concurrent_requests_is_answered(explorer: explore.Explorer) -> None:
    server = explore.make_server(explorer, 0)
    assert server.host == "127.0.0.1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    ask = lambda text: get(f"{base}/api/ask", json.dumps({"question": text}).encode())  # noqa: E731
    calls = [(lambda i=i: get(f"{base}/api/question/{i % 8}"), 200) for i in range(80)]
    calls += [(lambda i=i: get(f"{base}/api/question/{1000 + i}"), 404) for i in range(40)]
    calls += [(lambda: get(f"{base}/api/questions"), 200) for _ in range(30)]
    calls += [(lambda i=i: ask(f"{i % 10} + 1 ?"), 200) for i in range(30)]
    calls += [(lambda: ask(""), 400) for _ in range(20)]
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = [(pool.submit(call), status) for call, status in calls]
            results = [(f.result(), status) for f, status in futures]
        assert len(results) == 200
        assert [code for (code, _), _ in results] == [status for _, status in results]
        assert all("error" in body for (code, body), _ in results if code >= 400)
        assert get(f"{base}/api/question/0")[0] == 200  # still up
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("host", ["http://127.0.0.1", "localhost:8765", "a b", "", "[::1", "x/y"])
def test_a_host_that_is_no_address_is_refused(explorer: explore.Explorer, host: str) -> None:
    with pytest.raises(InputError, match="not a host name or address"):
        explore.make_server(explorer, 0, host=host)
    with pytest.raises(InputError, match="not a host name or address"):
        explore.make_server(explorer, 0, trusted=[host])


def test_the_server_refuses_a_foreign_host_header(explorer: explore.Explorer) -> None:
    """Through the real server: a page on another site that rebinds its name to 127.0.0.1 sends its own Host."""
    import http.client

    server = explore.make_server(explorer, 0, host="localhost", trusted=["box.lan"])
    assert server.host == "localhost"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for host, status in [("evil.example", 400), ("box.lan:80", 200), ("127.0.0.1", 200), ("localhost:1", 200)]:
            conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=60)
            conn.request("GET", "/api/questions", headers={"Host": host})
            response = conn.getresponse()
            body = json.loads(response.read())
            assert response.status == status, (host, body)
            assert ("error" in body) == (status == 400)
            conn.close()
    finally:
        server.shutdown()
        server.server_close()


def test_a_busy_port_is_a_clear_error(explorer: explore.Explorer) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(InputError, match="cannot listen on 127.0.0.1"):
            explore.make_server(explorer, busy.getsockname()[1])


def test_k_trajectories_need_a_navigator_checkpoint(cli, tiny_run: Path) -> None:
    message = cli("explore", "--checkpoint", tiny_run, "--num-trajectories", "2", "--static", "x.html").error()
    assert message.startswith("--num-trajectories 2 needs a navigator checkpoint") and message.endswith(
        "has no navigator)"
    )
    with pytest.raises(InputError, match="needs a navigator checkpoint"):
        explore.build(tiny_run, num_trajectories=3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--num-trajectories", "17"], "--num-trajectories must be in [1, navigator.max_trajectories=16], got 17"),
        (
            ["--num-trajectories", "3", "--fusion", "best"],
            "--fusion must be one of majority, value, scorer, got 'best'",
        ),
    ],
)
def test_k_trajectories_bad_values_are_one_line_errors(
    cli, nav_checkpoint: Path, args: list[str], message: str
) -> None:
    assert cli("explore", "--checkpoint", nav_checkpoint, *args, "--static", "x.html").error() == message


MULTI_ONLY = ("correct", "reward")  # the explorer's additions to each trajectory (as for K = 1)


@pytest.fixture(scope="module")
def multi_explorer(nav_checkpoint: Path) -> explore.Explorer:
    return explore.build(nav_checkpoint, data="test", num_trajectories=3, max_questions=4)


def test_k_trajectory_page_data_equals_the_python_api(multi_explorer: explore.Explorer, nav_checkpoint: Path) -> None:
    model = CoconavModel.from_pretrained(nav_checkpoint)
    ids = [0, 1, 2, 3]  # the explorer's one batch: the sampled trajectories' streams are drawn per batch
    questions = [multi_explorer.questions[i]["question"] for i in ids]
    records = model.generate(questions, num_trajectories=3, fusion="majority", return_trajectories=True)
    singles = model.generate(questions, return_trajectories=True)
    assert multi_explorer.meta()["num_trajectories"] == 3
    steered = 0
    for i, record, single in zip(ids, records, singles):
        page = multi_explorer.questions[i]
        assert len(page["trajectories"]) == 3
        assert_close_tree(
            [api_view(t) for t in page["trajectories"]], explore.rounded(record["trajectories"]), **PAGE_DIGIT
        )
        assert page["answer"] == record["answer"]
        assert page["agreement"] == pytest.approx(record["agreement"], **PAGE_DIGIT)
        assert page["forward_passes"] == record["forward_passes"]
        assert page["num_thoughts"] == sum(t["num_thoughts"] for t in record["trajectories"])
        for t in page["trajectories"]:
            assert len(t["steps"]) == t["num_thoughts"] + 1
            assert [s["halt_prob"] for s in t["steps"]] == t["halt_probs"]
            assert [s["norm"] for s in t["steps"][1:]] == pytest.approx(t["thought_norms"], abs=1e-4)
            assert t["reward"] is not None and t["correct"] in (True, False) and "weight" in t
            steered += sum(s["steer_norm"] > 0 for s in t["steps"][:-1])
        # trajectory 0 is the greedy one: the K = 1 record (numbers up to the batch's float rounding)
        zero = record["trajectories"][0]
        assert zero["answer"] == single["answer"] and zero["num_thoughts"] == single["num_thoughts"]
        for a, b in zip(zero["steps"], single["steps"]):
            assert a["top_tokens"][0][0] == b["top_tokens"][0][0] and a["fed"] == b["fed"]
            for key in ("norm", "cosine_prev", "halt_prob", "value", "steer_norm"):
                assert (a[key] is None) == (b[key] is None) and (
                    a[key] is None or a[key] == pytest.approx(b[key], abs=1e-4)
                ), key
        assert zero["memory_reads"] == single["memory_reads"]
    assert steered > 0
    # the question's outcome is the fused answer's, and the summary counts it
    examples = explore.load_questions(model, "test", 4)
    assert [q["correct"] for q in multi_explorer.questions] == [
        score(r["answer"], ex) for r, ex in zip(records, examples)
    ]
    assert multi_explorer.summary()["accuracy"] == pytest.approx(
        sum(score(r["answer"], ex) for r, ex in zip(records, examples)) / 4, abs=1e-5
    )


def test_k_trajectory_typed_question_uses_the_same_k(multi_explorer: explore.Explorer) -> None:
    q = multi_explorer.ask("3 * 4 - 2 ?")
    assert len(q["trajectories"]) == 3 and q["correct"] is None and q["agreement"] is not None
    assert all(
        t["reward"] is None and t["correct"] is None and t["steps"][0]["xy"] is not None for t in q["trajectories"]
    )


def test_k_trajectory_static_file(cli, nav_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "multi.html"
    result = cli(
        "explore", "--checkpoint", nav_checkpoint, "--num-trajectories", "2", "--max-questions", "3", "--static", out
    )
    assert result.rc == 0, result.err
    data = json.loads(
        out.read_text().split('<script id="coconav-data" type="application/json">')[1].split("</script>")[0]
    )
    assert data["meta"]["num_trajectories"] == 2 and len(data["questions"]) == 3
    assert all(len(q["trajectories"]) == 2 and "agreement" in q for q in data["questions"])


def test_explore_cli_writes_a_self_contained_static_file(cli, tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "explorer.html"
    result = cli("explore", "--checkpoint", tiny_run, "--static", out)
    assert result.rc == 0, result.err
    html = out.read_text()
    data = json.loads(html.split('<script id="coconav-data" type="application/json">')[1].split("</script>")[0])
    assert len(data["questions"]) == 8 and data["questions"][0]["trajectories"][0]["steps"]
    for external in ('src="http', 'href="http', "//cdn"):
        assert external not in html, external


def five_hundred_questions(tiny_run: Path) -> explore.Explorer:
    """500 questions x 6 thoughts through the tiny run (the issue's size for the static file)."""
    model = CoconavModel.from_pretrained(tiny_run)
    examples = make_splits(
        "arithmetic", seed=1, train_size=0, validation_size=0, test_size=500, min_difficulty=1, max_difficulty=6
    ).test
    explorer = explore.Explorer(model=model, checkpoint=str(tiny_run), data="arithmetic:500")
    explorer.evaluate(examples, batch_size=250)
    return explorer


def test_static_file_for_500_questions_stays_under_5_mb(tiny_run: Path, tmp_path: Path) -> None:
    explorer = five_hundred_questions(tiny_run)
    assert len(explorer.questions) == 500
    assert {q["num_thoughts"] for q in explorer.questions} == {6}
    out = explore.write_static(explorer, tmp_path / "big.html")
    assert out.stat().st_size < 5 * 2**20, out.stat().st_size


def test_the_demo_writes_explorer_html_beside_its_plots(tiny_run: Path, tmp_path: Path) -> None:
    from coconav.recipes import demo

    page = demo.write_explorer(tmp_path, tiny_run)
    assert page == tmp_path / "explorer.html"
    html = page.read_text()
    data = json.loads(html.split('<script id="coconav-data" type="application/json">')[1].split("</script>")[0])
    assert len(data["questions"]) == 8 and data["meta"]["mode"] == "coconut"


def test_static_file_for_100_questions_at_k_5_stays_under_5_mb(nav_checkpoint: Path, tmp_path: Path) -> None:
    """100 questions x 5 trajectories x (4 thoughts + h_0): 2,500 traced steps (measured: 0.84 MiB)."""
    model = CoconavModel.from_pretrained(nav_checkpoint)
    examples = make_splits(
        "arithmetic", seed=1, train_size=0, validation_size=0, test_size=100, min_difficulty=1, max_difficulty=6
    ).test
    explorer = explore.Explorer(model=model, checkpoint=str(nav_checkpoint), data="arithmetic:100", num_trajectories=5)
    explorer.evaluate(examples, batch_size=100)
    assert sum(len(t["steps"]) for q in explorer.questions for t in q["trajectories"]) == 2500
    out = explore.write_static(explorer, tmp_path / "k5.html")
    assert out.stat().st_size < 5 * 2**20, out.stat().st_size


# -- the server answers only its own routes, only this machine's Host, and never 500 to a malformed request ------


def test_no_static_route_serves_the_working_folder(explorer: explore.Explorer, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "secret.txt").write_text("private notes")
    monkeypatch.chdir(tmp_path)  # Flask's default /static would serve this folder
    app = explore.create_app(explorer)
    assert app.static_folder is None
    client = app.test_client()
    for path in ("/static/secret.txt", "/secret.txt", "/static/", "/../secret.txt"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "error" in response.get_json() and "private" not in response.get_data(as_text=True)


@pytest.mark.parametrize("qid", ["\u0661", "\u00b2", "\uff19", "1\u00b2", "0" * 10, "9" * 5000, " 1", "1.0"])
def test_a_question_id_that_is_no_ascii_number_is_a_404(client, qid: str) -> None:
    response = client.get(f"/api/question/{qid}")
    assert response.status_code == 404
    assert response.get_json()["error"].startswith("unknown question id")


@pytest.mark.parametrize(
    "host, status",
    [
        ("localhost", 200),
        ("127.0.0.1:8765", 200),
        ("[::1]:8765", 200),
        ("LOCALHOST:80", 200),
        ("evil.example", 400),
        ("evil.example:8765", 400),
        ("127.0.0.1.evil.example", 400),
        ("localhost@evil.example", 400),
        ("[::2]:8765", 400),
    ],
)
def test_only_this_machines_host_header_is_answered(client, host: str, status: int) -> None:
    for path in ("/", "/api/questions"):
        response = client.get(path, headers={"Host": host})
        assert response.status_code == status, path
        if status == 400:
            assert "untrusted Host header" in response.get_json()["error"]
    if status == 400:  # refused before the model runs
        response = client.post("/api/ask", json={"question": "1 + 2 ?"}, headers={"Host": host})
        assert response.status_code == 400 and "untrusted Host header" in response.get_json()["error"]


def test_a_trusted_host_is_answered(explorer: explore.Explorer) -> None:
    trusted = explore.trusted_hosts("0.0.0.0", ["Box.LAN", "::1"])
    assert trusted == ("localhost", "127.0.0.1", "[::1]", "box.lan")  # the wildcard is no name a request carries
    client = explore.create_app(explorer, trusted).test_client()
    assert client.get("/api/questions", headers={"Host": "box.lan:8765"}).status_code == 200
    assert client.get("/api/questions", headers={"Host": "other.lan:8765"}).status_code == 400


@pytest.mark.parametrize(
    "kwargs, status, message",
    [
        ({"data": "[" * 20000, "content_type": "application/json"}, 400, "send JSON"),  # deeper than the parser goes
        ({"data": '{"question": "\\ud800 1 + 2 ?"}', "content_type": "application/json"}, 400, "not valid Unicode"),
        ({"data": "1" * (explore.MAX_REQUEST_BYTES + 1), "content_type": "application/json"}, 413, "Too Large"),
        ({"json": {"question": "\u0661 + \u0662 ?"}}, 400, "words this model does not know"),
        ({"json": [1, 2]}, 400, "send JSON"),
    ],
)
def test_malformed_asks_are_json_4xx(client, kwargs: dict, status: int, message: str) -> None:
    response = client.post("/api/ask", **kwargs)
    assert response.status_code == status
    assert message in response.get_json()["error"]


@pytest.mark.parametrize("method, path", [("get", "/api/ask"), ("post", "/"), ("put", "/api/questions")])
def test_a_wrong_method_is_a_json_405(client, method: str, path: str) -> None:
    response = getattr(client, method)(path)
    assert response.status_code == 405 and "Method Not Allowed" in response.get_json()["error"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--host", "http://box"], "not a host name or address: 'http://box' (e.g. localhost, 192.168.1.5, ::1)"),
        (["--trusted-host", "box:80"], "not a host name or address: 'box:80' (e.g. localhost, 192.168.1.5, ::1)"),
    ],
)
def test_bad_host_flags_are_one_line_errors_before_anything_runs(cli, tiny_run: Path, args, message: str) -> None:
    assert cli("explore", "--checkpoint", tiny_run, *args).error() == message


# -- a question with a graph (ProsQA): the graph and each node's probability at each thought ----------------------


@pytest.fixture(scope="module")
def graph_explorer() -> explore.Explorer:
    """Two copies of the graph question through a tiny random model over its words (3 thoughts)."""
    explorer = explore.Explorer(model=graph_model(), checkpoint="graph-model", data="graph.json")
    explorer.evaluate([graph_example(), graph_example()], batch_size=2)
    return explorer


def test_a_graph_question_carries_its_graph_and_node_probabilities(graph_explorer: explore.Explorer) -> None:
    q = graph_explorer.questions[0]
    graph = q["graph"]
    assert graph["nodes"] == GRAPH_RECORD["idx_to_symbol"] and graph["edges"] == GRAPH_RECORD["edges"]
    assert (graph["root"], graph["target"], graph["neg_target"]) == (0, 6, 8)
    assert graph["path"] == [0, 2, 4, 6] and graph["depth"] == GRAPH_DISTANCES
    # each step's node_probs is the LM head's probability of each node's word over the state h_t
    model = graph_explorer.model
    record = model.generate(q["question"], return_trajectories=True, return_states=True)
    probs = torch.softmax(model.lm.lm_head(record["states"]), dim=-1).detach()  # [4, V]: h_0..h_3
    ids = node_token_ids(model.lm.tokenizer, graph["nodes"])
    [traj] = q["trajectories"]
    assert len(traj["steps"]) == 4
    for t, step in enumerate(traj["steps"]):
        assert step["node_probs"][9] is None  # kumpus: a word the tokenizer lacks has no probability
        assert step["node_probs"][:9] == pytest.approx([float(probs[t, i]) for i in ids[:9]], abs=2e-5)
    # the reading moves from thought to thought (what the page's colours show)
    first, second = traj["steps"][0]["node_probs"][:9], traj["steps"][1]["node_probs"][:9]
    assert max(abs(a - b) for a, b in zip(first, second)) > 0.05
    # a typed question has no graph, and its steps no node probabilities
    asked = graph_explorer.ask("Alex is a wumpus.")
    assert "graph" not in asked and all("node_probs" not in s for s in asked["trajectories"][0]["steps"])


def test_the_graph_reaches_both_pages(graph_explorer: explore.Explorer, tmp_path: Path) -> None:
    html = explore.write_static(graph_explorer, tmp_path / "graph.html").read_text()
    data = json.loads(html.split('<script id="coconav-data" type="application/json">')[1].split("</script>")[0])
    assert data["questions"][0]["graph"] == graph_explorer.questions[0]["graph"]
    served = explore.create_app(graph_explorer).test_client().get("/api/question/1").get_json()
    assert served["graph"]["path"] == [0, 2, 4, 6]
    assert len(served["trajectories"][0]["steps"][2]["node_probs"]) == 10


def test_search_analysis_is_the_frontier_of_each_questions_states(graph_explorer: explore.Explorer) -> None:
    model = graph_explorer.model
    examples = [graph_example(), graph_example()]
    analysis = explore.search_analysis(model, examples, batch_size=1)
    # by hand: each question alone through generate, its states read through the LM head
    items = []
    for ex in examples:
        states = model.generate(ex.question, return_trajectories=True, return_states=True)["states"]
        probs = torch.softmax(model.lm.lm_head(states), dim=-1).detach()
        ids = node_token_ids(model.lm.tokenizer, GRAPH_RECORD["idx_to_symbol"])
        column = [probs[:, i] if i is not None else torch.full((len(states),), float("nan")) for i in ids]
        items.append((torch.stack(column, dim=1), graph_of(ex)))
    expected = search_frontier(items).to_json()
    assert_close_tree(analysis.to_json(), expected, abs=1e-5)
    assert [s["frontier_depth"] for s in expected["steps"]] == [1, 2, 3, 4]
    assert expected["steps"][3]["frontier_nodes"] == 0  # no node 4 edges from the root


def test_search_frontier_cli_writes_the_analysis(cli, tmp_path: Path, graph_explorer: explore.Explorer) -> None:
    from coconav.config import to_dict
    from coconav.io.checkpoint import TrainState, save_checkpoint

    model = graph_explorer.model
    save_checkpoint(tmp_path / "ckpt", model.lm, TrainState(stage=0, step=1, global_step=1), to_dict(model.config))
    data = tmp_path / "graphs.json"
    data.write_text(json.dumps([GRAPH_RECORD, {**GRAPH_RECORD, "edges": json.dumps(GRAPH_RECORD["edges"])}]))
    out = tmp_path / "new" / "frontier.json"
    result = cli("explore", "--checkpoint", tmp_path / "ckpt", "--data", data, "--search-frontier", out)
    assert result.rc == 0, result.err
    report = json.loads(out.read_text())
    assert report["questions"] == 2 and report["thoughts"] == 3 and report["data"] == str(data)
    expected = explore.search_analysis(model, [graph_example(), graph_example()]).to_json()
    assert_close_tree(report["steps"], expected["steps"], abs=1e-5)
    assert "frontier node p" in result.out and f"wrote {out}" in result.out


def test_search_frontier_needs_graph_questions(cli, tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "frontier.json"
    message = cli("explore", "--checkpoint", tiny_run, "--search-frontier", out).error()
    assert message == "no question in 'test' carries a graph (idx_to_symbol, edges, root, target)"
    assert not out.exists()
    message = cli("explore", "--checkpoint", tiny_run, "--search-frontier", tmp_path).error()
    assert message == f"--search-frontier {tmp_path} is a folder: give a file name (e.g. {tmp_path / 'report.json'})"
    message = cli("explore", "--checkpoint", tiny_run, "--search-frontier", out, "--num-trajectories", "2").error()
    assert message == "--search-frontier reads one trajectory per question: drop --num-trajectories and --static"
