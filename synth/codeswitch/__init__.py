"""Code-switched text: lexicon/entity switching, selective transliteration, LLM generation, LID verification.

Modules, one job each:
- `lexicon`: load bilingual lexicons (TSV/JSONL, FreeDict dictd or TEI) and entity tables into one table.
- `dictd`, `tei`: the FreeDict formats.
- `switch`: the `codeswitch_lexicon` stage (EntityCS-style replacement of lexicon / entity matches).
- `transliterate`: the `transliterate_tokens` stage (only tokens whose tag matches a rule).
- `llm`: the `codeswitch_llm` stage (generate → review → rewrite through a synth generator).
- `verify`: the `codeswitch_verify` filter (token-level language ID: `cs_ratio`, `switch_points`…).
"""
