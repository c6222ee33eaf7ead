"""A missing validator fails its tests with the fix to run; only DEPLOY_TOOLS=0 makes it a skip."""
import pytest

from tests.deploy import deploy_tools


def test_a_missing_tool_fails_and_names_setup(monkeypatch, tmp_path):
    monkeypatch.setattr(deploy_tools, "TOOLS_BIN", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("DEPLOY_TOOLS", raising=False)
    with pytest.raises(pytest.fail.Exception, match="run scripts/setup.sh"):
        deploy_tools.find_tool("helm")


def test_deploy_tools_0_turns_the_failure_into_a_skip(monkeypatch, tmp_path):
    monkeypatch.setattr(deploy_tools, "TOOLS_BIN", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("DEPLOY_TOOLS", "0")
    with pytest.raises(pytest.skip.Exception, match="DEPLOY_TOOLS=0"):
        deploy_tools.find_tool("promtool")


def test_installed_tools_are_found_in_tools_bin():
    for name in ("helm", "docker-compose", "promtool"):
        assert deploy_tools.find_tool(name).startswith(str(deploy_tools.TOOLS_BIN)), name
