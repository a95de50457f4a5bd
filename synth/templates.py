"""Prompt templates from `synth/prompts/*.txt`, and the SFT columns every synthesis step writes.

Templates are plain text with `$name` placeholders (`string.Template`), so code and braces in a
prompt need no escaping. SFT records carry `messages` (a user turn and an assistant turn) or
`prompt`/`completion` strings: the two formats `datamill.train.data` (and TRL) read.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from string import Template
from typing import Literal

import polars as pl

SFTFormat = Literal["messages", "prompt_completion"]


@cache
def load_template(name: str) -> Template:
    """The template `synth/prompts/<name>.txt`."""
    path = resources.files("datamill.synth").joinpath("prompts", f"{name}.txt")
    if not path.is_file():
        raise FileNotFoundError(f"no prompt template {name!r} (looked for {path})")
    return Template(path.read_text(encoding="utf-8").strip())


def render(name: str, **fields: str) -> str:
    """Fill template `name`; a missing field raises KeyError naming it."""
    return load_template(name).substitute(**fields)


def user_turn(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def sft_columns(prompt: pl.Expr, completion: pl.Expr, fmt: SFTFormat) -> list[pl.Expr]:
    """`messages` [{user: prompt}, {assistant: completion}], or `prompt` and `completion`."""
    if fmt == "prompt_completion":
        return [prompt.alias("prompt"), completion.alias("completion")]
    turn = lambda role, content: pl.struct(pl.lit(role).alias("role"), content.alias("content"))  # noqa: E731
    return [pl.concat_list(turn("user", prompt), turn("assistant", completion)).alias("messages")]


def instruction_prompt(instruction: pl.Expr, input_: pl.Expr) -> pl.Expr:
    """The user turn of an instruction with an optional input: `instruction\\n\\ninput`."""
    has_input = input_.fill_null("").str.strip_chars() != ""
    return pl.when(has_input).then(instruction + pl.lit("\n\n") + input_).otherwise(instruction)


def chats_from_batch(batch: pl.DataFrame) -> tuple[list[list[dict[str, str]]], list[str | None]]:
    """The conversation each record asks to answer, and its reference answer if it has one.

    Read from `messages` (every turn before the last assistant turn), else `prompt` (+ `completion`),
    else `instruction` (+ `input`, + `output`), else `text`; a record without any raises naming its id."""
    ids = batch["id"].to_list() if "id" in batch.columns else list(range(batch.height))
    if "messages" in batch.columns:
        chats, answers = [], []
        for rid, messages in zip(ids, batch["messages"].to_list()):
            turns = [{"role": m["role"], "content": m["content"]} for m in (messages or [])]
            last = next((i for i in range(len(turns) - 1, -1, -1) if turns[i]["role"] == "assistant"), None)
            chat = turns[:last] if last is not None else turns
            if not chat:
                raise ValueError(f"record {rid}: field 'messages' has no turn before the assistant's reply")
            chats.append(chat)
            answers.append(turns[last]["content"] if last is not None else None)
        return chats, answers
    if "prompt" in batch.columns:
        prompts, answers = batch["prompt"], batch["completion"] if "completion" in batch.columns else None
    elif "instruction" in batch.columns:
        empty = pl.lit("", dtype=pl.String)
        prompts = batch.select(instruction_prompt(pl.col("instruction"), pl.col("input") if "input" in batch.columns else empty)).to_series()
        answers = batch["output"] if "output" in batch.columns else None
    elif "text" in batch.columns:
        prompts, answers = batch["text"], None
    else:
        raise ValueError(f"records need a messages, prompt, instruction or text column (have {batch.columns})")
    missing = prompts.is_null() | (prompts.str.strip_chars() == "")
    if missing.any():
        raise ValueError(f"record {ids[missing.arg_true()[0]]}: empty {prompts.name!r}")
    return [user_turn(t) for t in prompts.to_list()], answers.to_list() if answers is not None else [None] * batch.height
