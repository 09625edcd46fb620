"""The thought explorer: a local web page (or one self-contained HTML file) that shows what the
continuous thoughts do.

    coconav explore --checkpoint runs/demo/navigator --port 8765            # http://127.0.0.1:8765
    coconav explore --checkpoint runs/demo/coconut --data test --static explorer.html

Every number on the page comes from ``CoconavModel.generate(..., return_trajectories=True)`` (the
thought trace of coconav/decode/trace.py) and is scored with the evaluation's rule (coconav.data.scoring)
and the navigator's reward (coconav.rl.rewards.episode_return); the by-difficulty charts use
``coconav.eval.evaluate.aggregate``, the numbers `coconav eval` reports. Steps: (1) load the checkpoint and
the questions; (2) answer them in batches with the trace; (3) project every state h_t onto the two
principal components of all of them (the paper's picture of thoughts as a search frontier); (4)
serve the JSON API and the page (Flask, threaded, 127.0.0.1 unless ``--host`` says otherwise), or write the
page with the data inlined. The data holds a list of trajectories per question: one, or with
``--num-trajectories K`` (a navigator checkpoint) K, each with its own trace, answer, correctness, reward and
fusion weight, under the question's fused answer and agreement (``CoconavModel.generate(..., num_trajectories=K)``).

A question that carries a graph (ProsQA: ``idx_to_symbol``, ``edges``, ``root``, ``target``, ``neg_target``)
gets it on the page, and every step of its trajectories the LM head's probability of each node's word
(``node_probs``, coconav.eval.search): the page draws the graph and colours the nodes thought by thought, the
paper's reading of thoughts as a search frontier (arXiv 2412.06769 §5). ``search_report`` averages those
probabilities over a data file (frontier nodes against the rest, by step and by distance from the root):

    coconav explore --checkpoint runs/prosqa/coconut --data prosqa/test.json --search-frontier frontier.json

The server answers only its own routes, and only requests whose Host header names this machine (localhost,
127.0.0.1, [::1]), the ``--host`` it listens on or a ``--trusted-host``: a page on another site cannot read the
API through DNS rebinding. A malformed request gets a 4xx with a JSON error, never a traceback.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from coconav.common import check_output_file, write_json_atomic
from coconav.data.readers import load_examples
from coconav.data.records import Example
from coconav.data.scoring import score
from coconav.data.splits import load_splits
from coconav.decode.generate import check_multi
from coconav.errors import InputError
from coconav.eval.evaluate import QuestionResult, aggregate
from coconav.eval.search import SearchFrontier, graph_of, node_probabilities, node_token_ids, search_frontier
from coconav.inference import CoconavModel
from coconav.io.checkpoint import latest_checkpoint
from coconav.rl.rewards import episode_return, format_ok

HOST = "127.0.0.1"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # always trusted in the Host header
WILDCARD_HOSTS = ("0.0.0.0", "[::]")  # listen on every address: a name no request carries
MAX_QUESTION_CHARS = 1000
MAX_REQUEST_BYTES = 64 * 1024  # a typed question is at most MAX_QUESTION_CHARS characters
QUESTION_ID_RE = re.compile(r"[0-9]{1,9}")  # ASCII digits only: str.isdigit() accepts '²' and '١'
HOST_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")  # a host name or an IPv4 address
# A Host header: a name or IPv4 address, or an IPv6 address in brackets; an optional port.
HOST_HEADER_RE = re.compile(r"(?P<name>[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")
DATA_MARKER = "/*COCONAV_DATA*/null"
DIGITS = 5  # floats on the page are rounded to this many decimals


@dataclass
class Projection:
    """A 2-D PCA basis of thought states. Shape: mean [D], components [D, 2]."""

    mean: torch.Tensor
    components: torch.Tensor

    def apply(self, states: torch.Tensor) -> list[list[float]]:
        """Shape: states [S, D] -> S points [x, y]."""
        xy = (states.float() - self.mean) @ self.components
        return [[round(float(x), DIGITS), round(float(y), DIGITS)] for x, y in xy]


def fit_projection(states: list[torch.Tensor]) -> Projection | None:
    """The two principal directions of all states [S_i, D] (None when there are fewer than 2)."""
    stacked = torch.cat([s.float() for s in states if len(s)], dim=0) if any(len(s) for s in states) else None
    if stacked is None or stacked.shape[0] < 2:
        return None
    mean = stacked.mean(0)
    _, _, vh = torch.linalg.svd(stacked - mean, full_matrices=False)
    components = vh[:2].T  # [D, 2] (fewer columns when D < 2 is impossible for a real model)
    if components.shape[1] < 2:
        components = torch.cat([components, torch.zeros_like(components)], dim=1)
    return Projection(mean=mean, components=components)


def rounded(value):
    """Floats rounded to DIGITS decimals, recursively (the page's numbers; the API's, rounded)."""
    if isinstance(value, float):
        return round(value, DIGITS)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    return value


@dataclass
class Explorer:
    """A checkpoint, its evaluated questions with their traces, and the projection of their states."""

    model: CoconavModel
    checkpoint: str
    data: str
    num_trajectories: int = 1  # K trajectories per question (K > 1: a navigator checkpoint)
    fusion: str = "majority"  # how K > 1 trajectories fuse into one answer (coconav.eval.evaluate.fuse)
    questions: list[dict] = field(default_factory=list)
    projection: Projection | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reward(self, answer: str, correct: bool | None, num_thoughts: int, new_tokens: int) -> float | None:
        """The navigator's episode return of one trajectory (None without a reference answer)."""
        if correct is None:
            return None
        ppo = self.model.config.ppo
        return float(
            episode_return(
                torch.tensor([float(bool(correct))]),
                format_ok([answer]),
                torch.tensor([num_thoughts]),
                ppo.thought_cost,
                ppo.format_coef,
                torch.tensor([new_tokens]),
                ppo.token_cost,
            )[0]
        )

    def generate(self, examples: list[Example], top_k: int) -> list[dict]:
        """The API's records for `examples`: one trajectory dict each (K = 1), or per question the fused answer
        and its K trajectories (answer types grouped: the vote compares answers by type)."""
        questions = [ex.question for ex in examples]
        if self.num_trajectories == 1:
            return self.model.generate(questions, return_trajectories=True, top_k=top_k, return_states=True)
        records: list[dict | None] = [None] * len(examples)
        for kind in dict.fromkeys(ex.answer_type for ex in examples):
            index = [i for i, ex in enumerate(examples) if ex.answer_type == kind]
            out = self.model.generate(
                [questions[i] for i in index],
                return_trajectories=True,
                top_k=top_k,
                return_states=True,
                num_trajectories=self.num_trajectories,
                fusion=self.fusion,
                answer_type=kind,
            )
            for i, rec in zip(index, out):
                records[i] = rec
        return records

    def trace(self, examples: list[Example], top_k: int = 5) -> tuple[list[dict], list[list[torch.Tensor]]]:
        """Per example, its question-level record (fused answer, agreement, correct; K > 1 only) and trajectory
        records (answer, correct, reward, steps, memory reads; and weight for K > 1), and each trajectory's states."""
        with self.lock:  # one generation at a time: the server answers from several threads
            records = self.generate(examples, top_k)
        out, states = [], []
        for rec, ex in zip(records, examples):
            trajs = rec["trajectories"] if self.num_trajectories != 1 else [rec]
            for t in trajs:
                t["correct"] = score(t["answer"], ex) if ex.answer else None
                t["reward"] = self.reward(t["answer"], t["correct"], t["num_thoughts"], t["new_tokens"])
            states.append([t.pop("states") for t in trajs])
            self.read_nodes(ex, trajs, states[-1])
            if self.num_trajectories == 1:
                out.append({"trajectories": trajs})
            else:
                fused = {k: v for k, v in rec.items() if k != "trajectories"}
                fused["correct"] = score(rec["answer"], ex) if ex.answer else None
                out.append({"fused": fused, "trajectories": trajs})
        return out, states

    def read_nodes(self, example: Example, trajectories: list[dict], states: list[torch.Tensor]) -> None:
        """For a question with a graph: add to each step the LM head's probability of each node's word
        (`node_probs`, in the graph's node order; None for a word the tokenizer does not know)."""
        graph = graph_of(example)
        if graph is None:
            return
        ids = node_token_ids(self.model.lm.tokenizer, graph.symbols)
        for traj, s in zip(trajectories, states):
            if not len(s):
                continue
            probs = node_probabilities(self.model.lm, s, ids)  # [n+1, N]
            for step, row in zip(traj["steps"], probs.tolist()):
                step["node_probs"] = [None if math.isnan(p) else p for p in row]

    def project(self, trajectories: list[dict], states: list[torch.Tensor]) -> None:
        """Add each step's 2-D point (`xy`) under the explorer's projection."""
        for traj, s in zip(trajectories, states):
            points = self.projection.apply(s) if self.projection is not None and len(s) else [None] * len(traj["steps"])
            for step, xy in zip(traj["steps"], points):
                step["xy"] = xy

    def evaluate(self, examples: list[Example], batch_size: int) -> None:
        """Answer and trace every example (in batches), fit the projection over every trajectory's states,
        fill `questions`."""
        records, states = [], []
        for lo in range(0, len(examples), batch_size):
            r, s = self.trace(examples[lo : lo + batch_size])
            records += r
            states += s
        self.projection = fit_projection([x for per in states for x in per])
        for rec, s in zip(records, states):
            self.project(rec["trajectories"], s)
        self.questions = [question_record(i, ex, rec) for i, (ex, rec) in enumerate(zip(examples, records))]

    def ask(self, text: object) -> dict:
        """Answer a typed question with the explorer's K (no reference answer: correctness and reward are None)."""
        if not isinstance(text, str):
            raise InputError(f"the question must be a string, got {type(text).__name__}")
        if not text.strip():
            raise InputError("the question is empty: type a question")
        if len(text) > MAX_QUESTION_CHARS:
            raise InputError(f"the question has {len(text)} characters, more than the limit of {MAX_QUESTION_CHARS}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # JSON may carry a lone surrogate ("\ud800"), which no tokenizer encodes
            raise InputError("the question is not valid Unicode text (a lone surrogate)") from None
        ex = Example(question=text.strip(), steps=(), answer="", difficulty=0)
        records, states = self.trace([ex])
        self.project(records[0]["trajectories"], states[0])
        return question_record(None, ex, records[0])

    def summary(self) -> dict:
        """Accuracy and thoughts (overall and by difficulty), through the evaluation's own aggregate: the
        question's answer (K > 1: the fused one), thoughts, tokens and passes summed over its trajectories
        (as `coconav eval --num-trajectories K` counts them)."""
        results = []
        for q in self.questions:
            trajs = q["trajectories"]
            passes = q["forward_passes"] if "forward_passes" in q else trajs[0]["forward_passes"]
            results.append(
                QuestionResult(
                    question=q["question"],
                    reference=q["reference"],
                    completion=q["answer"],
                    correct=bool(q["correct"]),
                    difficulty=q["difficulty"],
                    num_thoughts=q["num_thoughts"],
                    new_tokens=sum(t["new_tokens"] for t in trajs),
                    forward_passes=passes,
                )
            )
        return rounded(aggregate(results, 0.0).summary())

    def meta(self) -> dict:
        m = self.model
        return {
            "checkpoint": self.checkpoint,
            "data": self.data,
            "mode": m.mode,
            "navigator": m.navigator is not None,
            "num_trajectories": self.num_trajectories,
            "fusion": self.fusion if self.num_trajectories != 1 else None,
            "thoughts": None if m.navigator is not None else m.default_thoughts(),
        }

    def page_data(self, full: bool) -> dict:
        """The page's data: meta, summary and the questions (full records, or the list's fields only)."""
        questions = self.questions if full else [listing(q) for q in self.questions]
        return {"meta": self.meta(), "summary": self.summary(), "questions": questions}


def question_record(qid: int | None, ex: Example, record: dict) -> dict:
    """One question on the page: its fields, its answer and outcome (K = 1: the trajectory's; K > 1: the fused
    answer, agreement and passes, with thoughts summed over the trajectories), and every trajectory."""
    trajectories = record["trajectories"]
    first = trajectories[0]
    graph = graph_of(ex)
    if "fused" not in record:
        head = {"answer": first["answer"], "correct": first["correct"], "num_thoughts": first["num_thoughts"]}
    else:
        fused = record["fused"]
        head = {
            "answer": fused["answer"],
            "correct": fused["correct"],
            "num_thoughts": sum(t["num_thoughts"] for t in trajectories),
            "agreement": fused["agreement"],
            "fusion": fused["fusion"],
            "forward_passes": fused["forward_passes"],
        }
    return rounded(
        {
            "id": qid,
            "question": ex.question,
            "reference": ex.answer,
            "difficulty": ex.difficulty,
            **head,
            **({"graph": graph.to_json(ex.steps)} if graph is not None else {}),
            "trajectories": trajectories,
        }
    )


def listing(q: dict) -> dict:
    """A question's fields for the list and the filters, and its states' 2-D points (per trajectory, per step)."""
    return {
        **{k: q[k] for k in ("id", "question", "difficulty", "correct", "num_thoughts")},
        "points": [[s["xy"] for s in t["steps"]] for t in q["trajectories"]],
    }


def load_questions(model: CoconavModel, data: str, max_questions: int | None) -> list[Example]:
    """The checkpoint's test/validation split, or a data file (as `coconav eval --data`)."""
    cfg = model.config
    if data in ("test", "validation"):
        examples = getattr(load_splits(cfg.data, cfg.seed), data)
    else:
        examples = load_examples(data, steps=cfg.data.gsm8k_steps)
    examples = examples[:max_questions] if max_questions else examples
    if not examples:
        raise InputError(f"no questions to explore in {data!r}")
    for ex in examples:  # a malformed graph is refused before any question is answered
        graph_of(ex)
    return examples


def build(
    checkpoint: str | Path,
    data: str = "test",
    num_trajectories: int = 1,
    max_questions: int | None = None,
    batch_size: int | None = None,
    fusion: str = "majority",
) -> Explorer:
    """Load the checkpoint and evaluate (with traces, K trajectories per question) the questions of `data`."""
    folder = latest_checkpoint(checkpoint)
    model = CoconavModel.from_pretrained(folder)
    if num_trajectories != 1:
        if model.navigator is None:
            raise InputError(
                f"--num-trajectories {num_trajectories} needs a navigator checkpoint ({folder} has no navigator)"
            )
        check_multi(num_trajectories, fusion, model.navigator.cfg.max_trajectories)
        if isinstance(num_trajectories, str):
            raise InputError("--num-trajectories must be an integer for the explorer (one K for every question)")
    explorer = Explorer(
        model=model, checkpoint=str(folder), data=data, num_trajectories=num_trajectories, fusion=fusion
    )
    explorer.evaluate(load_questions(model, data, max_questions), batch_size or model.config.eval.batch_size)
    return explorer


def page(data: dict | None = None) -> str:
    """The page (HTML with inline JS and CSS). With `data` inlined it needs no server."""
    html = resources.files("coconav.recipes").joinpath("explorer.html").read_text(encoding="utf-8")
    inline = "null" if data is None else json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return html.replace(DATA_MARKER, inline)


def write_static(explorer: Explorer, out: str | Path) -> Path:
    """Write the page with every evaluated question inlined: one self-contained file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page(explorer.page_data(full=True)), encoding="utf-8")
    return out


def host_name(host: str) -> str:
    """A host as a Host header names it: lower case, an IPv6 address compressed in brackets ('::1' -> '[::1]')."""
    name = host.strip().lower() if isinstance(host, str) else ""
    bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    if ":" in bare:
        try:
            return f"[{ipaddress.IPv6Address(bare)}]"
        except ValueError:
            pass
    elif bare == name and HOST_NAME_RE.fullmatch(name):
        return name
    raise InputError(f"not a host name or address: {str(host)[:60]!r} (e.g. localhost, 192.168.1.5, ::1)")


def trusted_hosts(host: str = HOST, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The names a request's Host header may carry: this machine's, the listening `host` (unless it is a
    wildcard such as 0.0.0.0) and `extra` (--trusted-host), as host_name writes them."""
    names = dict.fromkeys([*LOOPBACK_HOSTS, host_name(host), *(host_name(h) for h in extra)])
    return tuple(n for n in names if n not in WILDCARD_HOSTS)


def host_allowed(header: str, trusted: Sequence[str]) -> bool:
    """Whether a Host header ('127.0.0.1:8765', '[::1]:8765', 'localhost') names one of `trusted` (port ignored).
    Flask's TRUSTED_HOSTS cuts each trusted name at its first ':', so it cannot name [::1]: matched here."""
    match = HOST_HEADER_RE.fullmatch(header.lower())
    if match is None:
        return False
    try:
        return host_name(match["name"]) in trusted
    except InputError:
        return False


def create_app(explorer: Explorer, trusted: Sequence[str] = LOOPBACK_HOSTS):
    """The Flask app: the page and a JSON API, nothing else (no static folder). Requests whose Host header is
    not in `trusted` are refused (DNS rebinding). Every error is JSON {"error": message} with a 4xx status."""
    from flask import Flask, Response, jsonify, request
    from werkzeug.exceptions import HTTPException

    app = Flask("coconav.explore", static_folder=None)
    app.json.sort_keys = False
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES

    def error(message: str, status: int):
        return jsonify({"error": message}), status

    @app.before_request
    def check_host():
        header = request.headers.get("Host", "")
        if not host_allowed(header, trusted):
            return error(
                f"untrusted Host header {header[:60]!r}: the explorer answers {', '.join(trusted)} "
                "(add a name with --trusted-host)",
                400,
            )
        return None

    @app.get("/")
    def index():
        return Response(page(), mimetype="text/html")

    @app.get("/api/questions")
    def questions():
        return jsonify(explorer.page_data(full=False))

    @app.get("/api/question/<qid>")
    def question(qid: str):
        if not QUESTION_ID_RE.fullmatch(qid) or int(qid) >= len(explorer.questions):
            return error(f"unknown question id {qid[:40]!r}: ids run from 0 to {len(explorer.questions) - 1}", 404)
        return jsonify(explorer.questions[int(qid)])

    @app.post("/api/ask")
    def ask():
        try:
            body = request.get_json(silent=True)
        except RecursionError:  # JSON nested deeper than Python's parser goes
            body = None
        if not isinstance(body, dict) or "question" not in body:
            return error('send JSON {"question": "..."}', 400)
        try:
            return jsonify(explorer.ask(body["question"]))
        except InputError as err:
            return error(str(err), 400)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        return error(f"{err.code} {err.name}: {request.path[:100]}", err.code or 400)

    @app.errorhandler(Exception)
    def unexpected(err: Exception):  # never a traceback on the page; the server keeps running
        return error(f"internal error: {type(err).__name__}", 500)

    return app


def make_server(explorer: Explorer, port: int, host: str = HOST, trusted: Sequence[str] = ()):
    """A threaded WSGI server on `host` (default 127.0.0.1: this machine only) that trusts the Host headers of
    trusted_hosts(host, trusted)."""
    from werkzeug.serving import make_server as werkzeug_server

    if not 0 <= port <= 65535:
        raise InputError(f"--port must be in 0..65535, got {port}")
    allowed = trusted_hosts(host, trusted)
    address = host_name(host).strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as probe:  # werkzeug exits the process on a busy port: check first
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as err:
            raise InputError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return werkzeug_server(address, port, create_app(explorer, allowed), threaded=True)


def search_analysis(model: CoconavModel, examples: list[Example], batch_size: int = 32) -> SearchFrontier:
    """The frontier analysis (coconav.eval.search) of the model's thoughts (its own thought plan, K = 1) on the
    examples that carry a graph."""
    with_graph = [(ex, g) for ex in examples if (g := graph_of(ex)) is not None]
    items = []
    for lo in range(0, len(with_graph), batch_size):
        chunk = with_graph[lo : lo + batch_size]
        records = model.generate([ex.question for ex, _ in chunk], return_trajectories=True, return_states=True)
        for record, (_, graph) in zip(records, chunk):
            ids = node_token_ids(model.lm.tokenizer, graph.symbols)
            items.append((node_probabilities(model.lm, record["states"], ids), graph))
    return search_frontier(items)


def search_report(
    checkpoint: str | Path, data: str, max_questions: int | None = None, batch_size: int | None = None
) -> dict:
    """The frontier analysis of a checkpoint on the graph questions of `data` (a ProsQA file), as JSON."""
    folder = latest_checkpoint(checkpoint)
    model = CoconavModel.from_pretrained(folder)
    examples = load_questions(model, data, max_questions)
    graphs = sum(graph_of(ex) is not None for ex in examples)
    if not graphs:
        raise InputError(f"no question in {data!r} carries a graph (idx_to_symbol, edges, root, target)")
    analysis = search_analysis(model, examples, batch_size or model.config.eval.batch_size)
    thoughts = None if model.navigator is not None else model.default_thoughts()  # None: the navigator halts
    return {"checkpoint": str(folder), "data": data, "questions": graphs, "thoughts": thoughts, **analysis.to_json()}


def print_search(report: dict) -> None:
    """The frontier analysis as a small table: per step, the mean probability of a frontier node and of the rest."""
    print(f"{'step':>4} {'frontier depth':>14} {'frontier node p':>15} {'other node p':>12} {'frontier mass':>13}")
    for s in report["steps"]:
        cells = [s["frontier_mean"], s["other_mean"], s["frontier_mass"]]
        f, o, m = ("-" if v is None else f"{v:.4f}" for v in cells)
        print(f"{s['step']:>4} {s['frontier_depth']:>14} {f:>15} {o:>12} {m:>13}")


def run(
    checkpoint: str | Path,
    data: str = "test",
    num_trajectories: int = 1,
    port: int = 8765,
    static: str | Path | None = None,
    max_questions: int | None = None,
    fusion: str = "majority",
    host: str = HOST,
    trusted: Sequence[str] = (),
    search: str | Path | None = None,
) -> None:
    """`coconav explore`: serve the page until interrupted, write the static file, or (`search`) write the frontier
    analysis of the graph questions as JSON."""
    for flag, path in (("--static", static), ("--search-frontier", search)):
        if path is not None:
            check_output_file(path, flag)
    trusted_hosts(host, trusted)  # a malformed --host or --trusted-host is refused before the questions run
    if search is not None:
        if num_trajectories != 1 or static is not None:
            raise InputError(
                "--search-frontier reads one trajectory per question: drop --num-trajectories and --static"
            )
        report = search_report(checkpoint, data, max_questions)
        Path(search).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(search, report)
        print_search(report)
        print(f"wrote {search} ({report['questions']} questions with a graph)")
        return
    explorer = build(checkpoint, data, num_trajectories, max_questions, fusion=fusion)
    if static is not None:
        print(f"wrote {write_static(explorer, static)} ({len(explorer.questions)} questions)")
        return
    server = make_server(explorer, port, host, trusted)
    shown = host_name(host) if host_name(host) not in WILDCARD_HOSTS else HOST
    if host_name(host) not in LOOPBACK_HOSTS:
        print(f"coconav explorer: listening on {host}: other machines that reach it can use the page and the model")
    print(
        f"coconav explorer: http://{shown}:{server.server_port}/  ({len(explorer.questions)} questions; Ctrl-C stops)",
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
