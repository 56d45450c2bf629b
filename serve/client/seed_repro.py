#!/usr/bin/env python3
"""The seed's scenario, played by a client: a served Qwen3-MoE model returns `routed_experts`
and the client decodes them with numpy, as an RL trainer would.

Against a running `flashinfer-serve --model serve/fixtures/tiny-qwen3-moe
--enable-return-routed-experts` (scripts/serve-client-test.sh starts it), and against
Hugging Face transformers' own routing of the same weights (serve/fixtures/expected.json,
made by serve/fixtures/make_fixtures.py):

  1. the seed's request sent by curl (the response file is the first argument's JSON), decoded
     with numpy: shape (T, L, K), uint8, never all zero, K distinct ids per (token, layer),
     equal to transformers' router top-k (close calls excused and counted);
  2. every fixture case through `requests` (or urllib when it is not installed): completions
     and chat, equal to transformers;
  3. streaming (SSE): each chunk's rows are its tokens' rows, concatenated = the whole array;
  4. SGLang's flat form and `routed_experts_start_len`;
  5. the `openai` client, the routed experts read from the response's extra fields.

Prints one line per check and a closing `N passed, M failed`; exits non-zero on a failure.
Only numpy is required (requests and openai are used when installed: CI installs both).
"""
import argparse
import base64
import io
import json
import sys
import urllib.request

import numpy as np

RESULTS = {"passed": 0, "failed": 0, "skipped": 0}


def check(name, fn):
    try:
        note = fn()
        RESULTS["passed"] += 1
        print(f"ok   {name}" + (f": {note}" if note else ""))
    except SkipCheck as e:
        RESULTS["skipped"] += 1
        print(f"skip {name}: {e}")
    except Exception as e:  # a failed check names itself and goes on
        RESULTS["failed"] += 1
        print(f"FAIL {name}: {type(e).__name__}: {e}")


class SkipCheck(Exception):
    pass


