"""One reconcile pass and the state it keeps: desired, observe, plan, apply, launch, collect, summarize.

The planner and the summarizer are pure; the other steps are thin I/O around them, and `state` is the SQLite
memory that makes a pass crash-safe. It may import the registry, the source, the spec and the backend protocol.
"""
