"""The thought explorer: a local web page (or one self-contained HTML file) that shows what the
continuous thoughts do.

    coconav explore --checkpoint runs/demo/navigator --port 8765            # http://127.0.0.1:8765
    coconav explore --checkpoint runs/demo/coconut --data test --static explorer.html

Every number on the page comes from ``CoconavModel.generate(..., return_trajectories=True)`` (the
thought trace of coconav/trace.py) and is scored with the evaluation's rule (coconav.data.scoring)
and the navigator's reward (coconav.rewards.episode_return); the by-difficulty charts use
``coconav.evaluate.aggregate``, the numbers `coconav eval` reports. Steps: (1) load the checkpoint and
the questions; (2) answer them in batches with the trace; (3) project every state h_t onto the two
principal components of all of them (the paper's picture of thoughts as a search frontier); (4)
serve the JSON API and the page (Flask, threaded, 127.0.0.1 only), or write the page with the data
inlined. The data holds a list of trajectories per question: one today, K once multi-trajectory
rollouts exist.
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from coconav.checkpoint import latest_checkpoint
from coconav.data.readers import load_examples
from coconav.data.records import Example
from coconav.data.scoring import score
from coconav.data.splits import load_splits
from coconav.errors import ConfigError, InputError
from coconav.evaluate import QuestionResult, aggregate
from coconav.inference import CoconavModel
from coconav.rewards import episode_return, format_ok

HOST = "127.0.0.1"
MAX_QUESTION_CHARS = 1000
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
    questions: list[dict] = field(default_factory=list)
    projection: Projection | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def trace(self, examples: list[Example], top_k: int = 5) -> tuple[list[dict], list[torch.Tensor]]:
        """One trajectory record per example (answer, correct, reward, steps, memory reads) and its states."""
        ppo = self.model.config.ppo
        with self.lock:  # one generation at a time: the server answers from several threads
            records = self.model.generate([ex.question for ex in examples], return_trajectories=True, top_k=top_k,
                                          return_states=True)
        states = [r.pop("states") for r in records]
        for r, ex in zip(records, examples):
            r["correct"] = score(r["answer"], ex) if ex.answer else None
            correct = torch.tensor([float(bool(r["correct"]))])
            r["reward"] = float(episode_return(correct, format_ok([r["answer"]]), torch.tensor([r["num_thoughts"]]),
                                               ppo.thought_cost, ppo.format_coef, torch.tensor([r["new_tokens"]]),
                                               ppo.token_cost)[0])
        return records, states

    def project(self, trajectories: list[dict], states: list[torch.Tensor]) -> None:
        """Add each step's 2-D point (`xy`) under the explorer's projection."""
        for traj, s in zip(trajectories, states):
            points = self.projection.apply(s) if self.projection is not None and len(s) else [None] * len(traj["steps"])
            for step, xy in zip(traj["steps"], points):
                step["xy"] = xy

    def evaluate(self, examples: list[Example], batch_size: int) -> None:
        """Answer and trace every example (in batches), fit the projection, fill `questions`."""
        trajectories, states = [], []
        for lo in range(0, len(examples), batch_size):
            records, s = self.trace(examples[lo: lo + batch_size])
            trajectories += records
            states += s
        self.projection = fit_projection(states)
        self.project(trajectories, states)
        self.questions = [question_record(i, ex, [traj]) for i, (ex, traj) in enumerate(zip(examples, trajectories))]

    def ask(self, text: object) -> dict:
        """Answer a typed question (no reference answer, so correctness and reward are None)."""
        if not isinstance(text, str) or not text.strip():
            raise InputError("the question is empty: type a question")
        if len(text) > MAX_QUESTION_CHARS:
            raise InputError(f"the question has {len(text)} characters, more than the limit of {MAX_QUESTION_CHARS}")
        ex = Example(question=text.strip(), steps=(), answer="", difficulty=0)
        records, states = self.trace([ex])
        records[0]["correct"], records[0]["reward"] = None, None
        self.project(records, states)
        return question_record(None, ex, records)

    def summary(self) -> dict:
        """Accuracy and thoughts (overall and by difficulty), through the evaluation's own aggregate."""
        results = [QuestionResult(question=q["question"], reference=q["reference"],
                                  completion=q["trajectories"][0]["answer"], correct=bool(q["correct"]),
                                  difficulty=q["difficulty"], num_thoughts=q["num_thoughts"],
                                  new_tokens=q["trajectories"][0]["new_tokens"],
                                  forward_passes=q["trajectories"][0]["forward_passes"]) for q in self.questions]
        return rounded(aggregate(results, 0.0).summary())

    def meta(self) -> dict:
        m = self.model
        return {"checkpoint": self.checkpoint, "data": self.data, "mode": m.mode, "navigator": m.navigator is not None,
                "num_trajectories": 1, "thoughts": None if m.navigator is not None else m.default_thoughts()}

    def page_data(self, full: bool) -> dict:
        """The page's data: meta, summary and the questions (full records, or the list's fields only)."""
        questions = self.questions if full else [listing(q) for q in self.questions]
        return {"meta": self.meta(), "summary": self.summary(), "questions": questions}


