"""What `mlgate serve` checks before it starts any process: the files and URLs it reads at
start-up. A mistake in one stops the command with one line per problem, naming the flag, the
file and the field, rather than a worker's start-up failure after the models have loaded."""

from __future__ import annotations

from collections.abc import Callable

from service.audit.sinks import check_url
from service.routing.config import read_routing_file
from service.settings import Settings
from service.tokens import Tokens


def startup_problems(settings: Settings, flag: Callable[[str], str]) -> list[str]:
    """Every problem of `settings`' audit URL, routing file and token file; `flag`
    names the setting a problem is in (`--audit (MLGATE_AUDIT)`)."""
    checks: list[tuple[str, Callable[[], object]]] = [
        ("audit", lambda: check_url(settings.audit)),
        ("routing", lambda: settings.routing and read_routing_file(settings.routing)),
        ("admin_token_file", lambda: Tokens.load(settings)),
    ]
    problems = []
    for field, check in checks:
        try:
            check()
        except (ValueError, OSError) as exc:
            problems.append(f"{flag(field)}: {exc}")
    return problems
