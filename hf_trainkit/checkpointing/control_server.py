"""Deprecated: moved (see hf_trainkit/_moved.py); this alias goes in the next release."""

from .._moved import alias

alias(__name__)
