"""Constrained decoding: grammars (JSON Schema, regular expressions, Lark) as token masks, with llguidance."""

from host_functions.constraint.grammar import KINDS, MAX_GRAMMAR_BYTES, Constraint, ConstraintKind, compile_grammar
from host_functions.constraint.vocabulary import guidance_tokenizer

__all__ = ["KINDS", "MAX_GRAMMAR_BYTES", "Constraint", "ConstraintKind", "compile_grammar",
           "guidance_tokenizer"]
