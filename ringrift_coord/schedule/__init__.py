"""The duration scheduler's core: how long a task is expected to run, learned from the
durations of its successful runs (``expected``); the peak windows during which long tasks do
not start (``peak``); and what the running tasks' ages say about stale tasks and about when a
slot frees (``forecast``). ``duration_scheduler`` is the reference's face over it."""
