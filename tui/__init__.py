"""The operator TUI (issue 4): not built yet."""
