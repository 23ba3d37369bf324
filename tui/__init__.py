"""The operator's terminal UI (`trainwarden tui`, Textual): every run under the roots, live, its loss
chart, events, checkpoints, commands and proposals, and the keys to pause, resume, change the LR,
roll back, save, stop, and approve or deny the supervisor's proposals. It reads and writes only the
runs' stores, as the CLI does, so it works with the daemon down.

Modules: `app` (the app: reading, message handling), `screens`, `actions` (what the keys do),
`messages` (screens to app), `dialogs`, `widgets`, `lists`, `chart` and `plot` (the loss chart),
`model` (reading the stores), `palette` (every colour), `settings`.
"""
