"""The LLM proposer through the real openai client against a loopback stub server, and the
pure-Python patcher and validation it relies on. No mocks: HTTP, retries and status codes are real.
"""

from __future__ import annotations

import time

import pytest

from openai_stub import OpenAIStub, closed_port_url, error, text
from proposer.base import History, Outcome, fingerprint
from proposer.llm import FallbackProposer, LLMProposer, from_settings
from proposer.mutate import MutateProposer
from proposer.patching import PatchError, apply_patch, check_source, parse_diff
from proposer.prompts import ResponseError, derive_description, parse_response

TRAIN = '''"""Tiny stand-in for train.py."""

import math

import torch

DEPTH = 6  # transformer layers
MATRIX_LR = 0.04  # Muon learning rate
WARMDOWN_RATIO = 0.5  # fraction of the budget spent decaying


def lr_at(frac):
    if frac < 1 - WARMDOWN_RATIO:
        return MATRIX_LR
    return MATRIX_LR * (1 - frac) / WARMDOWN_RATIO


def main():
    x = torch.zeros(DEPTH)
    print("---")
    print(f"val_bpb: {math.log(2):.6f}")
'''

DIFF = '''Raise MATRIX_LR to 0.05

```diff
--- a/train.py
+++ b/train.py
@@ -7,3 +7,3 @@
 DEPTH = 6  # transformer layers
-MATRIX_LR = 0.04  # Muon learning rate
+MATRIX_LR = 0.05  # Muon learning rate
 WARMDOWN_RATIO = 0.5  # fraction of the budget spent decaying
```
'''
LR05 = TRAIN.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.05")
BAD_DIFF = "Try this\n```diff\n@@ -1,2 +1,2 @@\n-MATRIX_LR = 0.9\n+MATRIX_LR = 0.1\n```\n"
PREPARE_DIFF = "Cheat\n```diff\n--- a/prepare.py\n+++ b/prepare.py\n@@ -1 +1 @@\n-A = 1\n+A = 2\n```\n"


def history(**kw) -> History:
    return History(base_commit="abc123def4567890", base_source=TRAIN, **kw)


def llm(url: str, **kw) -> LLMProposer:
    kw = {"model": "stub-model", "base_url": url, "backoff": 0.01, "max_retries": 2, "request_timeout": 10.0,
          "program": "PROGRAM: lower val_bpb", **kw}
    return LLMProposer(**kw)


def user_prompt(body: dict) -> str:
    return next(m["content"] for m in body["messages"] if m["role"] == "user")


# ---------------------------------------------------------------------------------- answers


def test_diff_answer_becomes_a_valid_proposal():
    with OpenAIStub([text(DIFF)]) as stub:
        [p] = llm(stub.url).propose(1, history())
    assert p.source == LR05 and p.origin == "llm" and p.description == "Raise MATRIX_LR to 0.05"
    assert "invalid" not in p.meta and p.meta["format"] == "diff" and p.meta["rounds"] == 1
    assert p.meta["repairable"] is True and p.meta["description"] == p.description
    body = stub.bodies()[0]
    assert body["model"] == "stub-model" and body["temperature"] == 0.8 and body["max_tokens"] == 16384


def test_full_file_answer_becomes_a_valid_proposal():
    new = TRAIN.replace("DEPTH = 6", "DEPTH = 8")
    answer = f"Here is my idea.\n\n**Deeper model: DEPTH 6 -> 8**\n\n```python\n{new}```\nThis should help.\n"
    with OpenAIStub([text(answer)]) as stub:
        [p] = llm(stub.url).propose(1, history())
    assert p.source == new and p.meta["format"] == "python" and p.description == "Here is my idea."


