"""Prefect task wrappers: each calls one core function of ``segflow`` (retries, logging, artifacts).

Arrays never cross a task boundary through Prefect's result store: every task here uses
``cache_policy=NO_CACHE`` and ``persist_result=False``; with the thread-pool task runner results are
passed between tasks by reference.
"""
