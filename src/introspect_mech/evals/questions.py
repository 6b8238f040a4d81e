"""Evaluation question files: the EM YAML format and the self-awareness question format.

EM format (emergent-misalignment `evaluation/*.yaml`): a list of entries with `id`, `paraphrases`
(list of strings), optional `system`, `samples_per_paraphrase`, `judge`, `judge_prompts`
({metric: template with {question} and {answer}}), `type`.
Self-awareness format (behavioral-self-awareness): entries with `name`, `question_paraphrases`,
`question_type`, optional `title`.

Any problem -- a YAML syntax error, a missing or mistyped field -- raises `QuestionFileError`
whose message names the file, the line and the field, before any sampling starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class QuestionFileError(ValueError):
    """A malformed question file; the message is `file:line: field: problem`."""


@dataclass
class Question:
    id: str
    paraphrases: list[str]
    system: str | None = None
    samples_per_paraphrase: int = 1
    judge_prompts: dict[str, str] = field(default_factory=dict)
    judge: str | None = None
    type: str | None = None
    source: str = ""  # "file:line"

    def prompts(self, n: int | None = None) -> list[dict[str, Any]]:
        """One prompt dict per paraphrase, ready for `sample(..., n=n or samples_per_paraphrase)`.

        Args:
            n: not used here (the caller passes it to `sample`).

        Returns:
            `{"id": "qid/k", "messages"}` dicts.
        """
        out = []
        for k, text in enumerate(self.paraphrases):
            msgs = ([{"role": "system", "content": self.system}] if self.system else [])
            msgs.append({"role": "user", "content": text})
            out.append({"id": f"{self.id}/{k}", "messages": msgs})
        return out


def _compose(path: Path) -> tuple[yaml.Node | None, Any]:
    text = path.read_text(encoding="utf-8")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else "?"
        raise QuestionFileError(f"{path}:{line}: YAML syntax error: {e.problem or e}") from None
    finally:
        loader.dispose()
    return node, data


def _field_line(entry_node: yaml.Node, key: str) -> int:
    if isinstance(entry_node, yaml.MappingNode):
        for k, v in entry_node.value:
            if getattr(k, "value", None) == key:
                return v.start_mark.line + 1
    return entry_node.start_mark.line + 1


def load_questions(path: str | os.PathLike) -> list[Question]:
    """Load an EM-format or self-awareness-format question file (see the module docstring).

    Args:
        path: a YAML question file.

    Returns:
        The `Question`s.

    Raises:
        QuestionFileError: naming the file, line and field at fault, before any work.
    """
    path = Path(path)
    if not path.exists():
        raise QuestionFileError(f"{path}:0: file not found")
    node, data = _compose(path)
    if not isinstance(data, list) or not isinstance(node, yaml.SequenceNode):
        line = node.start_mark.line + 1 if node is not None else 1
        raise QuestionFileError(f"{path}:{line}: top level: expected a list of questions")
    out: list[Question] = []
    seen: dict[str, int] = {}
    for entry_node, entry in zip(node.value, data):
        line = entry_node.start_mark.line + 1
        where = lambda key: f"{path}:{_field_line(entry_node, key)}"  # noqa: E731
        if not isinstance(entry, dict):
            raise QuestionFileError(f"{path}:{line}: entry: expected a mapping, got {type(entry).__name__}")
        id_key = "id" if "id" in entry else "name"
        par_key = "paraphrases" if "paraphrases" in entry or id_key == "id" else "question_paraphrases"
        qid = entry.get(id_key)
        if not isinstance(qid, (str, int)) or str(qid) == "":
            raise QuestionFileError(f"{where(id_key)}: id: missing or not a string")
        qid = str(qid)
        if qid in seen:
            raise QuestionFileError(f"{where(id_key)}: id: duplicate {qid!r} (first at line {seen[qid]})")
        seen[qid] = line
        paras = entry.get(par_key)
        if not isinstance(paras, list) or not paras or not all(isinstance(p, str) and p.strip() for p in paras):
            raise QuestionFileError(f"{where(par_key)}: {par_key}: expected a non-empty list of strings ({qid})")
        system = entry.get("system")
        if system is not None and not isinstance(system, str):
            raise QuestionFileError(f"{where('system')}: system: expected a string ({qid})")
        spp = entry.get("samples_per_paraphrase", 1)
        if not isinstance(spp, int) or isinstance(spp, bool) or spp < 1:
            raise QuestionFileError(f"{where('samples_per_paraphrase')}: samples_per_paraphrase: expected a positive integer ({qid})")
        jp = entry.get("judge_prompts", {}) or {}
        if not isinstance(jp, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in jp.items()):
            raise QuestionFileError(f"{where('judge_prompts')}: judge_prompts: expected a mapping of name -> template ({qid})")
        for name, tpl in jp.items():
            if "{answer}" not in tpl:
                raise QuestionFileError(f"{where('judge_prompts')}: judge_prompts.{name}: template has no {{answer}} slot ({qid})")
        out.append(Question(
            id=qid, paraphrases=[p.strip("\n") for p in paras], system=system, samples_per_paraphrase=spp,
            judge_prompts=dict(jp), judge=entry.get("judge"), type=entry.get("type", entry.get("question_type")),
            source=f"{path}:{line}",
        ))
    return out


def fill_judge_prompt(template: str, question: str, answer: str) -> str:
    """Fill `{question}` / `{answer}` without interpreting other braces in the template.

    Args:
        template: the judge prompt.
        question: the question text.
        answer: the model's answer.

    Returns:
        The filled prompt.
    """
    return template.replace("{question}", question).replace("{answer}", answer)
