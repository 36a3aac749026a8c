"""The main screen's panes, one module per screen area (grid, performance, prompts, results,
graph, log). They render view values and post messages; none of them calls the session."""
