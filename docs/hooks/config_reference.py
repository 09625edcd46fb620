"""MkDocs hook: the configuration reference, rendered from coconav/config.py at build time.

Every field of ``RunConfig`` and its sections has a type, a default and a docstring (the string
literal right under the field, as in ``coconav/config.py``). This hook reads the docstrings from the
source with ``ast``, the types and defaults from ``dataclasses.fields``, and replaces the marker
``<!-- config-reference -->`` in ``docs/reference/config.md`` with one table per section, so the
documentation of a field is written once, in the code.

    mkdocs build --strict -d /tmp/site      # mkdocs.yml: hooks: [docs/hooks/config_reference.py]
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import logging
import textwrap
import types
import typing

MARKER = "<!-- config-reference -->"
PAGE = "reference/config.md"
log = logging.getLogger("mkdocs.hooks.config_reference")  # a warning fails `mkdocs build --strict`


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its docstring (the string literal after the annotated assignment), from the source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:] + [None]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            doc = after.value if isinstance(after, ast.Expr) else None
            if isinstance(doc, ast.Constant) and isinstance(doc.value, str):
                docs[node.target.id] = inspect.cleandoc(doc.value)
    return docs


def section_class(tp: typing.Any) -> type | None:
    """The config dataclass inside a field's type (``NavigatorConfig | None`` -> ``NavigatorConfig``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return inner[0] if inner else None
    return None


def type_name(tp: typing.Any) -> str:
    """A short, readable type: Literal values as their choices, Optional as '... | None'."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(a) for a in typing.get_args(tp))}]"
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        if dataclasses.is_dataclass(value):
            return "(section)"
    else:
        return "(required)"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]  # as written in YAML
    return repr(value)


def cell(text: str) -> str:
    """Markdown-table-safe text on one line: outside `code` spans, pipes, < and > escaped (a docstring's
    <bot> would otherwise be read as an HTML tag); inside them nothing (the table reads them whole)."""
    parts = " ".join(text.split()).split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def render(cls: type, prefix: str = "") -> list[str]:
    """The tables of `cls` (a section) and of its nested sections, depth first."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    title = f"`{prefix[:-1]}`" if prefix else "top level"
    lines = [
        f"## {title}",
        "",
        cell(inspect.getdoc(cls) or ""),
        "",
        "| key | type | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    nested = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        sub = section_class(tp)
        doc = docs.get(f.name, "")
        if not doc and sub is None:
            log.warning(f"coconav/config.py: {cls.__name__}.{f.name} has no docstring (the line under the field)")
        if sub is not None:
            nested.append((sub, f"{prefix}{f.name}."))
            doc = doc or (inspect.getdoc(sub) or "")
            doc = f"{doc} See [`{prefix}{f.name}`](#{(prefix + f.name).replace('.', '')})."
        code = [cell(f"`{text}`") for text in (prefix + f.name, type_name(tp), default_text(f))]
        lines.append(f"| {' | '.join(code)} | {cell(doc)} |")
    lines.append("")
    for sub, sub_prefix in nested:
        lines += render(sub, sub_prefix)
    return lines


def config_reference() -> str:
    from coconav.config import RunConfig

    return "\n".join(render(RunConfig))


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri == PAGE:
        if MARKER not in markdown:
            raise ValueError(f"docs/{PAGE} must hold the marker {MARKER}")
        return markdown.replace(MARKER, config_reference())
    return markdown
