"""What installing plexd-api brings: the type marker for the whole package and the extras
the emulator, secrets and the pytest fixture need."""

from __future__ import annotations

import pathlib
import tomllib

import plexd

ROOT = pathlib.Path(__file__).resolve().parent.parent


def extras() -> dict[str, list[str]]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    result: dict[str, list[str]] = project["optional-dependencies"]
    return result


def names(requirements: list[str]) -> set[str]:
    return {requirement.split(">")[0].split("=")[0].strip() for requirement in requirements}


def test_the_whole_plexd_package_is_typed() -> None:
    # PEP 561: the marker at the top of the package covers plexd.emulator and plexd.cli.
    assert (pathlib.Path(plexd.__file__).parent / "py.typed").is_file()


def test_the_testing_extra_brings_what_the_control_plane_fixture_needs() -> None:
    assert {"pytest", "pytest-asyncio"} <= names(extras()["testing"])


def test_the_secrets_emulator_and_cli_extras_bring_cryptography() -> None:
    for extra in ("secrets", "emulator", "cli"):
        assert "cryptography" in names(extras()[extra])
