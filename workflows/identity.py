"""Who sent the message being handled: the ``vecmigrate-caller`` header, read by a workflow
interceptor the worker installs, and put on the messages a workflow sends its children.

Our clients stamp every start, signal and update with their connection's identity (the client
certificate's name, ``--identity``, ...); a message without the header (a bare ``temporal
workflow signal``) comes from an unauthenticated caller. A workflow stamps what it sends its
children with ``workflow:<its id>``, which a child takes for its parent's word.

Deterministic: temporalio and the standard library only.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from typing import Any

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.worker import (
    ExecuteWorkflowInput,
    HandleSignalInput,
    HandleUpdateInput,
    Interceptor,
    SignalChildWorkflowInput,
    SignalExternalWorkflowInput,
    StartChildWorkflowInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

with workflow.unsafe.imports_passed_through():
    from vecmigrate.model.access import CALLER_HEADER, UNAUTHENTICATED, WORKFLOW_CALLER

_caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default=UNAUTHENTICATED)


def caller() -> str:
    """The identity of whoever sent the message (or started the run) being handled now."""
    return _caller.get()


def _from(headers: Mapping[str, Payload]) -> str:
    payload = headers.get(CALLER_HEADER)
    if payload is None:
        return UNAUTHENTICATED
    try:
        value = workflow.payload_converter().from_payload(payload, str)
    except Exception:  # a header that is not a string names nobody
        return UNAUTHENTICATED
    return value if isinstance(value, str) else UNAUTHENTICATED


class _Inbound(WorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_Outbound(outbound))

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        _caller.set(_from(input.headers))
        return await super().execute_workflow(input)

    async def handle_signal(self, input: HandleSignalInput) -> None:
        token = _caller.set(_from(input.headers))
        try:
            await super().handle_signal(input)
        finally:
            _caller.reset(token)

    def handle_update_validator(self, input: HandleUpdateInput) -> None:
        token = _caller.set(_from(input.headers))
        try:
            super().handle_update_validator(input)
        finally:
            _caller.reset(token)

    async def handle_update_handler(self, input: HandleUpdateInput) -> Any:
        token = _caller.set(_from(input.headers))
        try:
            return await super().handle_update_handler(input)
        finally:
            _caller.reset(token)


class _Outbound(WorkflowOutboundInterceptor):
    def _stamp(self, headers: Mapping[str, Payload]) -> dict[str, Payload]:
        me = f"{WORKFLOW_CALLER}{workflow.info().workflow_id}"
        return {**headers, CALLER_HEADER: workflow.payload_converter().to_payload(me)}

    def start_child_workflow(self, input: StartChildWorkflowInput) -> Any:
        input.headers = self._stamp(input.headers)
        return super().start_child_workflow(input)

    async def signal_child_workflow(self, input: SignalChildWorkflowInput) -> None:
        input.headers = self._stamp(input.headers)
        await super().signal_child_workflow(input)

    async def signal_external_workflow(self, input: SignalExternalWorkflowInput) -> None:
        input.headers = self._stamp(input.headers)
        await super().signal_external_workflow(input)


class CallerInterceptor(Interceptor):
    """Makes :func:`caller` answer inside workflows, and stamps what they send children."""

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        return _Inbound
