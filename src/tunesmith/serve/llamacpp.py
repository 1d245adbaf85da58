"""`--engine llamacpp`: a GGUF file (or an export folder holding one) answered by llama.cpp through
llama-cpp-python, behind the same routes, errors and metrics as the transformers engine.

Prompts are rendered with the chat template stored in the GGUF's metadata (in a sandboxed Jinja
environment, as transformers renders templates), so a GGUF export answers the prompt it was
trained on. One request is decoded at a time: llama_cpp.Llama holds one context and is not
thread-safe (llama.cpp's own server batches; use it when throughput on a GGUF matters).
Sampling: temperature and top-p as asked, with llama.cpp's other samplers (top-k, min-p,
repetition penalty) switched off so the settings mean what they mean in OpenAI's API.
"""

from __future__ import annotations

import os
from typing import Any

from tunesmith.errors import UserError
from tunesmith.serve.engine import Engine, Event, Job, TextStream
from tunesmith.serve.models import Served, Source

INSTALL_FIX = "pip install llama-cpp-python (it compiles llama.cpp: a few minutes, once), or serve a run or HF folder with --engine transformers"


class LlamaCppEngine(Engine):
    name = "llamacpp"
    max_batch = 1

    def run_batch(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._one(job)

    def _one(self, job: Job) -> None:
        route: LlamaRoute = job.route
        llm, sampling = route.llm, job.sampling
        greedy = sampling.temperature == 0 or sampling.top_p == 0
        if not greedy:
            import secrets

            llm.set_seed(sampling.seed % (2**31) if sampling.seed is not None else secrets.randbits(31))
        stream = TextStream(route.decode, sampling.stops)
        count = 0
        tokens = llm.generate(
            job.prompt_ids,
            temp=0.0 if greedy else sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p,
            top_k=0,
            min_p=0.0,
            typical_p=1.0,
            repeat_penalty=1.0,
            reset=True,
        )
        try:
            for token in tokens:
                if job.cancelled:
                    return
                count += 1
                if token in route.eot_ids:
                    job.emit(Event("delta", stream.finish(), tokens=count))
                    job.emit(Event("done", finish_reason="stop", tokens=count))
                    return
                delta = stream.push(int(token))
                if stream.stopped:
                    job.emit(Event("delta", delta, tokens=count))
                    job.emit(Event("done", finish_reason="stop", tokens=count))
                    return
                if count >= sampling.max_tokens or len(job.prompt_ids) + count >= route.context:
                    job.emit(Event("delta", delta + stream.finish(), tokens=count))
                    job.emit(Event("done", finish_reason="length", tokens=count))
                    return
                job.emit(Event("delta", delta, tokens=count))
        finally:
            tokens.close()


class LlamaRoute:
    def __init__(self, llm: Any, eot_ids: set[int], context: int):
        self.llm, self.eot_ids, self.context = llm, eot_ids, context

    def decode(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")


def _template_renderer(llm: Any, path: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from tunesmith.chat_template.tools import conversation, renders_tools, uses_tools

    meta = llm.metadata
    template = meta.get("tokenizer.chat_template")
    if not template:
        raise UserError(
            f"{path} has no chat template in its metadata (tokenizer.chat_template)",
            fix="export the run again with `tunesmith export RUN --to gguf` (it writes the template), or send raw prompts to /v1/completions",
        )

    def token_text(key: str) -> str:
        value = meta.get(key)
        return llm.detokenize([int(value)], special=True).decode("utf-8", errors="replace") if value is not None else ""

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    compiled = env.from_string(template)
    bos, eos = token_text("tokenizer.ggml.bos_token_id"), token_text("tokenizer.ggml.eos_token_id")

    def apply(messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None) -> str:
        extra = {"tools": tools} if tools is not None else {}
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos, **extra)

    # Tools are rendered as training rendered them (chat_template.tools): natively when this template shows them, else tunesmith's tool template.
    native = renders_tools(lambda messages, tools: apply(messages, False, tools))

    def render(messages: list[dict], add_generation_prompt: bool = True, tools: list[dict] | None = None) -> str:
        try:
            if uses_tools(messages, tools):
                messages, _, tools = conversation(messages, tools, native=native, trained=[False] * len(messages))
            return apply(messages, add_generation_prompt, tools)
        except Exception as exc:  # the template's raise_exception, or one it cannot render: the client's messages
            from tunesmith.serve.protocol import ServeError

            raise ServeError(400, f"the model's chat template refused these messages: {exc}", param="messages") from None

    return render


def _end_of_turn(llm: Any, render: Any) -> set[int]:
    """The template's end-of-turn token (the special token right after an assistant's text) and EOS."""
    probe = render([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], add_generation_prompt=False)
    tail = probe[probe.rindex("y") + 1 :]
    found = {llm.token_eos()}
    for token in llm.tokenize(tail.encode("utf-8"), add_bos=False, special=True):
        if llm.detokenize([token]) == b"" and llm.detokenize([token], special=True) != b"":  # a control token
            found.add(token)
            break
    return found


def load_llamacpp(sources: list[Source], n_ctx: int | None = None) -> list[Served]:
    try:
        from llama_cpp import Llama
    except ImportError:
        raise UserError("serving a GGUF file needs llama-cpp-python, which is not installed", fix=INSTALL_FIX) from None
    engine = LlamaCppEngine()
    served = []
    for source in sources:
        llm = Llama(model_path=source.path, n_ctx=n_ctx or 0, n_threads=os.cpu_count() or 1, verbose=False)
        render = _template_renderer(llm, source.path)
        # llama.cpp prepares its CPU kernels and buffers on the first evaluation (seconds): at start-up, not in the first request
        llm.eval(llm.tokenize(b"hi", add_bos=False))
        llm.reset()
        context = llm.n_ctx()
        route = LlamaRoute(llm, _end_of_turn(llm, render), context)

        def encode(text: str, llm: Any = llm) -> list[int]:
            return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

        served.append(Served(source.names, "llama.cpp", context, None, render, encode, route, engine))
    return served
