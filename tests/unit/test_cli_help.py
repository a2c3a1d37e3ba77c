"""Every built command's --help explains it: a description, its positionals, exit codes and an
example; `cdc completion` prints working bash and zsh scripts."""

from __future__ import annotations

import subprocess
import sys

import pytest

BUILT = ["run", "validate", "check", "tail", "snapshot", "snapshots", "status", "schemas", "drop", "demo",
         "completion"]


@pytest.mark.parametrize("command", BUILT)
def test_help_has_description_exit_codes_and_example(command: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "cdc", command, "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "exit codes:" in text and "example" in text, text
    head = text.split("\n\n")[1]  # the description, after the usage
    assert len(head) > 30, text
    positionals = text.split("positional arguments:")[1].split("options:")[0] if "positional arguments:" in text else ""
    for line in positionals.strip().splitlines():
        if line.startswith("  ") and not line.startswith("    "):
            assert len(line.split()) > 1, f"positional without help: {line!r}\n{text}"


def test_bash_completion_completes_commands_and_options() -> None:
    script = subprocess.run([sys.executable, "-m", "cdc", "completion", "bash"], capture_output=True, text=True,
                            timeout=60, check=True).stdout
    probe = (
        script
        + "\nCOMP_WORDS=(cdc snap); COMP_CWORD=1; _cdc; echo \"${COMPREPLY[*]}\""
        + "\nCOMP_WORDS=(cdc snapshot --ca); COMP_CWORD=2; _cdc; echo \"${COMPREPLY[*]}\""
    )
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30, check=True).stdout
    first, second = out.splitlines()
    assert first.split() == ["snapshot", "snapshots"], out
    assert second.split() == ["--cancel"], out


def test_zsh_completion_script_names_every_command() -> None:
    script = subprocess.run([sys.executable, "-m", "cdc", "completion", "zsh"], capture_output=True, text=True,
                            timeout=60, check=True).stdout
    assert script.startswith("#compdef cdc")
    for command in BUILT:
        assert f"{command})" in script
