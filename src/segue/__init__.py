"""segue: a durable, asyncio-first task queue for Python on Redis/Valkey."""

from segue._app import App
from segue._context import Context, SyncContext
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
    QueueFull,
    ResultTimeout,
    ResultUnavailable,
    Retry,
    ScriptError,
    SegueError,
    ServerOutOfMemory,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
)
from segue._events import Event
from segue._handle import TaskHandle
from segue._heartbeat import Health, WorkerInfo
from segue._hooks import Hook, RunResult
from segue._lifespan import Resource
from segue._queue import Queue
from segue._schedule_handle import ScheduleHandle
from segue._settings import Settings
from segue._state import TaskError, TaskInfo, TaskStatus, Transition
from segue._task import AsyncTask, Signature, SyncTask, Task
from segue._worker import Worker
from segue._workflow import Chain, Group, WorkflowHandle

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
    "Signature",
    "SyncContext",
    "SyncTask",
    "Task",
    "TaskCancelled",
    "TaskError",
    "TaskFailed",
    "TaskHandle",
    "TaskInfo",
    "TaskNotFound",
    "TaskStatus",
    "Transition",
    "Worker",
    "WorkerInfo",
    "WorkflowHandle",
    "__version__",
]
