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
serve the JSON API and the page (Flask, threaded, 127.0.0.1 only), or write the page with the data
inlined. The data holds a list of trajectories per question: one, or with ``--num-trajectories K`` (a
navigator checkpoint) K, each with its own trace, answer, correctness, reward and fusion weight, under
the question's fused answer and agreement (``CoconavModel.generate(..., num_trajectories=K)``).
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
from coconav.decode.generate import check_multi
from coconav.errors import ConfigError, InputError
from coconav.eval.evaluate import QuestionResult, aggregate
from coconav.inference import CoconavModel
from coconav.rl.rewards import episode_return, format_ok

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
            if self.num_trajectories == 1:
                out.append({"trajectories": trajs})
            else:
                fused = {k: v for k, v in rec.items() if k != "trajectories"}
                fused["correct"] = score(rec["answer"], ex) if ex.answer else None
                out.append({"fused": fused, "trajectories": trajs})
        return out, states

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
        if not isinstance(text, str) or not text.strip():
            raise InputError("the question is empty: type a question")
        if len(text) > MAX_QUESTION_CHARS:
            raise InputError(f"the question has {len(text)} characters, more than the limit of {MAX_QUESTION_CHARS}")
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


def run(
    checkpoint: str | Path,
    data: str = "test",
    num_trajectories: int = 1,
    port: int = 8765,
    static: str | Path | None = None,
    max_questions: int | None = None,
    fusion: str = "majority",
) -> None:
    """`coconav explore`: serve the page until interrupted, or write the static file."""
    explorer = build(checkpoint, data, num_trajectories, max_questions, fusion=fusion)
    if static is not None:
        print(f"wrote {write_static(explorer, static)} ({len(explorer.questions)} questions)")
        return
    server = make_server(explorer, port)
    print(
        f"coconav explorer: http://{HOST}:{server.server_port}/  ({len(explorer.questions)} questions; Ctrl-C stops)",
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
