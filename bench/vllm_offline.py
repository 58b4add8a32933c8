"""vLLM's own offline engine on a file of chat requests: the baseline of bench_caption.py.

Runs in the vLLM environment (.venv-vllm/bin/python bench/vllm_offline.py REQUESTS.json OUT.json):
loads `LLM(model)` once, then one `LLM.chat` call over every request (vLLM batches them itself),
and writes the output token count and the seconds of that call. Needs only vLLM (no datakit).
"""

from __future__ import annotations

import json
import sys
import time


def main(requests_path: str, out_path: str) -> None:
    from vllm import LLM, SamplingParams

    spec = json.loads(open(requests_path).read())
    t0 = time.perf_counter()
    llm = LLM(
        model=spec["model"],
        seed=spec["seed"],
        limit_mm_per_prompt={"image": spec["max_images"]},
        **spec.get("engine_kwargs", {}),
    )
    init_s = time.perf_counter() - t0
    params = SamplingParams(max_tokens=spec["max_tokens"], temperature=spec["temperature"], seed=spec["seed"])
    t0 = time.perf_counter()
    outputs = llm.chat(spec["messages"], params, use_tqdm=False)
    seconds = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs)
    with open(out_path, "w") as fh:
        json.dump(
            {"output_tokens": tokens, "prompt_tokens": prompt_tokens, "seconds": seconds, "init_s": init_s},
            fh,
        )


if __name__ == "__main__":  # vLLM spawns worker processes that import this module
    main(sys.argv[1], sys.argv[2])