def test_the_prompt_carries_program_source_history_queue_and_ideas():
    outcomes = [
        Outcome({"description": "DEPTH 6 -> 8"}, "ok", -0.0123, merged=True),
        Outcome({"description": "swap relu2 for gelu"}, "ok", 0.0301),
        Outcome({"description": "tiny warmup"}, "ok", 0.0004),
        Outcome({"description": "fused attention", "log_tail": "RuntimeError: shape mismatch 64 vs 128"}, "crash"),
        Outcome({"changes": [{"name": "MATRIX_LR", "old": 0.04, "new": 0.06}]}, "ok", 0.002),
    ]
    h = history(outcomes=outcomes, baseline_bpb=2.3456, best_bpb=2.3333,
                pending_descriptions=["WARMDOWN_RATIO 0.5 -> 0.4"], ideas=["try SwiGLU in the MLP"])
    with OpenAIStub([text(DIFF)]) as stub:
        llm(stub.url).propose(1, h)
    prompt = user_prompt(stub.bodies()[0])
    for part in ("PROGRAM: lower val_bpb", 'MATRIX_LR = 0.04  # Muon learning rate', "2.345600", "2.333300",
                 "-0.012300  DEPTH 6 -> 8", "+0.030100  swap relu2 for gelu", "Near misses", "tiny warmup",
                 "crash: fused attention", "shape mismatch 64 vs 128", "MATRIX_LR 0.04 -> 0.06",
                 "WARMDOWN_RATIO 0.5 -> 0.4", "try SwiGLU in the MLP", "```diff", "Response contract"):
        assert part in prompt, part
    assert prompt.index("Kept") < prompt.index("Near misses") < prompt.index("Discarded")


def test_a_human_idea_is_assigned_to_a_request():
    h = history(ideas=["use a cosine schedule"])
    with OpenAIStub([text(DIFF)]) as stub:
        [p] = llm(stub.url).propose(1, h)
    assert p.meta["idea"] == "use a cosine schedule"
    assert "Implement this idea" in user_prompt(stub.bodies()[0])


def test_no_code_block_gets_one_repair_round_with_the_error():
    with OpenAIStub([text("I would raise the learning rate a little.", prompt_tokens=10, completion_tokens=5),
                     text(DIFF, prompt_tokens=30, completion_tokens=20)]) as stub:
        [p] = llm(stub.url).propose(1, history())
    assert p.source == LR05 and p.meta["rounds"] == 2 and "invalid" not in p.meta
    assert p.meta["tokens"] == {"prompt": 40, "completion": 25}
    follow_up = stub.bodies()[1]["messages"]
    assert [m["role"] for m in follow_up] == ["system", "user", "assistant", "user"]
    assert follow_up[2]["content"] == "I would raise the learning rate a little."
    assert "no ```diff or ```python block" in follow_up[3]["content"]


def test_a_diff_that_does_not_apply_twice_is_dropped_with_its_reason():
    with OpenAIStub([text(BAD_DIFF), text(BAD_DIFF)]) as stub:
        [p] = llm(stub.url).propose(1, history())
        assert len(stub.requests) == 2
    assert "does not apply" in p.meta["invalid"] and "MATRIX_LR = 0.9" in p.meta["invalid"]
    assert p.source == "" and p.description == "Try this"
    assert "does not apply" in stub.bodies()[1]["messages"][-1]["content"]


def test_a_diff_touching_prepare_py_is_refused():
    with OpenAIStub([text(PREPARE_DIFF), text(PREPARE_DIFF)]) as stub:
        [p] = llm(stub.url).propose(1, history())
    assert "prepare.py" in p.meta["invalid"] and "only train.py may change" in p.meta["invalid"]


def test_a_duplicate_of_a_tried_change_is_dropped():
    with OpenAIStub([text(DIFF), text(DIFF)]) as stub:
        [p] = llm(stub.url).propose(1, history(tried={fingerprint(LR05)}))
    assert "already tried" in p.meta["invalid"]
    assert "already tried" in stub.bodies()[1]["messages"][-1]["content"]


def test_cut_off_answer_says_so():
    cut = "Rewrite\n```python\nDEPTH = 6\n"
    with OpenAIStub([text(cut, finish_reason="length"), text(DIFF)]) as stub:
        [p] = llm(stub.url).propose(1, history())
    assert "invalid" not in p.meta
    assert "cut off" in stub.bodies()[1]["messages"][-1]["content"]


def test_a_fragment_sent_as_the_whole_file_is_refused():
    fragment = "Raise LR\n```python\n# ... rest of the file unchanged ...\nMATRIX_LR = 0.05\n```\n"
    with OpenAIStub([text(fragment), text(DIFF)]) as stub:
        [p] = llm(stub.url).propose(1, history())
    assert p.source == LR05 and "COMPLETE" in stub.bodies()[1]["messages"][-1]["content"]


def test_reasoning_sections_are_ignored():
    answer = "<think>maybe\n```python\nDEPTH = 1\n```\n</think>\n" + DIFF
    with OpenAIStub([text(answer)]) as stub:
        [p] = llm(stub.url).propose(1, history())
    assert p.source == LR05 and p.description == "Raise MATRIX_LR to 0.05"


