"""segue: a durable, asyncio-first task queue for Python on Redis/Valkey."""

from segue._app import App
from segue._blobs import PayloadStore
from segue._context import Context
from segue._cron import ScheduleInfo
from segue._errors import (
    BrokerError,
    ConfigurationError,
    DuplicateTask,
    DurabilityError,
    Fail,
    InvalidTransition,
    LeaseLost,
    Pause,
    PayloadError,
    QueryFailed,
    QueryTimeout,
    QueueFull,
    ResultTimeout,
    ResultUnavailable,
    Retry,
    ScriptError,
    SegueError,
    ServerOutOfMemory,
    SignalBufferFull,
    SignalTimeout,
    StepFailed,
    StreamTruncated,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
    TaskNotRunning,
    UnknownQuery,
)
from segue._events import Event
from segue._handle import TaskHandle, WorkflowHandle
from segue._heartbeat import Health, WorkerInfo
from segue._hooks import Hook, RunResult
from segue._lifespan import Resource
from segue._output import StreamRestarted, TaskStream
from segue._queue import Queue
from segue._schedule_handle import ScheduleHandle
from segue._settings import Settings
from segue._state import StepInfo, TaskError, TaskInfo, TaskStatus, Transition
from segue._sync_context import SyncContext
from segue._task import AsyncTask, Chain, Group, Signature, SyncTask, Task
from segue._worker import Worker

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncTask",
    "BrokerError",
    "Chain",
    "ConfigurationError",
    "Context",
    "DuplicateTask",
    "DurabilityError",
    "Event",
    "Fail",
    "Group",
    "Health",
    "Hook",
    "InvalidTransition",
    "LeaseLost",
    "Pause",
    "PayloadError",
    "PayloadStore",
    "QueryFailed",
    "QueryTimeout",
    "Queue",
    "QueueFull",
    "Resource",
    "ResultTimeout",
    "ResultUnavailable",
    "Retry",
    "RunResult",
    "ScheduleHandle",
    "ScheduleInfo",
    "ScriptError",
    "SegueError",
    "ServerOutOfMemory",
    "Settings",
    "SignalBufferFull",
    "SignalTimeout",
    "Signature",
    "StepFailed",
    "StepInfo",
    "StreamRestarted",
    "StreamTruncated",
    "SyncContext",
    "SyncTask",
    "Task",
    "TaskCancelled",
    "TaskError",
    "TaskFailed",
    "TaskHandle",
    "TaskInfo",
    "TaskNotFound",
    "TaskNotRunning",
    "TaskStatus",
    "TaskStream",
    "Transition",
    "UnknownQuery",
    "Worker",
    "WorkerInfo",
    "WorkflowHandle",
    "__version__",
]


def _name_the_package() -> None:
    # the public classes say where they are imported from (<class 'segue.App'>), not
    # which private module defines them
    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type):
            obj.__module__ = __name__


_name_the_package()
