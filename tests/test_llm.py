"""LLM backends: llama.cpp and transformers on the real bundled gemma-270m, vLLM with the engine
replaced (no GPU here), and the OpenAI-compatible client against a real local HTTP server."""

from __future__ import annotations

import json
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CHAT_TEMPLATE

from specialize.config import LLMConfig
from specialize.errors import SpecializeError
from specialize.llm import answer_token_ids, choose_backend, load_llm, log_odds, retry_seed, sample_until, sparse_log_odds
from specialize.teachers import judge_messages

QUERY = "what is the powerhouse of the cell"
GOOD = "The mitochondria is the powerhouse of the cell: it makes most of the cell's ATP."
BAD = "Stock markets fell on Tuesday after the central bank raised interest rates."
ASK = [{"role": "user", "content": "Write a search query for: " + GOOD}]


def test_log_odds_math_by_hand():
    logprobs = np.log([0.5, 0.2, 0.1, 0.2])  # ids 0,1 spell yes; 2 spells no
    assert log_odds(logprobs, [0, 1], [2]) == pytest.approx(np.log(0.7 / 0.1))
    # A server's top-k: a missing spelling counts as the k-th (smallest) value.
    top = {"yes": np.log(0.6), "no": np.log(0.3), "maybe": np.log(0.05)}
    assert sparse_log_odds(top, ["yes", " yes"], ["no"]) == pytest.approx(np.log(0.6) - np.log(0.3))
    assert sparse_log_odds(top, ["yes"], ["No", " no"]) == pytest.approx(np.log(0.6) - np.log(0.05))
    assert answer_token_ids(lambda w: [len(w)] if w.strip().lower() in ("yes", "no") and not w.startswith(" ") else [1, 2]) == ([3], [2])
    with pytest.raises(SpecializeError, match="no single token"):
        answer_token_ids(lambda w: [1, 2])


def test_backend_choice_and_config_errors(tmp_path):
    assert choose_backend("bundled:qwen-0.5b", "auto") == "llama_cpp"
    assert choose_backend("/models/x.gguf", "auto") == "llama_cpp"
    assert choose_backend("Qwen/Qwen2.5-7B-Instruct", "auto") == "transformers"  # no GPU here
    assert choose_backend("anything", "openai") == "openai"
    with pytest.raises(SpecializeError, match="model file not found"):
        load_llm(str(tmp_path / "missing.gguf"))
    with pytest.raises(SpecializeError, match="needs a .gguf file"):
        load_llm(str(tmp_path), LLMConfig(backend="llama_cpp"))
    with pytest.raises(SpecializeError, match="needs llm.base_url"):
        load_llm("m", LLMConfig(backend="openai"))
    with pytest.raises(SpecializeError, match="not a file and not a template"):
        load_llm("bundled:gemma-270m", LLMConfig(backend="llama_cpp", chat_template="no-such-file.jinja"))
    with pytest.raises(SpecializeError, match="has no chat template"):
        load_llm("bundled:gemma-270m", LLMConfig(backend="llama_cpp", context_tokens=512))


# --- llama.cpp and transformers on the real gemma-270m --------------------------------------


def test_llama_cpp_generates_seeded_completions(gemma_llama_cpp):
    llm = gemma_llama_cpp
    out = llm.generate([ASK, ASK, ASK], temperature=0.8, max_new_tokens=8, seeds=[1, 2, 1])
    assert all(isinstance(text, str) and text.strip() for text in out)
    assert out[0] == out[2]  # same prompt and seed, same text
    assert all(len(llm.llm.tokenize(text.encode(), add_bos=False)) <= 9 for text in out)


def test_llama_cpp_retries_follow_their_prompt_and_repeat_exactly(gemma_llama_cpp):
    llm = gemma_llama_cpp
    other = [{"role": "user", "content": "Write a search query for: " + BAD}]
    seen = []

    def never(index, reply):
        seen.append((index, reply))
        return False

    tried = sample_until(llm, [ASK, other], temperature=0.8, max_new_tokens=8, seeds=[1, 2], accept=never, attempts=3)
    assert [len(replies) for replies in tried] == [3, 3] and all(reply.strip() for replies in tried for reply in replies)
    assert seen == [(index, tried[index][attempt]) for attempt in range(3) for index in (0, 1)]  # the batch's attempts one after the other
    assert [replies[0] for replies in tried] == llm.generate([ASK, other], temperature=0.8, max_new_tokens=8, seeds=[1, 2])  # attempt 0: the seed
    assert len(set(tried[0])) > 1  # retries draw with new seeds
    # The same prompts and seeds give the same attempts, whatever ran before.
    llm.generate([[{"role": "user", "content": BAD}]], temperature=0.8, max_new_tokens=8, seeds=[5])
    llm.yes_no([ASK])
    assert sample_until(llm, [ASK, other], temperature=0.8, max_new_tokens=8, seeds=[1, 2], accept=never, attempts=3) == tried
    # Accepting a prompt's second attempt stops it there; the other goes on, its third attempt decoded alone (other
    # kernels for a batch of one, so not necessarily the same text as beside the first prompt).
    second = sample_until(llm, [ASK, other], temperature=0.8, max_new_tokens=8, seeds=[1, 2], accept=lambda i, reply: reply == tried[0][1], attempts=3)
    assert second[0] == tried[0][:2] and second[1][:2] == tried[1][:2] and len(second[1]) == 3


