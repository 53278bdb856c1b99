"""Tool schemas speak the CodeLab IDE's parameters (its
``tool_execution/data/datasources/tool_executor_datasource.dart`` reads
``create_dirs``, ``include_hidden``, ``file_pattern`` and an ``int`` timeout)."""

from __future__ import annotations

import pytest

from runtime.tools import TOOLS, ArgumentsInvalid, validate_arguments


def test_a_write_can_ask_for_its_folders() -> None:
    # The IDE's own default is false: writing into a new folder fails there
    # unless the call says so, and the schema tells the model.
    schema = TOOLS["write_file"].parameters["properties"]["create_dirs"]
    assert schema["type"] == "boolean"
    assert "false" in schema["description"]
    asked = {"path": "a/b.py", "content": "", "create_dirs": True}
    assert validate_arguments("write_file", asked) == asked
    with pytest.raises(ArgumentsInvalid, match="create_dirs"):
        validate_arguments("write_file", {"path": "a", "content": "", "create_dirs": "yes"})


def test_the_ides_optional_parameters_are_accepted() -> None:
    listing = {"path": ".", "include_hidden": True, "pattern": "*.py"}
    assert validate_arguments("list_files", listing) == listing
    search = {"query": "TODO", "file_pattern": "*.dart"}
    assert validate_arguments("search_in_code", search) == search


@pytest.mark.parametrize("timeout", [1.5, 0, "10", 3601])
def test_a_command_timeout_is_a_whole_number_of_seconds(timeout: object) -> None:
    # A fractional timeout crashes the IDE's `as int?` cast: refuse it here,
    # where the model hears why.
    with pytest.raises(ArgumentsInvalid, match="timeout"):
        validate_arguments("execute_command", {"command": "ls", "timeout": timeout})
    assert validate_arguments("execute_command", {"command": "ls", "timeout": 30})["timeout"] == 30
