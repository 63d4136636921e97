"""The job id of a durable engine's step: the workflow's id and the step's own id within it
(Temporal: workflow id + activity id; DBOS: ``DBOS.workflow_id`` + ``DBOS.step_id``), never a
run id. Pure, and free of any engine's package, so every engine's helper shares it."""

from __future__ import annotations

__all__ = ["step_job_id"]


def _escape(part: str) -> str:
    """``part`` with ``%`` and ``/`` escaped, so ``/`` can join two parts unambiguously."""
    return part.replace("%", "%25").replace("/", "%2F")


def step_job_id(workflow_id: str | None, step_id: str | int) -> str:
    """``<workflow id>/<step id>``, each part with ``%`` and ``/`` escaped (so no two steps
    share one: workflow ``a/b`` step ``c`` is ``a%2Fb/c``, workflow ``a`` step ``b/c`` is
    ``a/b%2Fc``); the step id alone for a step outside any workflow (a standalone Temporal
    activity). Never a run id: it changes when a workflow is retried, reset or
    continued-as-new, while the send a step makes must not."""
    step = _escape(str(step_id))
    if workflow_id is None:
        return step
    return f"{_escape(workflow_id)}/{step}"