def test_llama_cpp_batches_share_one_prefix_and_fit_the_context(gemma_llama_cpp):
    llm = gemma_llama_cpp
    llm.generate([ASK], temperature=0.8, max_new_tokens=2, seeds=[1])  # makes the generation context (1,024 cells)
    head = [7] * 10
    tokens = [head + [8] * 300, head + [9] * 300, head + [10] * 300, [11] * 50, [12] * 50]
    batches = list(llm._batches(tokens, [10, 10, 10, 0, 0], max_new_tokens=50))
    assert batches == [[0, 1], [2], [3, 4]]  # 10 + 2 × 350 cells, a third would not fit; then another prefix (none)
    llm.width = 1
    try:
        assert list(llm._batches(tokens, [10, 10, 10, 0, 0], max_new_tokens=50)) == [[0], [1], [2], [3], [4]]
    finally:
        llm.width = LLMConfig().batch_size
    with pytest.raises(SpecializeError, match="exceed the context .1024.; raise llm.context_tokens"):
        llm.generate([[{"role": "user", "content": "word " * 1100}]], temperature=0.8, max_new_tokens=50, seeds=[1])


def test_requantize_makes_an_iq4_nl_copy_once_and_runs_it(tmp_path):
    import llama_cpp

    from specialize.llm.llama_cpp_backend import requantized
    from specialize.models import resolve_model

    file_type = lambda path: int(llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False).metadata["general.file_type"])  # noqa: E731
    source = resolve_model("bundled:gemma-270m")
    assert requantized(source, None, threads=2) == source  # the default: the file as it is
    made = requantized(source, "iq4_nl", threads=2)
    assert (file_type(source), file_type(made)) == (llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, llama_cpp.LLAMA_FTYPE_MOSTLY_IQ4_NL)
    stamp = Path(made).stat().st_mtime_ns
    assert requantized(source, "iq4_nl", threads=2) == made and Path(made).stat().st_mtime_ns == stamp  # made once
    assert list(Path(made).parent.iterdir()) == [Path(made)]  # no leftover of the build
    config = LLMConfig(backend="llama_cpp", chat_template=TINY_CHAT_TEMPLATE, context_tokens=512, threads=2, requantize="iq4_nl")
    llm = load_llm("bundled:gemma-270m", config)
    assert llm.llm.model_path == made
    assert llm.generate([ASK], temperature=0.8, max_new_tokens=6, seeds=[1]) == llm.generate([ASK], temperature=0.8, max_new_tokens=6, seeds=[1])
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(SpecializeError, match=r"broken.gguf: llama.cpp cannot requantize it to q8_0 \(set llm.requantize: null"):
        requantized(str(broken), "q8_0", threads=2)
    with pytest.raises(SpecializeError, match="broken.gguf: llama.cpp cannot load it"):
        load_llm(str(broken), LLMConfig(backend="llama_cpp"))


def test_sample_until_resends_only_the_rejected_prompts_with_retry_seeds():
    class Batch:
        name = "batch"

        def __init__(self):
            self.calls = []

        def generate(self, prompts, *, temperature, max_new_tokens, seeds):
            self.calls.append(list(seeds))
            return [f"{messages[0]['content']}:{seed}" for messages, seed in zip(prompts, seeds)]

    llm = Batch()
    prompts = [[{"role": "user", "content": name}] for name in "abc"]
    good = {f"a:{retry_seed(10, 0)}", f"b:{retry_seed(20, 1)}"}
    tried = sample_until(llm, prompts, temperature=0.8, max_new_tokens=5, seeds=[10, 20, 30], accept=lambda i, reply: reply in good, attempts=3)
    assert llm.calls == [[10, 20, 30], [retry_seed(20, 1), retry_seed(30, 1)], [retry_seed(30, 2)]]
    assert tried == [["a:10"], ["b:20", f"b:{retry_seed(20, 1)}"], ["c:30", f"c:{retry_seed(30, 1)}", f"c:{retry_seed(30, 2)}"]]
    assert retry_seed(20, 0) == 20 and len({retry_seed(20, k) for k in range(5)}) == 5 and all(0 <= retry_seed(7, k) < 2**31 for k in range(5))