def question_record(qid: int | None, ex: Example, trajectories: list[dict]) -> dict:
    """One question on the page: its fields, the first trajectory's outcome, and every trajectory."""
    first = trajectories[0]
    return rounded({"id": qid, "question": ex.question, "reference": ex.answer, "difficulty": ex.difficulty,
                    "correct": first["correct"], "num_thoughts": first["num_thoughts"], "trajectories": trajectories})


def listing(q: dict) -> dict:
    """A question's fields for the list and the filters, and its states' 2-D points (per trajectory, per step)."""
    return {**{k: q[k] for k in ("id", "question", "difficulty", "correct", "num_thoughts")},
            "points": [[s["xy"] for s in t["steps"]] for t in q["trajectories"]]}


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
    return examples


def build(checkpoint: str | Path, data: str = "test", num_trajectories: int = 1, max_questions: int | None = None,
          batch_size: int | None = None) -> Explorer:
    """Load the checkpoint and evaluate (with traces) the questions of `data`."""
    if num_trajectories != 1:
        raise InputError(f"--num-trajectories {num_trajectories}: the explorer shows one trajectory per question "
                         "(multi-trajectory answers: coconav eval --num-trajectories K)")
    folder = latest_checkpoint(checkpoint)
    model = CoconavModel.from_pretrained(folder)
    explorer = Explorer(model=model, checkpoint=str(folder), data=data)
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


def create_app(explorer: Explorer):
    """The Flask app: the page and a JSON API. Every error is JSON {"error": message} with a 4xx status."""
    from flask import Flask, Response, jsonify, request
    from werkzeug.exceptions import HTTPException

    app = Flask("coconav.explore")
    app.json.sort_keys = False

    def error(message: str, status: int):
        return jsonify({"error": message}), status

    @app.get("/")
    def index():
        return Response(page(), mimetype="text/html")

    @app.get("/api/questions")
    def questions():
        return jsonify(explorer.page_data(full=False))

    @app.get("/api/question/<qid>")
    def question(qid: str):
        if not qid.isdigit() or int(qid) >= len(explorer.questions):
            return error(f"unknown question id {qid[:40]!r}: ids run from 0 to {len(explorer.questions) - 1}", 404)
        return jsonify(explorer.questions[int(qid)])

    @app.post("/api/ask")
    def ask():
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or "question" not in body:
            return error('send JSON {"question": "..."}', 400)
        try:
            return jsonify(explorer.ask(body["question"]))
        except InputError as err:
            return error(str(err), 400)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        return error(f"{err.code} {err.name}: {request.path}", err.code or 400)

    @app.errorhandler(Exception)
    def unexpected(err: Exception):  # never a traceback on the page; the server keeps running
        return error(f"internal error: {type(err).__name__}", 500)

    return app


def make_server(explorer: Explorer, port: int, host: str = HOST):
    """A threaded WSGI server on 127.0.0.1 (any other host is refused: the page is for this machine only)."""
    from werkzeug.serving import make_server as werkzeug_server

    if host != HOST:
        raise ConfigError(f"the explorer serves on {HOST} only, not {host!r}")
    if not 0 <= port <= 65535:
        raise InputError(f"--port must be in 0..65535, got {port}")
    with socket.socket() as probe:  # werkzeug exits the process on a busy port: check first
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise InputError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return werkzeug_server(host, port, create_app(explorer), threaded=True)


def run(checkpoint: str | Path, data: str = "test", num_trajectories: int = 1, port: int = 8765,
        static: str | Path | None = None, max_questions: int | None = None) -> None:
    """`coconav explore`: serve the page until interrupted, or write the static file."""
    explorer = build(checkpoint, data, num_trajectories, max_questions)
    if static is not None:
        print(f"wrote {write_static(explorer, static)} ({len(explorer.questions)} questions)")
        return
    server = make_server(explorer, port)
    print(f"coconav explorer: http://{HOST}:{server.server_port}/  ({len(explorer.questions)} questions; Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
