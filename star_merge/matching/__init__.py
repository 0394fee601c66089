"""Aligning models modulo permutation: weight matching, activation matching, populations."""

from .activation_matching import activation_matching
from .align import ALIGN_METHODS, AlignmentError, AlignmentRecord, align, align_population
from .weight_matching import MatchingResult, check_state_dicts, weight_matching

__all__ = ["ALIGN_METHODS", "AlignmentError", "AlignmentRecord", "align", "weight_matching", "activation_matching",
           "align_population", "MatchingResult", "check_state_dicts"]
