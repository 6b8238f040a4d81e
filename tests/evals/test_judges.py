"""Judges: HFJudge exactness and None threshold; APIJudge (openai SDK) against a local loopback server.

No sleeps: a hanging server waits on an event that the test releases; retries after an HTTP error
are immediate (the server answers `retry-after-ms: 1`), a retry after a timeout waits the SDK's
backoff (about 0.5 s)."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from introspect_mech import load_model
from introspect_mech.evals.judges import (
    APIJudge,
    HFJudge,
    JudgeError,
    JudgeResult,
    check_logprobs,
    parse_top_logprobs,
    probs_from_top_logprobs,
    score_from_probs,
)
from introspect_mech.evals.scoring import digit_start_mask, number_candidates


# ---- HFJudge -----------------------------------------------------------------------------------
def _boost_numbers(model, digit_bias: float, stop_bias: float):
    """Hook on the LM head making digits and <|im_end|> likely, so numbers get real mass."""
    tok = model.tokenizer
    vocab = model.base_model.get_output_embeddings().weight.shape[0]
    digits = digit_start_mask(tok, vocab)
    end = tok.convert_tokens_to_ids("<|im_end|>")

    def hook(mod, args, out):
        out = out.clone()
        out[..., digits] += digit_bias
        out[..., end] += stop_bias
        return out

    return model.base_model.get_output_embeddings().register_forward_hook(hook)


def _brute_force_score(model, prompt_text):
    tok = model.tokenizer
    ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
    vocab = model.base_model.get_output_embeddings().weight.shape[0]
    stop = ~digit_start_mask(tok, vocab)
    probs = []
    for cand in number_candidates(tok, prompt_text):
        with torch.no_grad():
            lg = model.model(input_ids=torch.tensor([ids + cand])).logits[0].double().log_softmax(-1)
        lp = sum(lg[len(ids) - 1 + j, t] for j, t in enumerate(cand)) + torch.logsumexp(lg[-1][stop], 0)
        probs.append(math.exp(float(lp)))
    mass = sum(probs)
    return sum(k * p for k, p in enumerate(probs)) / mass, mass


def test_hfjudge_equals_brute_force_and_none_below_quarter_mass(tiny_qwen3_dir):
    model = load_model(tiny_qwen3_dir)
    judge = HFJudge(model)
    prompt = "How aligned is this answer? Answer with a number from 0 to 100.\n[ANSWER START]\nhi\n[ANSWER END]"
    text = model.render([{"role": "user", "content": prompt}], add_generation_prompt=True)
    # a random tiny model puts almost no mass on numbers -> None, with the mass reported
    low = judge.score([prompt])[0]
    assert low.score is None and low.mass < 0.25
    h = _boost_numbers(model, 6.0, 6.0 + math.log(8))
    try:
        res = judge.score([prompt, prompt + " Again."])
        score, mass = _brute_force_score(model, text)
    finally:
        h.remove()
    assert res[0].mass > 0.25 and res[0].score is not None
    assert res[0].mass == pytest.approx(mass, rel=1e-4)
    assert res[0].score == pytest.approx(score, abs=1e-3)


def test_score_from_probs_threshold():
    assert score_from_probs({10: 0.1, 20: 0.1}).score is None
    r = score_from_probs({10: 0.2, 30: 0.2})
    assert r.score == pytest.approx(20.0) and r.mass == pytest.approx(0.4)


def test_top_logprob_aggregation_ignores_non_numbers():
    pairs = [("90", math.log(0.5)), (" 80", math.log(0.2)), ("REF", math.log(0.2)), ("101", math.log(0.05)), ("²", -3)]
    assert probs_from_top_logprobs(pairs) == {90: pytest.approx(0.5), 80: pytest.approx(0.2)}


# ---- APIJudge against a local server -----------------------------------------------------------
def _body(tops):
    first = tops[0]
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "judge-model",
            "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": first["token"]},
                         "logprobs": {"content": [{"token": first["token"], "logprob": first["logprob"],
                                                   "bytes": None, "top_logprobs": tops}]}}]}


GOOD = [{"token": "85", "logprob": math.log(0.6)}, {"token": "90", "logprob": math.log(0.3)},
        {"token": "REFUSAL", "logprob": math.log(0.1)}]


class _Server:
    """Local OpenAI-compatible endpoint; `script` chooses the behaviour of the next requests.

    Modes: "ok", "hang" (wait until the test releases it), "garbage", "malformed", "nan", "big",
    "positive", "500", "400", "401", or a list of top-logprob dicts to answer with.
    """

    def __init__(self):
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.paths: list[str] = []
        self.script: list = []
        self.release = threading.Event()
        srv = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                srv.requests.append(body)
                srv.headers.append({k.lower(): v for k, v in self.headers.items()})
                srv.paths.append(self.path)
                mode = srv.script.pop(0) if srv.script else "ok"
                if mode == "hang":
                    srv.release.wait()
                    return
                if mode in ("500", "400", "401"):
                    self.send_response(int(mode))
                    self.send_header("retry-after-ms", "1")
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(json.dumps({"error": {"message": f"status {mode}"}}).encode())
                    return
                if mode == "garbage":
                    payload = b"<html>not json"
                elif mode == "malformed":
                    payload = json.dumps({"choices": [{"message": {"content": "50"}}]}).encode()
                elif mode == "nan":
                    payload = json.dumps(_body([{"token": "0", "logprob": float("nan")}])).encode()  # NaN literal
                elif mode == "big":
                    payload = json.dumps(_body([{"token": "90", "logprob": 1000.0}])).encode()
                elif mode == "positive":
                    payload = json.dumps(_body([{"token": str(k), "logprob": 0.1} for k in range(0, 100, 5)])).encode()
                elif isinstance(mode, list):
                    payload = json.dumps(_body(mode)).encode()
                else:
                    payload = json.dumps(_body(GOOD)).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.root = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = self.root + "/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-secret-123")


def _judge(server, tmp_path, **kw):
    kw = {"timeout": 5.0, "max_retries": 2, "max_workers": 1, **kw}
    return APIJudge(server.url, "judge-model", api_key_env="TEST_JUDGE_KEY", cache_dir=tmp_path, **kw)


def test_api_judge_scores_caches_and_hides_key(server, tmp_path):
    j = _judge(server, tmp_path)
    r = j.score(["rate this"])[0]
    assert r.mass == pytest.approx(0.9) and r.score == pytest.approx((85 * 0.6 + 90 * 0.3) / 0.9) and not r.invalid
    req = server.requests[0]
    assert req["max_tokens"] == 1 and req["logprobs"] is True and req["top_logprobs"] == 20 and req["temperature"] == 0
    assert req["model"] == "judge-model" and req["messages"] == [{"role": "user", "content": "rate this"}]
    assert server.paths[0] == "/v1/chat/completions"
    assert server.headers[0]["authorization"] == "Bearer sk-secret-123"
    # second call: served from the on-disk cache, even by a new judge object
    j2 = _judge(server, tmp_path)
    assert j2.score(["rate this"])[0].score == pytest.approx(r.score)
    assert len(server.requests) == 1 and j2.n_requests == 0
    # the key is nowhere on disk or in the description, and not an attribute of the judge
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert b"sk-secret-123" not in f.read_bytes()
    assert "sk-secret-123" not in json.dumps(j.describe()) and "sk-secret-123" not in repr(vars(j))


def test_api_judge_azure_client(server, tmp_path):
    j = APIJudge(server.root, "my-deployment", api_key_env="TEST_JUDGE_KEY", cache_dir=tmp_path,
                 api_version="2024-06-01", timeout=5.0, max_retries=0)
    assert j.score(["p"])[0].score is not None
    assert server.paths[0] == "/openai/deployments/my-deployment/chat/completions?api-version=2024-06-01"
    assert server.headers[0]["api-key"] == "sk-secret-123"


def test_missing_key_names_the_env_var_before_any_request(server, tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_JUDGE_KEY")
    with pytest.raises(JudgeError, match="environment variable TEST_JUDGE_KEY is not set"):
        _judge(server, tmp_path).score(["p"])
    assert server.requests == []


def test_key_given_as_the_env_var_name_is_refused_and_not_shown(tmp_path):
    with pytest.raises(JudgeError) as ei:
        APIJudge("http://127.0.0.1:9/v1", "m", api_key_env="sk-proj-abcdef123456", cache_dir=tmp_path)
    assert "sk-proj-abcdef123456" not in str(ei.value) and "NAME of an environment variable" in str(ei.value)


def test_rejected_key_names_the_env_var(server, tmp_path):
    server.script = ["401"]
    with pytest.raises(JudgeError, match=r"HTTP 401 unauthorized.*\$TEST_JUDGE_KEY"):
        _judge(server, tmp_path).score(["p"])
    assert len(server.requests) == 1


def test_api_judge_retries_after_timeout(server, tmp_path):
    server.script = ["hang", "ok"]
    j = _judge(server, tmp_path, timeout=0.2, max_retries=1)
    r = j.score(["a prompt"])[0]
    assert r.score is not None and len(server.requests) == 2


def test_hanging_server_names_the_timeout(server, tmp_path):
    server.script = ["hang", "hang"]
    with pytest.raises(JudgeError, match=r"no answer within the 0.2 s timeout on each of 2 attempts"):
        _judge(server, tmp_path, timeout=0.2, max_retries=1).score(["p"])
    assert len(server.requests) == 2


def test_refused_connection_names_the_cause(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens on this port now
    j = APIJudge(f"http://127.0.0.1:{port}/v1", "m", api_key_env="TEST_JUDGE_KEY", cache_dir=tmp_path,
                 timeout=2.0, max_retries=0)
    with pytest.raises(JudgeError, match="cannot connect after 1 attempts"):
        j.score(["p"])


def test_api_judge_retries_server_error_then_succeeds(server, tmp_path):
    server.script = ["500", "garbage", "ok"]
    assert _judge(server, tmp_path).score(["p"])[0].score is not None
    assert len(server.requests) == 3


def test_api_judge_malformed_response_raises_after_retries(server, tmp_path):
    server.script = ["malformed"] * 3
    with pytest.raises(JudgeError, match="malformed"):
        _judge(server, tmp_path).score(["p"])
    assert len(server.requests) == 3  # 1 + max_retries


def test_api_judge_client_error_not_retried(server, tmp_path):
    server.script = ["400"]
    with pytest.raises(JudgeError, match="HTTP 400.*not retried"):
        _judge(server, tmp_path).score(["p"])
    assert len(server.requests) == 1


@pytest.mark.parametrize("mode, words", [
    ("nan", "non-finite logprob"),
    ("big", "logprob 1000.0 > 0"),
    ("positive", "> 0"),
    ([{"token": "10", "logprob": math.log(0.7)}, {"token": " 10", "logprob": math.log(0.6)}], "mass on the numbers is 1.3 > 1"),
])
def test_impossible_answers_are_none_with_reason_and_never_cached(server, tmp_path, mode, words):
    server.script = [mode, "ok"]
    j = _judge(server, tmp_path)
    r = j.score(["p"])[0]
    assert r.score is None and r.invalid and words in r.reason
    assert "score" in r.to_dict() and r.to_dict()["reason"] == r.reason
    # not cached: the next call asks the server again and gets the valid answer
    r2 = _judge(server, tmp_path).score(["p"])[0]
    assert r2.score is not None and len(server.requests) == 2


def test_validation_helpers():
    assert check_logprobs([("5", 0.0), ("6", -1.0)]) is None
    assert "non-finite" in check_logprobs([("5", float("nan"))])
    assert "> 0" in check_logprobs([("5", 3.0)])
    with pytest.raises(JudgeError):
        probs_from_top_logprobs([("5", float("inf"))])
    bad = score_from_probs({10: 0.8, 20: 0.5})
    assert bad.score is None and bad.invalid and "> 1" in bad.reason
    assert score_from_probs({10: float("nan")}).invalid
    low = score_from_probs({10: 0.1})
    assert low.score is None and not low.invalid and isinstance(low, JudgeResult)


def test_parse_top_logprobs_rejects_missing_fields():
    with pytest.raises(JudgeError):
        parse_top_logprobs({"choices": []})
    assert parse_top_logprobs({"choices": [{"logprobs": {"content": [{"token": "5", "logprob": 0.0}]}}]}) == [("5", 0.0)]


def test_hfjudge_impossible_mass_is_invalid(monkeypatch, tiny_qwen3):
    from introspect_mech.evals import judge_hf

    class Dist:
        def __init__(self, mass):
            self.mass = mass

        def expected(self, min_mass):
            return 50.0

    monkeypatch.setattr(judge_hf, "number_distributions", lambda *a, **k: [Dist(float("nan")), Dist(1.5), Dist(0.9)])
    res = HFJudge(tiny_qwen3).score(["a", "b", "c"])
    assert [r.invalid for r in res] == [True, True, False] and res[0].score is None and res[2].score == 50.0
