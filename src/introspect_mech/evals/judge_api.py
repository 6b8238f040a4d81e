"""`APIJudge`: an OpenAI-compatible chat-completions endpoint as a judge, scored from the first token's top
logprobs (see `introspect_mech.evals.judges` for the convention), with an on-disk answer cache."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from ..paths import cache_dir as _cd
from ..scrub import looks_like_secret, register_secret_env, scrub_text
from .judge_prompts import LabelPrompt, _check_mode, _Modes, label_score, load_label_prompts
from .judge_result import MASS_TOL, JudgeError, JudgeResult, LabelResult, score_from_probs


def yes_no_from_top_logprobs(pairs: Sequence[tuple[str, float]]) -> tuple[float, float]:
    """(P(yes), P(no)) from an API's first-token top logprobs: tokens that, stripped and lower-cased,
    are "yes" / "no" (whole words are single tokens for GPT-4o-class tokenizers).

    Args:
        pairs: (token, natural-log probability) pairs.

    Returns:
        (P(yes), P(no)).

    Raises:
        JudgeError: a logprob is not finite or is positive.
    """
    reason = check_logprobs(pairs)
    if reason:
        raise JudgeError(reason)
    py = sum(math.exp(min(lp, 0.0)) for t, lp in pairs if t.strip().lower() == "yes")
    pn = sum(math.exp(min(lp, 0.0)) for t, lp in pairs if t.strip().lower() == "no")
    return py, pn


def labels_from_top_logprobs(pairs: Sequence[tuple[str, float]], labels: Sequence[str]) -> dict[str, float]:
    """P(label) per label from first-token top logprobs (an API cannot score later tokens).

    A token counts for a label when, stripped, it equals the label or is a prefix of it that is a prefix of
    no other label (so "TR" counts for "TRUE" beside "FALSE"; an ambiguous first token counts for none).

    Args:
        pairs: (token, natural-log probability) pairs.
        labels: the allowed labels.

    Returns:
        {label: probability}.
    """
    reason = check_logprobs(pairs)
    if reason:
        raise JudgeError(reason)
    out = dict.fromkeys(labels, 0.0)
    for t, lp in pairs:
        s = t.strip()
        if not s:
            continue
        exact = [l for l in labels if l == s]
        hits = exact or [l for l in labels if l.startswith(s)]
        if len(hits) == 1:
            out[hits[0]] += math.exp(min(lp, 0.0))
    return out


def parse_top_logprobs(body: Any) -> list[tuple[str, float]]:
    """(token, logprob) pairs of the first generated token from a chat-completions response body.

    Args:
        body: the parsed JSON response (`choices[0].logprobs.content[0]`); without `top_logprobs` the
            sampled token's own logprob is the one pair.

    Returns:
        The pairs, in the response's order.

    Raises:
        JudgeError: the body lacks that structure, or `top_logprobs` is empty (message starts "malformed").
    """
    try:
        content = body["choices"][0]["logprobs"]["content"]
        first = content[0]
        tops = first.get("top_logprobs") or [{"token": first["token"], "logprob": first["logprob"]}]
        pairs = [(str(t["token"]), float(t["logprob"])) for t in tops]
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise JudgeError(f"malformed chat-completions response (no choices[0].logprobs.content[0].top_logprobs): {type(e).__name__}: {e}") from None
    if not pairs:
        raise JudgeError("malformed chat-completions response: empty top_logprobs")
    return pairs


def check_logprobs(pairs: Sequence[tuple[str, float]]) -> str | None:
    """Why (token, logprob) pairs cannot be a distribution (non-finite or positive logprob), or None.

    Args:
        pairs: (token, natural-log probability) pairs.

    Returns:
        A one-line reason naming the first bad pair, or None when every logprob is finite and <= 0
        (within `MASS_TOL`).
    """
    for tok, lp in pairs:
        if not math.isfinite(lp):
            return f"judge returned a non-finite logprob ({lp!r}) for token {tok!r}"
        if lp > MASS_TOL:
            return f"judge returned logprob {lp!r} > 0 for token {tok!r} (not a probability)"
    return None


def probs_from_top_logprobs(pairs: Sequence[tuple[str, float]], lo: int = 0, hi: int = 100) -> dict[int, float]:
    """{integer answer in lo..hi: probability} from top-logprob pairs (non-number tokens dropped).

    Args:
        pairs: (token, natural-log probability) pairs; a token counts when, stripped of whitespace, it
            is an ASCII integer in lo..hi (equal numbers add up).
        lo: smallest answer kept (default 0).
        hi: largest answer kept (default 100).

    Returns:
        Probability per integer answer present among the tokens.

    Raises:
        JudgeError: a logprob is not finite or is positive (use `check_logprobs` to test first).
    """
    reason = check_logprobs(pairs)
    if reason:
        raise JudgeError(reason)
    out: dict[int, float] = {}
    for tok, lp in pairs:
        s = tok.strip()
        if s.isascii() and s.isdigit():
            k = int(s)
            if lo <= k <= hi:
                out[k] = out.get(k, 0.0) + math.exp(min(lp, 0.0))
    return out


class _Cache:
    """SQLite cache {key: json}; safe across threads and processes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._conn() as c:
            c.execute("CREATE TABLE IF NOT EXISTS judge (key TEXT PRIMARY KEY, value TEXT)")

    def _conn(self):
        return sqlite3.connect(self.path, timeout=30)

    def get(self, key: str) -> Any | None:
        with self._lock, self._conn() as c:
            row = c.execute("SELECT value FROM judge WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: Any) -> None:
        with self._lock, self._conn() as c:
            c.execute("INSERT OR REPLACE INTO judge (key, value) VALUES (?, ?)", (key, json.dumps(value)))


class APIJudge(_Modes):
    """OpenAI-compatible chat-completions judge (OpenAI, vLLM `serve`, Azure with `api_version`).

    Args:
        base_url: endpoint, e.g. "https://api.openai.com/v1", "http://localhost:8000/v1", or the
            Azure resource URL ("https://NAME.openai.azure.com") with `api_version`.
        model: model name (the deployment name on Azure).
        api_key_env: NAME of the environment variable holding the key; None for a server without
            authentication. A missing variable raises `JudgeError` naming it before any request.
        cache_dir: folder of the on-disk answer cache (default: the user cache).
        timeout: seconds per request.
        max_retries: SDK retries after a timeout, a connection error or HTTP 408/409/429/5xx
            (exponential backoff, honouring Retry-After); a malformed answer is retried as often.
        min_mass: see `score_from_probs`.
        top_logprobs: alternatives requested for the first token.
        max_workers: concurrent requests.
        api_version: Azure OpenAI API version (selects the `AzureOpenAI` client).
        system: optional system prompt.
        mode: "0-100" (the papers' scoring) or "label" (yes/no from the top logprobs).
        label_prompts: the label-mode prompts (default `load_label_prompts()`).

    Raises:
        JudgeError: `api_key_env` is not a variable name (e.g. a key itself), `timeout` is not a
            positive number, or `max_retries` is not an integer >= 0.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 cache_dir: str | os.PathLike | None = None, timeout: float = 60.0, max_retries: int = 5,
                 min_mass: float = 0.25, top_logprobs: int = 20, max_workers: int = 8,
                 api_version: str | None = None, system: str | None = None, mode: str = "0-100",
                 label_prompts: dict[str, LabelPrompt] | None = None):
        self.mode = _check_mode(mode)
        self.label_prompts = label_prompts if label_prompts is not None else load_label_prompts()

        if api_key_env is not None and (looks_like_secret(api_key_env) or not api_key_env.replace("_", "a").isalnum()):
            raise JudgeError("api_key_env must be the NAME of an environment variable holding the key; the value "
                             "given is not a variable name (it looks like a key itself, so it is not shown)")
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise JudgeError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not (isinstance(max_retries, int) and max_retries >= 0):
            raise JudgeError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        register_secret_env(api_key_env)  # its value is scrubbed from every description and message
        self.base_url = base_url.rstrip("/")
        self._shown_url = scrub_text(self.base_url)
        self.model_name, self.api_key_env = model, api_key_env
        self.timeout, self.max_retries = float(timeout), max_retries
        self.min_mass, self.top_logprobs, self.max_workers = min_mass, top_logprobs, max_workers
        self.api_version, self.system = api_version, system
        if cache_dir is None:
            cache_dir = _cd() / "judge_cache"
        self.cache = _Cache(Path(cache_dir) / "api_judge.sqlite")
        self.n_requests = 0  # requests started by this object (cache hits send none; SDK retries not counted)
        self._count_lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {"kind": "APIJudge", "base_url": self._shown_url, "model": self.model_name,
                "api_key_env": self.api_key_env, "top_logprobs": self.top_logprobs, "min_mass": self.min_mass,
                "temperature": 0, "max_tokens": 1, "api_version": self.api_version, "timeout": self.timeout,
                "max_retries": self.max_retries, "client": "openai", **self._mode_desc()}

    def fingerprint(self) -> str:
        """What identifies this judge's answers: endpoint, model name, API version, top_logprobs, system
        prompt, mass floor, mode (and label prompts). Hex SHA-256, 24 characters; never the key."""
        ident = {"kind": "api", "base_url": self._shown_url, "model": self.model_name, "api_version": self.api_version,
                 "top_logprobs": self.top_logprobs, "system": self.system, "min_mass": self.min_mass,
                 **self._mode_desc()}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]

    def _messages(self, prompt: str) -> list[dict[str, str]]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + [{"role": "user", "content": prompt}]

    def cache_key(self, prompt: str) -> str:
        """The on-disk cache key of one prompt's answer.

        Args:
            prompt: a filled judge prompt.

        Returns:
            sha256 hex digest of (base_url, model, top_logprobs, the request's messages incl. the system
            prompt); the API key is not part of it.
        """
        ident = json.dumps([self.base_url, self.model_name, self.top_logprobs, self._messages(prompt)])
        return hashlib.sha256(ident.encode()).hexdigest()

    def check_key(self) -> None:
        """Raise `JudgeError` now (before any work) when the key variable is missing."""
        self._key()

    def _key(self) -> str:
        if self.api_key_env is None:
            return "EMPTY"  # servers without auth (vLLM's default) ignore it
        key = os.environ.get(self.api_key_env, "")
        if not key.strip():
            raise JudgeError(f"environment variable {self.api_key_env} is not set: it must hold the API key for "
                             f"{self._shown_url} (set it, or use --api-key-env '' / api_key_env=None for a server without auth)")
        return key

    def _client(self):
        """A fresh SDK client (the key lives only as long as one `score` call)."""
        try:
            import openai
        except ImportError:
            raise JudgeError("APIJudge needs the openai package: pip install 'introspect-mech[api]'") from None
        kw = {"api_key": self._key(), "timeout": self.timeout, "max_retries": self.max_retries}
        if self.api_version:
            return openai.AzureOpenAI(azure_endpoint=self.base_url, api_version=self.api_version, **kw)
        return openai.OpenAI(base_url=self.base_url, **kw)

    def _request(self, client, prompt: str) -> Any:
        """One chat-completions call (the SDK retries transport errors); returns the parsed JSON body."""
        import openai

        with self._count_lock:
            self.n_requests += 1
        where = f"{self._shown_url} (model {self.model_name!r})"
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=self.model_name, messages=self._messages(prompt), max_tokens=1, temperature=0,
                logprobs=True, top_logprobs=self.top_logprobs)
        except openai.AuthenticationError as e:
            raise JudgeError(f"{where}: HTTP {e.status_code} unauthorized: the server rejected the key in "
                             f"${self.api_key_env}" if self.api_key_env else f"{where}: HTTP {e.status_code} "
                             "unauthorized: the server wants a key (give --api-key-env NAME)") from None
        except openai.APITimeoutError:
            raise JudgeError(f"{where}: no answer within the {self.timeout:g} s timeout on each of "
                             f"{self.max_retries + 1} attempts (raise --judge-timeout, or check the server)") from None
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e.__context__
            why = f"{type(cause).__name__}: {str(cause).splitlines()[0][:160]}" if cause and str(cause) else str(e)
            raise JudgeError(f"{where}: cannot connect after {self.max_retries + 1} attempts ({why})") from None
        except openai.APIStatusError as e:
            retried = e.status_code in (408, 409, 429) or e.status_code >= 500
            msg = str(getattr(e, "message", "") or "").splitlines()[0][:160] if getattr(e, "message", "") else ""
            raise JudgeError(f"{where}: HTTP {e.status_code} {msg}".rstrip() +
                             (f" after {self.max_retries + 1} attempts" if retried else " (not retried)")) from None
        text = raw.http_response.text
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise JudgeError(f"malformed chat-completions response: not JSON ({text[:80]!r})") from None

    def _result(self, pairs: Sequence[tuple[str, float]], metric: str | None) -> JudgeResult:
        if self.mode == "label":
            py, pn = yes_no_from_top_logprobs(pairs)
            return label_score(py, pn, yes_means=self._yes_means(metric), min_mass=self.min_mass)
        return score_from_probs(probs_from_top_logprobs(pairs), self.min_mass)

    def _cached_pairs(self, prompt: str) -> list[tuple[str, float]] | None:
        """The cached answer's top logprobs, or None (entries from before validation may hold NaN: ask again)."""
        hit = self.cache.get(self.cache_key(prompt))
        if hit is None:
            return None
        pairs = [(str(t), float(lp)) for t, lp in hit["top_logprobs"]]
        return None if check_logprobs(pairs) is not None else pairs

    def _cached(self, prompt: str, metric: str | None = None) -> JudgeResult | None:
        pairs = self._cached_pairs(prompt)
        if pairs is None:
            return None
        res = self._result(pairs, metric)
        return None if res.invalid else res

    def _request_pairs(self, client, prompt: str) -> list[tuple[str, float]] | str:
        """The answer's top logprobs from the endpoint (no cache), or the reason they are invalid."""
        last: JudgeError | None = None
        for _ in range(self.max_retries + 1):  # the SDK retries transport errors; this retries malformed bodies
            try:
                pairs = parse_top_logprobs(self._request(client, prompt))
            except JudgeError as e:
                if not str(e).startswith("malformed"):
                    raise
                last = e
                continue
            return check_logprobs(pairs) or pairs
        raise JudgeError(f"{self._shown_url}: {last} ({self.max_retries + 1} attempts)")

    def _put(self, prompt: str, pairs: list[tuple[str, float]]) -> None:
        self.cache.put(self.cache_key(prompt), {"top_logprobs": pairs, "judge": self.model_name, "time": time.time()})

    def _fetch_pairs(self, client, prompt: str) -> list[tuple[str, float]] | str:
        """The answer's top logprobs (cache first; valid answers are cached), or the reason they are invalid."""
        hit = self._cached_pairs(prompt)
        if hit is not None:
            return hit
        pairs = self._request_pairs(client, prompt)
        if not isinstance(pairs, str):
            self._put(prompt, pairs)
        return pairs

    def _fetch(self, client, prompt: str, metric: str | None = None) -> JudgeResult:
        hit = self._cached(prompt, metric)
        if hit is not None:
            return hit
        pairs = self._request_pairs(client, prompt)
        if isinstance(pairs, str):
            return JudgeResult(None, float("nan"), pairs)
        res = self._result(pairs, metric)
        if not res.invalid:
            self._put(prompt, pairs)
        return res

    def score(self, prompts: Sequence[str], *, metric: str | None = None) -> list[JudgeResult]:
        """Scores for `prompts` (cache first); invalid answers are None with a reason, never cached.

        Args:
            prompts: filled judge prompts (one user turn each), sent concurrently (`max_workers`).
            metric: the metric the prompts are for (label mode: sets the direction; default "yes" = high).

        Returns:
            One `JudgeResult` per prompt, in order.

        Raises:
            JudgeError: missing key variable (before any request), authentication, timeouts or
                connection failures after the retries, HTTP errors, repeatedly malformed bodies.
        """
        valid = [self._cached(p, metric) is not None for p in prompts]
        client = None if all(valid) else self._client()  # a missing key fails here, before any request

        def one(p: str) -> JudgeResult:
            return self._fetch(client, p, metric)

        return self._map(client, one, prompts)

    def _map(self, client: Any, one: Callable[[str], Any], prompts: Sequence[str]) -> list[Any]:
        """`one` over the prompts (`max_workers` threads), closing the client afterwards."""
        try:
            if self.max_workers <= 1 or len(prompts) <= 1:
                return [one(p) for p in prompts]
            with ThreadPoolExecutor(self.max_workers) as ex:
                return list(ex.map(one, prompts))
        finally:
            if client is not None:
                client.close()

    def classify(self, prompts: Sequence[str], labels: Sequence[str]) -> list[Any]:
        """Label-valued judge prompts (e.g. the deception files' TRUE / FALSE): P(label) from the first
        token's top logprobs (`labels_from_top_logprobs`), cached like `score`.

        Args:
            prompts: filled judge prompts.
            labels: the allowed labels.

        Returns:
            One `LabelResult` per prompt (label None when the labels' mass < `min_mass`, or when the
            answer was invalid).
        """
        todo = [self._cached_pairs(p) is None for p in prompts]
        client = self._client() if any(todo) else None

        def one(p: str) -> LabelResult:
            pairs = self._fetch_pairs(client, p)
            if isinstance(pairs, str):
                return LabelResult(None, {}, float("nan"))
            probs = labels_from_top_logprobs(pairs, labels)
            mass = float(sum(probs.values()))
            best = max(probs, key=lambda k: probs[k]) if mass >= self.min_mass else None
            return LabelResult(best, probs, mass)

        return self._map(client, one, prompts)
