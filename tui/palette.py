"""Every colour of the TUI, and the styles that give a status, a health or a chart layer its colour.

Python code uses the constants (Rich styles and markup); app.tcss uses the same colours as CSS
variables (`$tw-…`, see `CSS_VARIABLES`), which the app hands to Textual. Dark, quiet chrome;
colour is kept for meaning: green good, amber attention, red trouble, magenta waiting on the
operator.
"""
from __future__ import annotations

# ------------------------------------------------------------------ chrome
BACKGROUND = "#0f1419"
PANEL = "#1a2330"  # title and status bars, table headers, the run header
DIALOG = "#16202b"
BACKDROP = "#000000"  # behind a dialog, see-through in app.tcss
BORDER = "#2a3a4a"
CURSOR = "#264f78"
CURSOR_DIM = "#1c3149"  # the cursor of a table without focus
ZEBRA = "#131a21"

# ------------------------------------------------------------------ text
ACCENT = "#4fc3f7"  # the app's name, dialog borders, the current loss history
HEADING = "#80cbc4"
MUTED = "#90a4ae"
PALE = "#b0bec5"
QUIET = "#607d8b"  # a zero count
INPUT_ERROR = "#ff8a80"
REFUSED = "red"  # the ✖ before a refused LR: the terminal's own red

# ------------------------------------------------------------------ meaning
GOOD = "#69f0ae"
ATTENTION = "#ffd740"
TROUBLE = "#ff5252"
LATE = "#ffab40"
INFO = "#80d8ff"
ASK = "#e040fb"  # proposals and interventions: the supervisor waits on, or acted for, the operator

STATUS_STYLE = {
    "running": f"bold {GOOD}", "paused": f"bold {ATTENTION}", "finished": MUTED, "stopped": PALE,
    "crashed": f"bold {TROUBLE}", "stale": f"bold {LATE}", "unreadable": f"bold {TROUBLE}", "created": MUTED,
}
HEALTH_STYLE = {"ok": GOOD, "info": INFO, "warning": f"bold {ATTENTION}", "error": f"bold {TROUBLE}"}
SEVERITY_STYLE = {"info": MUTED, "warning": ATTENTION, "error": f"bold {TROUBLE}"}
COMMAND_STYLE = {"pending": ATTENTION, "applied": GOOD, "rejected": TROUBLE, "timeout": f"bold {LATE}"}
CHECKPOINT_STYLE = {"ready": GOOD, "writing": ATTENTION}  # any other status: TROUBLE
PROPOSED = f"bold reverse {ASK}"  # a proposal waiting for the operator

# ------------------------------------------------------------------ the loss chart (plot.py)
# The current history is bright, rolled-back branches muted; bands are darker than their lines.
CURRENT = f"bold {ACCENT}"
CURRENT_BAND = "#2b5d70"
OLD = "#d0715f"
OLD_BAND = "#5c3530"
VAL = "bold #ffd54f"
OLD_VAL = "#8a7a3a"
CHECKPOINT = "#81c784"
OLD_CHECKPOINT = "#4a6b4c"
INTERVENTION = f"bold {ASK}"
INTERVENTION_LINE = "#6a2a78"
NONFINITE = f"bold {TROUBLE}"

# The colours app.tcss names, as Textual CSS variables.
CSS_VARIABLES = {
    "tw-background": BACKGROUND, "tw-panel": PANEL, "tw-dialog": DIALOG, "tw-backdrop": BACKDROP,
    "tw-border": BORDER, "tw-cursor": CURSOR, "tw-accent": ACCENT, "tw-heading": HEADING, "tw-muted": MUTED,
    "tw-input-error": INPUT_ERROR,
}