# ---------------------------------------------------------------------------------- transport


def test_parameters_a_model_refuses_are_dropped_once():
    with OpenAIStub([error(400, "Unsupported parameter: 'max_tokens'; use 'max_completion_tokens' instead."),
                     error(400, "Unsupported value: 'temperature' does not support 0.8"), text(DIFF)]) as stub:
        p = llm(stub.url, max_retries=0)
        assert len(p.propose(1, history())) == 1 and p.failed_requests == 0
        last = stub.bodies()[-1]
        assert "temperature" not in last and last["max_completion_tokens"] == 16384 and "max_tokens" not in last
        stub.push(error(400, "maximum context length exceeded"))
        again = llm(stub.url)
        assert again.propose(1, history()) == [] and len(stub.requests) == 4  # a plain 400: reported, not retried
        assert "(400): maximum context length exceeded" in again.last_error


def test_429_is_retried_then_succeeds():
    with OpenAIStub([error(429, "slow down", headers={"Retry-After": "0"}), text(DIFF)]) as stub:
        p = llm(stub.url)
        [prop] = p.propose(1, history())
    assert prop.source == LR05 and len(stub.requests) == 2 and p.failed_requests == 0


def test_5xx_until_give_up_returns_nothing_with_a_clear_error():
    with OpenAIStub(responder=lambda body, i: error(503, "overloaded")) as stub:
        p = llm(stub.url, max_retries=2)
        assert p.propose(1, history()) == []
        assert len(stub.requests) == 3
    assert "503" in p.last_error and "gave up after 3 attempts" in p.last_error and p.failed_requests == 1


def test_a_request_past_its_timeout_is_retried_then_given_up_with_a_clear_error():
    with OpenAIStub(responder=lambda body, i: text(DIFF, delay=3.0)) as stub:
        p = llm(stub.url, request_timeout=0.5, max_retries=1)
        assert p.propose(1, history()) == []
        assert len(stub.requests) == 2, "one retry after the first timeout"
    assert "timed out" in p.last_error.lower() and p.failed_requests == 1


def test_a_slow_answer_inside_the_timeout_is_used():
    with OpenAIStub([text(DIFF, delay=0.5)]) as stub:
        [prop] = llm(stub.url, request_timeout=5.0).propose(1, history())
    assert prop.source == LR05


def test_connection_refused_is_fast_and_clear():
    url = closed_port_url()
    p = llm(url, max_retries=5, backoff=1.0)
    t0 = time.monotonic()
    assert p.propose(3, history()) == []
    assert time.monotonic() - t0 < 10
    assert "cannot reach" in p.last_error and url in p.last_error and p.failed_requests == 3


def test_401_names_the_key_variable(monkeypatch):
    monkeypatch.setenv("FARM_TEST_KEY", "sk-wrong")
    with OpenAIStub([error(401, "bad key")]) as stub:
        p = llm(stub.url, api_key_env="FARM_TEST_KEY")
        assert p.propose(1, history()) == []
    assert stub.requests[0]["headers"]["authorization"] == "Bearer sk-wrong"
    assert "$FARM_TEST_KEY" in p.last_error and "401" in p.last_error and len(stub.requests) == 1


def test_a_missing_key_sends_a_placeholder(monkeypatch):
    monkeypatch.delenv("FARM_UNSET_KEY", raising=False)
    with OpenAIStub([text(DIFF)]) as stub:
        assert llm(stub.url, api_key_env="FARM_UNSET_KEY").propose(1, history())
    assert stub.requests[0]["headers"]["authorization"] == "Bearer no-key"


def test_fallback_serves_mutate_proposals_when_the_endpoint_is_dead():
    primary = llm(closed_port_url())
    fb = FallbackProposer(primary, MutateProposer(profile="gpu"), cooldown_s=60)
    out = fb.propose(3, history())
    assert len(out) == 3 and {p.origin for p in out} == {"mutate"} and "cannot reach" in fb.last_error
    primary.base_url = "http://127.0.0.1:1/never-called"
    assert len(fb.propose(2, history())) == 2  # cooling down: the primary is not asked at all
    assert primary.failed_requests == 3


