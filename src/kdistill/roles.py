"""The models of a run, in report order, and the names reports and plots give them."""
from __future__ import annotations

ROLES = ("teacher", "student", "control")
LABELS = {"teacher": "teacher", "student": "distilled student", "control": "control (labels only)"}
