"""A Generator that answers from a script: the pre-written generations that synthesis tests run on."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from datamill.synth.generation import Completion, SamplingParams


class ScriptedGenerator:
    """`reply(prompt_text, sample_index, params)` → the completion text (finish reason "stop").

    Every chat it was asked is kept in `asked` (the last message's content), so tests can check
    what a stage sent to the model."""

    def __init__(self, reply: Callable[[str, int, SamplingParams], str], model_id: str = "scripted"):
        self.reply = reply
        self.model_id = model_id
        self.asked: list[str] = []

    def generate(self, chats, params: SamplingParams):
        out = []
        for chat in chats:
            text = chat[-1]["content"]
            self.asked.append(text)
            out.append([Completion(self.reply(text, k, params), "stop", 1) for k in range(params.n)])
        return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one intra-op thread for a module's tiny models (restored after): on a box shared
    with other jobs, spinning intra-op threads make small CPU forward passes many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory):
    """A 1-layer random llama with SmolLM2's tokenizer, saved as a model folder (a student or base
    model that trains in seconds)."""
    import torch
    from transformers import AutoModelForCausalLM

    from datamill.train.model import load_tokenizer
    from datamill.train.presets import llama_config

    tokenizer = load_tokenizer("smollm2-135m")
    torch.manual_seed(0)
    config = llama_config("llama-20m", len(tokenizer), {"hidden_size": 32, "intermediate_size": 64,
                                                         "num_hidden_layers": 1, "num_attention_heads": 2,
                                                         "num_key_value_heads": 1},
                          {"eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id})
    folder = tmp_path_factory.mktemp("tiny-model")
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