def test_fallback_fills_in_beside_a_partial_answer():
    with OpenAIStub([text(DIFF)]) as stub:  # the second request gets the stub's "nothing left" 500s
        fb = FallbackProposer(llm(stub.url, concurrency=1, max_retries=0), MutateProposer(profile="gpu"))
        out = fb.propose(2, history())
    assert [p.origin for p in out] == ["llm", "mutate"] and out[1].source != LR05


def test_from_settings_wraps_in_fallback_and_honours_empty():
    assert isinstance(from_settings({"model": "m", "base_url": "http://x/v1"}), FallbackProposer)
    assert isinstance(from_settings({"model": "m", "fallback": ""}), LLMProposer)


# ---------------------------------------------------------------------------------- accounting, repair, concurrency


def test_token_usage_and_cost_are_recorded():
    with OpenAIStub([text(DIFF, prompt_tokens=1200, completion_tokens=300)]) as stub:
        p = llm(stub.url, price_per_mtok_in=2.0, price_per_mtok_out=8.0)
        [prop] = p.propose(1, history())
    assert prop.meta["tokens"] == {"prompt": 1200, "completion": 300}
    assert prop.meta["cost_usd"] == pytest.approx(1200 * 2 / 1e6 + 300 * 8 / 1e6)
    assert p.usage == {"requests": 1, "prompt": 1200, "completion": 300}


def test_crash_repair_links_to_its_parent_once_and_not_twice():
    crashed = TRAIN.replace("x = torch.zeros(DEPTH)", "x = torch.zeros(DEPTH).view(7, -1)")
    fix = ("Fix the reshape\n```diff\n@@ -20,3 +20,3 @@\n def main():\n-    x = torch.zeros(DEPTH).view(7, -1)\n"
           "+    x = torch.zeros(DEPTH).view(DEPTH, -1)\n     print(\"---\")\n```\n")
    meta = {"description": "reshape trick", "repairable": True, "candidate": "c0007"}
    with OpenAIStub([text(fix)]) as stub:
        p = llm(stub.url)
        repaired = p.repair(meta, crashed, "Traceback ...\nRuntimeError: shape '[7, -1]' is invalid")
        assert repaired is not None and "invalid" not in repaired.meta
        assert repaired.meta["parent"] == "c0007" and repaired.meta["repair_of"] == "reshape trick"
        assert repaired.meta["repairable"] is False and "view(DEPTH, -1)" in repaired.source
        prompt = user_prompt(stub.bodies()[0])
        assert "shape '[7, -1]' is invalid" in prompt and "view(7, -1)" in prompt and "reshape trick" in prompt
        # the fix crashes too: that line of work ends without asking the model again
        assert p.repair(dict(repaired.meta, candidate="c0009"), repaired.source, "crash again") is None
        assert p.repair({"description": "mutation", "changes": []}, TRAIN, "boom") is None
        assert len(stub.requests) == 1


def test_several_requests_are_in_flight_at_once():
    def responder(body: dict, i: int):
        depth = 7 + i
        new = f"DEPTH {depth}\n```diff\n@@ -7 +7 @@\n-DEPTH = 6  # transformer layers\n+DEPTH = {depth}  # layers\n```"
        return text(new, delay=0.4)

    with OpenAIStub(responder=responder) as stub:
        out = llm(stub.url, concurrency=3).propose(3, history())
    assert stub.max_in_flight >= 2
    assert len(out) == 3 and len({p.source for p in out}) == 3 and all("invalid" not in p.meta for p in out)
    assert len({p.meta["focus"] for p in out}) == 3


def test_parallel_duplicates_are_caught_within_a_call():
    with OpenAIStub(responder=lambda body, i: text(DIFF)) as stub:
        out = llm(stub.url, concurrency=2).propose(2, history())
    assert len(out) == 2 and sum("invalid" in p.meta for p in out) == 1


# ---------------------------------------------------------------------------------- parsing and patching


def test_parse_takes_the_first_diff_or_python_block():
    answer = ("**Description:** Lower LR\n\nSome shell:\n```bash\nls\n```\n"
              "```diff\n@@ -1 +1 @@\n-a\n+b\n```\n```python\nx=1\n```")
    parsed = parse_response(answer)
    assert parsed.kind == "diff" and parsed.description == "Lower LR" and parsed.body.startswith("@@")
    unlabeled = parse_response("idea\n```\nDEPTH = 3\n```")
    assert unlabeled.kind == "python" and unlabeled.body == "DEPTH = 3\n"
    bare = parse_response("--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-a\n+b\n")
    assert bare.kind == "diff" and bare.description is None
    with pytest.raises(ResponseError):
        parse_response("no code here")