def post(base, path, body):
    data = json.dumps(body).encode()
    try:
        import requests

        r = requests.post(base + path, json=body, timeout=300)
        return r.status_code, r.json()
    except ImportError:
        req = urllib.request.Request(base + path, data, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


def stream(base, path, body):
    """The SSE chunks' JSON objects, up to `data: [DONE]`."""
    req = urllib.request.Request(
        base + path, json.dumps(dict(body, stream=True)).encode(), {"Content-Type": "application/json"}
    )
    chunks = []
    with urllib.request.urlopen(req, timeout=300) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            payload = line[len("data: "):]
            if payload == "[DONE]":
                return chunks
            chunks.append(json.loads(payload))
    raise AssertionError("the stream ended without data: [DONE]")


def decode(b64):
    """vLLM's form: base64 of a .npy file."""
    return np.load(io.BytesIO(base64.b64decode(b64)), allow_pickle=False)


def compare(got, case, margins, name, choice):
    """`got` (T, L, K) against transformers' rows, over the tokens both runs fed (the prompt,
    and the completion up to a first differing token, which must be a close call); returns
    how many close calls were excused."""
    want = case["f32"]
    rows = np.array(want["routed_experts"])
    assert got.shape == rows.shape, f"{name}: shape {got.shape}, transformers {rows.shape}"
    margin = np.array(want["margins"])
    order = np.array(want.get("order_margins", want["margins"]))
    ids, expected = choice.get("token_ids"), want["completion_ids"]
    assert ids is not None, f"{name}: ask with return_token_ids"
    agreed = next((i for i, (g, w) in enumerate(zip(ids, expected)) if g != w), len(expected))
    if agreed < len(expected):
        m = want["token_margins"][agreed]
        assert m < margins * 10, f"{name}: token {agreed} {ids[agreed]} vs transformers {expected[agreed]} (margin {m})"
    shared = min(len(case["prompt_ids"]) + agreed, rows.shape[0])
    excused = 0
    for t in range(shared):
        for l in range(rows.shape[1]):
            if margin[t, l] < margins:
                excused += 1
                continue
            if order[t, l] < margins:
                assert sorted(got[t, l]) == sorted(rows[t, l]), f"{name}: token {t} layer {l} set"
                continue
            assert list(got[t, l]) == list(rows[t, l]), (
                f"{name}: token {t} layer {l}: {list(got[t, l])} vs transformers {list(rows[t, l])}"
            )
    return excused


def well_formed(a, k, experts):
    assert a.ndim == 3 and a.shape[2] == k, f"shape {a.shape}"
    assert a.dtype == np.uint8 if experts <= 256 else a.dtype.kind in "iu", f"dtype {a.dtype}"
    assert a.any(), "all zero: the failure this project exists to end"
    assert (a.astype(np.int64) < experts).all(), "an id outside the experts"
    distinct = np.array([[len(set(r)) for r in tok] for tok in a])
    assert (distinct == k).all(), "a (token, layer) repeats an expert"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--fixtures", required=True, help="serve/fixtures/expected.json")
    ap.add_argument("--curl-response", required=True, help="the seed request's JSON, by curl")
    ap.add_argument("--backend", default="cpu", help="cpu, or hopper (bf16 experts: wider close calls)")
    args = ap.parse_args()
    fx = json.load(open(args.fixtures))
    k, experts = fx["top_k"], fx["num_experts"]
    margins = 1e-5 if args.backend == "cpu" else 5e-3
    cases = fx["cases"]
    base = args.base_url

    def seed():
        resp = json.load(open(args.curl_response))
        a = decode(resp["choices"][0]["routed_experts"])
        well_formed(a, k, experts)
        excused = compare(a, cases[0], margins, "seed", resp["choices"][0])
        return f"shape {a.shape} {a.dtype}, = transformers ({excused} close calls excused)"

    check("curl: the seed's completion, routed_experts decoded with numpy", seed)

    def request(case):
        body = {"max_tokens": case["max_tokens"], "temperature": 0, "return_routed_experts": True,
                "return_token_ids": True}
        if case["chat"]:
            return "/v1/chat/completions", dict(body, messages=[{"role": "user", "content": case["prompt"]}])
        return "/v1/completions", dict(body, prompt=case["prompt"])

    for n, case in enumerate(cases):
        def one(case=case, n=n):
            path, body = request(case)
            status, v = post(base, path, body)
            assert status == 200, f"{status}: {v}"
            a = decode(v["choices"][0]["routed_experts"])
            well_formed(a, k, experts)
            return f"{a.shape}, {compare(a, case, margins, f'case {n}', v['choices'][0])} close calls excused"

        check(f"case {n} ({'chat' if case['chat'] else 'completion'}, {len(case['prompt_ids'])} prompt tokens)", one)

    def streamed():
        case = max(cases, key=lambda c: len(c["prompt_ids"]))
        path, body = request(case)
        status, whole = post(base, path, body)
        assert status == 200, whole
        want = decode(whole["choices"][0]["routed_experts"])
        parts = [decode(c["choices"][0]["routed_experts"]) for c in stream(base, path, body)
                 if c["choices"] and c["choices"][0].get("routed_experts")]
        got = np.concatenate(parts)
        assert np.array_equal(got, want), f"streamed {got.shape} != whole {want.shape}"
        return f"{len(parts)} chunks concatenate to the whole {want.shape}"

    check("SSE: each chunk carries its tokens' rows", streamed)

    def sglang():
        case = cases[-1]
        path, body = request(case)
        _, whole = post(base, path, body)
        want = decode(whole["choices"][0]["routed_experts"])
        start = 3
        _, v = post(base, path, dict(body, routed_experts_format="sglang", routed_experts_start_len=start))
        ext = v["choices"][0]["sglext"]
        flat = np.frombuffer(base64.b64decode(ext["routed_experts"]), dtype="<i4")
        assert flat.size == (want.shape[0] - start) * want.shape[1] * k, flat.size
        assert np.array_equal(flat.reshape(-1, want.shape[1], k), want[start:].astype(np.int32))
        return f"flat int32, rows from {start}"

    check("SGLang's flat form with routed_experts_start_len", sglang)

    def with_openai():
        try:
            import openai
        except ImportError:
            raise SkipCheck("the openai package is not installed")
        client = openai.OpenAI(base_url=base + "/v1", api_key="none")
        case = cases[0]
        r = client.completions.create(
            model=client.models.list().data[0].id, prompt=case["prompt"], max_tokens=case["max_tokens"],
            temperature=0, extra_body={"return_routed_experts": True, "return_token_ids": True},
        )
        extra = r.choices[0].model_extra
        a = decode(extra["routed_experts"])
        well_formed(a, k, experts)
        return f"openai {openai.__version__}: {a.shape}, {compare(a, case, margins, 'openai', extra)} close calls excused"

    check("the openai client", with_openai)

    print(f"seed_repro: {RESULTS['passed']} passed, {RESULTS['failed']} failed, {RESULTS['skipped']} skipped")
    sys.exit(1 if RESULTS["failed"] else 0)


if __name__ == "__main__":
    main()
