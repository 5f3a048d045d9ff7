"""The token file's lines: scopes named, older lines kept as admin, mistakes stopped at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import Settings
from service.tokens import ADMIN, FEATURES_WRITE, INFERENCE, Forbidden, Tokens, Unauthenticated


def tokens_of(tmp_path: Path, text: str) -> Tokens:
    path = tmp_path / "tokens"
    path.write_text(text)
    return Tokens.load(Settings(admin_token_file=path))


def test_a_token_holds_exactly_the_scopes_its_line_names(tmp_path: Path) -> None:
    tokens = tokens_of(tmp_path, "ci:secret:inference, features:write\n")
    assert tokens.check("Bearer secret", INFERENCE) == "ci"
    assert tokens.check("bearer  secret ", FEATURES_WRITE) == "ci"
    with pytest.raises(Forbidden):
        tokens.check("Bearer secret", ADMIN)


def test_lines_without_scopes_are_admin_tokens(tmp_path: Path) -> None:
    tokens = tokens_of(tmp_path, "# comment\n\nops:named\nbare\n")
    assert tokens.check("Bearer named", ADMIN) == "ops"
    assert tokens.check("Bearer bare", ADMIN) == "line4"
    with pytest.raises(Forbidden):
        tokens.check("Bearer bare", FEATURES_WRITE)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic secret", "secret"])
def test_a_header_without_a_bearer_token_is_unauthenticated(
    tmp_path: Path, header: str | None
) -> None:
    with pytest.raises(Unauthenticated):
        tokens_of(tmp_path, "ci:secret:inference\n").check(header, INFERENCE)


@pytest.mark.parametrize("line", ["ci:se:cret", "ci:secret:", "ci:secret:inference,write"])
def test_an_unknown_scope_stops_the_start_naming_the_line_not_the_token(
    tmp_path: Path, line: str
) -> None:
    with pytest.raises(ValueError, match=r"tokens:2: scopes must be") as failed:
        tokens_of(tmp_path, f"ok:fine\n{line}\n")
    assert "cret" not in str(failed.value)
