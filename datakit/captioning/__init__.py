"""Captioning engines and helpers for the `caption` stage (datakit/stages/caption.py).

base (requests and answers), frames (what the model sees), prompts (versioned templates),
qa (cleaning and quality checks), openai_engine (any OpenAI-compatible server), vllm_server (a
vLLM server in its own environment), hf_engine (in-process transformers), tiny (a random test VLM).
Nothing heavy is imported here.
"""
