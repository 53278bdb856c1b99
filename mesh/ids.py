"""Identifiers every service agrees on."""

from __future__ import annotations

import re

SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
"""What a session id may look like (``fullmatch``): in the gateway's paths
and queries, and in every runtime call."""

SESSION_ID_RULE = "1-128 characters of [A-Za-z0-9._:-]"
""":data:`SESSION_ID` in words, for error messages."""
