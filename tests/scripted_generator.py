"""A Generator that answers from a script: the pre-written generations that synthesis tests run on."""

from __future__ import annotations

from collections.abc import Callable

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