def test_llama_cpp_judge_reuses_the_query_prefix(gemma_llama_cpp):
    llm = gemma_llama_cpp
    good, bad = llm.render(judge_messages(QUERY, GOOD)), llm.render(judge_messages(QUERY, BAD))
    shared = next(i for i, (a, b) in enumerate(zip(good, bad)) if a != b)
    assert shared > 20 and good[0] == llm.llm.token_bos() and good[1] != good[0]  # one BOS, then the shared prefix
    llm.llm.reset()
    fresh = llm.next_token_logits(good)
    llm.next_token_logits(bad)
    assert llm.llm.n_tokens == len(bad)
    reused = llm.next_token_logits(good)  # only the passage part is decoded again
    yes, no = llm.yes_ids, llm.no_ids
    # Shorter batches run other kernels: the log-odds agree closely, not bit for bit.
    assert log_odds(reused, yes, no) == pytest.approx(log_odds(fresh, yes, no), abs=0.3)
    scores = llm.yes_no([judge_messages(QUERY, GOOD), judge_messages(QUERY, BAD)])
    assert all(np.isfinite(scores)) and scores[0] != scores[1]


@pytest.fixture(scope="module")
def gemma_transformers():
    return load_llm("bundled:gemma-270m", LLMConfig(backend="transformers", chat_template=TINY_CHAT_TEMPLATE, batch_size=2))


@pytest.mark.slow  # loading gemma in transformers costs ~50 s of the 10-minute `make test`; `make test-slow` runs it
def test_transformers_backend_agrees_with_llama_cpp(gemma_transformers, gemma_llama_cpp):
    llm = gemma_transformers
    prompts = [judge_messages(QUERY, GOOD), judge_messages(QUERY, BAD), judge_messages("stock market news", BAD)]
    ours = llm.yes_no(prompts)
    # Left padding in a batch of two must not change a prompt's score.
    assert ours[0] == pytest.approx(llm.yes_no(prompts[:1])[0], abs=1e-3)
    # The same weights (dequantized) through another runtime: close log-odds.
    assert ours == pytest.approx(gemma_llama_cpp.yes_no(prompts), abs=0.4)
    out = llm.generate([ASK, ASK], temperature=0.8, max_new_tokens=8, seeds=[3, 3])
    assert len(out) == 2 and all(isinstance(text, str) for text in out)
    assert all(len(llm.tokenizer.encode(text, add_special_tokens=False)) <= 9 for text in out)


# --- vLLM: the engine replaced where there is no GPU ----------------------------------------


def _fake_vllm(monkeypatch, tokenizer):
    """A stand-in ``vllm`` module: records what our backend asks of the engine, answers like vLLM."""
    calls = {}

    class SamplingParams:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    class LLM:
        def __init__(self, **kwargs):
            calls["init"] = kwargs

        def get_tokenizer(self):
            return tokenizer

        def chat(self, prompts, params, use_tqdm=True, chat_template=None):
            calls.setdefault("chat", []).append((prompts, params, chat_template))
            outputs = []
            for i, _ in enumerate(prompts):
                yes, no = tokenizer.encode("yes", add_special_tokens=False)[0], tokenizer.encode("no", add_special_tokens=False)[0]
                top = {yes: types.SimpleNamespace(logprob=-0.5 - i), no: types.SimpleNamespace(logprob=-1.5)}
                outputs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f"answer {i}", logprobs=[top])]))
            return outputs

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    return calls


def test_vllm_backend_path_with_the_engine_replaced(monkeypatch, tmp_path):
    from transformers import AutoTokenizer

    from specialize.models import resolve_model

    gguf = Path(resolve_model("bundled:gemma-270m"))
    calls = _fake_vllm(monkeypatch, AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name))  # its tokenizer, not the model
    model = tmp_path / "model"
    model.mkdir()
    config = LLMConfig(backend="vllm", tensor_parallel_size=4, chat_template=TINY_CHAT_TEMPLATE)
    llm = load_llm(str(model), config, seed=7)
    init = calls["init"]
    assert init["model"] == str(model) and init["tensor_parallel_size"] == 4 and init["enable_prefix_caching"] and init["seed"] == 7
    assert llm.generate([ASK, ASK], temperature=0.8, max_new_tokens=50, seeds=[11, 12]) == ["answer 0", "answer 1"]
    prompts, params, template = calls["chat"][0]
    assert prompts == [ASK, ASK] and template == TINY_CHAT_TEMPLATE
    assert [(p.seed, p.temperature, p.max_tokens) for p in params] == [(11, 0.8, 50), (12, 0.8, 50)]
    scores = llm.yes_no([judge_messages(QUERY, GOOD), judge_messages(QUERY, BAD)])
    _, params, _ = calls["chat"][1]
    assert (params.temperature, params.max_tokens, params.logprobs) == (0.0, 1, 20)
    assert scores == pytest.approx([1.0, 0.0])  # (-0.5 - i) - (-1.5)