def test_derive_description():
    assert derive_description(TRAIN, LR05) == "MATRIX_LR 0.04 -> 0.05"
    assert derive_description(TRAIN, TRAIN + "\nprint('hi')\n").startswith("edit: print('hi')")


def test_patch_tolerates_wrong_counts_missing_prefixes_and_trailing_whitespace():
    sloppy = ("--- train.py\n+++ train.py\n@@ -1,99 +1,1 @@\n DEPTH = 6  # transformer layers   \n"
              "-MATRIX_LR = 0.04  # Muon learning rate\n+MATRIX_LR = 0.05  # Muon learning rate\n")
    assert apply_patch(TRAIN, sloppy) == LR05


def test_patch_finds_hunks_whose_line_numbers_are_wrong_and_blank_context_without_space():
    diff = ("--- a/train.py\n+++ b/train.py\n@@ -40,4 +40,5 @@\n"
            " WARMDOWN_RATIO = 0.5  # fraction of the budget spent decaying\n"
            "\n\n def lr_at(frac):\n+    frac = min(frac, 1.0)\n     if frac < 1 - WARMDOWN_RATIO:\n"
            "@@ -2 +2 @@\n-    x = torch.zeros(DEPTH)\n+    x = torch.ones(DEPTH)\n")
    out = apply_patch(TRAIN, diff)
    assert "def lr_at(frac):\n    frac = min(frac, 1.0)\n    if frac" in out and "torch.ones(DEPTH)" in out


def test_patch_fuzz_forgives_a_wrong_context_line_at_the_edge_only():
    edge = ("@@ -6,4 +6,4 @@\n import torch as wrongly_copied\n \n DEPTH = 6  # transformer layers\n"
            "-MATRIX_LR = 0.04  # Muon learning rate\n+MATRIX_LR = 0.05  # Muon learning rate\n")
    assert apply_patch(TRAIN, edge) == LR05
    middle = ("@@ -7,3 +7,3 @@\n DEPTH = 6  # transformer layers\n-MATRIX_LR = 0.04  # Muon learning rate\n"
              " WARMDOWN = 0.5  # wrong name\n+MATRIX_LR = 0.05  # Muon learning rate\n def lr_at(frac):\n")
    with pytest.raises(PatchError, match="WARMDOWN = 0.5"):
        apply_patch(TRAIN, middle)


def test_patch_with_git_headers_and_pure_insertion():
    diff = ("diff --git a/train.py b/train.py\nindex 1..2 100644\n"
            "--- a/train.py\n+++ b/train.py\n@@ -0,0 +1 @@\n+# header\n")
    assert apply_patch(TRAIN, diff) == "# header\n" + TRAIN
    [fp] = parse_diff(diff)
    assert (fp.old_path, fp.new_path) == ("train.py", "train.py")


def test_patch_errors_name_the_problem():
    with pytest.raises(PatchError, match="not in the file: 'MATRIX_LR = 0.9'"):
        apply_patch(TRAIN, BAD_DIFF.split("\n", 1)[1].replace("```diff\n", "").replace("```", ""))
    with pytest.raises(PatchError, match="prepare.py"):
        apply_patch(TRAIN, DIFF.split("```diff\n")[1].rstrip("`\n") + "\n" + PREPARE_DIFF.split("```diff\n")[1])
    with pytest.raises(PatchError, match="no hunks"):
        apply_patch(TRAIN, "--- a/train.py\n+++ b/train.py\n")
    with pytest.raises(PatchError, match="deletes"):
        apply_patch(TRAIN, "--- a/train.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n")


def test_check_source_rules():
    assert check_source(TRAIN, LR05) is None
    assert "does not compile" in check_source(TRAIN, LR05 + "def (:\n")
    assert "exactly as it was" in check_source(TRAIN, TRAIN)
    assert "comments or whitespace" in check_source(TRAIN, TRAIN.replace("# transformer layers", "# layers"))
    assert "already tried" in check_source(TRAIN, LR05, tried={fingerprint(LR05)})
    assert "no new dependencies" in check_source(TRAIN, "import flash_attn\n" + LR05)
    assert check_source(TRAIN, "import functools\nimport torch.nn\n" + LR05) is None
