"""The Textual front end of Circuit Workbench (the only package that imports Textual).

`workbench [MODEL] [--session PATH]` runs `app.run_app`; tests and notebooks build
`app.WorkbenchApp(session)` around a `Session` they made. The panes only render views that
`views`, `result_views` and `graph_layout` build from the session; every change goes through
`Session.execute`, so a TUI session replays headless with `workbench replay`.
"""