# --- an OpenAI-compatible server over real HTTP ---------------------------------------------


class Server:
    """A local chat-completions server; ``script`` is a list of (status, delay seconds) answers, then 200s."""

    def __init__(self, script=(), delay=0.0):
        self.script, self.delay = list(script), delay
        self.requests, self.in_flight, self.max_in_flight = [], 0, 0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.requests.append(body)
                    status, delay = owner.script.pop(0) if owner.script else (200, owner.delay)
                    owner.in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
                time.sleep(delay)
                with owner.lock:
                    owner.in_flight -= 1
                if status != 200:
                    payload = json.dumps({"error": {"message": f"status {status}"}}).encode()
                    self.send_response(status)
                    self.send_header("Retry-After", "0")
                else:
                    payload = json.dumps(owner.answer(body)).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except BrokenPipeError:
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def answer(body):
        user = body["messages"][-1]["content"]
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": f"query for {user[:12]}"}}
        if body.get("logprobs"):
            relevant = "mitochondria" in user
            top = [{"token": "yes", "logprob": -0.1 if relevant else -3.0}, {"token": "no", "logprob": -3.0 if relevant else -0.1}]
            choice["logprobs"] = {"content": [{"token": "yes", "logprob": -0.1, "top_logprobs": top}]}
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [choice]}

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def server():
    servers = []

    def start(*args, **kwargs):
        servers.append(Server(*args, **kwargs))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _client(url, **overrides):
    return load_llm("judge-model", LLMConfig(backend="openai", base_url=url, **overrides))


def test_openai_backend_generates_and_judges_over_http(server, monkeypatch):
    monkeypatch.setenv("MY_KEY", "secret")
    srv = server(delay=0.05)
    llm = _client(srv.url, api_key_env="MY_KEY", max_concurrency=3)
    prompts = [[{"role": "user", "content": f"passage {i}"}] for i in range(9)]
    out = llm.generate(prompts, temperature=0.8, max_new_tokens=50, seeds=list(range(9)))
    assert out == [f"query for passage {i}" for i in range(9)]  # in order, whatever order they finished in
    assert 1 < srv.max_in_flight <= 3
    sent = sorted(srv.requests, key=lambda r: r["seed"])
    assert [(r["model"], r["temperature"], r["max_tokens"], r["seed"]) for r in sent][:2] == [("judge-model", 0.8, 50, 0), ("judge-model", 0.8, 50, 1)]
    scores = llm.yes_no([judge_messages(QUERY, GOOD), judge_messages(QUERY, BAD)])
    assert scores == pytest.approx([2.9, -2.9])
    assert srv.requests[-1]["top_logprobs"] == 20 and srv.requests[-1]["max_tokens"] == 1


def test_openai_backend_retries_429_and_5xx(server):
    srv = server(script=[(429, 0), (500, 0), (503, 0)])
    assert _client(srv.url, max_retries=3).generate([ASK], temperature=0.8, max_new_tokens=5, seeds=[0]) == ["query for Write a sear"]
    assert len(srv.requests) == 4
    srv = server(script=[(500, 0)] * 3)
    with pytest.raises(SpecializeError, match=r"HTTP 500 after 2 retries: status 500") as info:
        _client(srv.url, max_retries=2).generate([ASK], temperature=0.8, max_new_tokens=5, seeds=[0])
    assert "\n" not in str(info.value) and len(srv.requests) == 3


def test_openai_backend_timeouts_and_unreachable_servers(server):
    srv = server(delay=2.0)
    with pytest.raises(SpecializeError, match=r"no answer within 0.3s after 1 retries"):
        _client(srv.url, timeout=0.3, max_retries=1).generate([ASK], temperature=0.8, max_new_tokens=5, seeds=[0])
    assert len(srv.requests) == 2  # the first try and one retry
    with pytest.raises(SpecializeError, match="cannot reach the server"):
        _client("http://127.0.0.1:9/v1", max_retries=0).generate([ASK], temperature=0.8, max_new_tokens=5, seeds=[0])
    srv = server(script=[(401, 0)])
    with pytest.raises(SpecializeError, match=r"HTTP 401 .*is \$OPENAI_API_KEY set\?"):
        _client(srv.url, max_retries=0).generate([ASK], temperature=0.8, max_new_tokens=5, seeds=[0])
