"""Path rules: commands may only touch host paths inside the configured roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.errors import ExecutionFailure
from consumer.paths import PathRules
from schemas import ErrorCategory


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "data" / "in").mkdir(parents=True)
    (tmp_path / "data" / "in" / "a.csv").write_text("a\n")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key").write_text("k")
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "build.yml").write_text("steps: []\n")
    (tmp_path / "workflows" / "lint.yaml").write_text("steps: []\n")
    (tmp_path / "outside.yml").write_text("steps: []\n")
    return tmp_path


def rules(tree: Path, roots: list[str] | None = None) -> PathRules:
    return PathRules(
        volume_roots=roots if roots is not None else [str(tree / "data")], workflow_directory=tree / "workflows"
    )


def refused(call, *args: object, **kwargs: object) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ExecutionFailure) as info:
        call(*args, **kwargs)
    assert info.value.category is ErrorCategory.PERMANENT
    return info.value.message


def test_directory_inside_a_root_resolves_to_its_real_path(tree: Path) -> None:
    assert rules(tree).host_directory(str(tree / "data" / "in")) == (tree / "data" / "in").resolve()
    assert rules(tree).host_directory(str(tree / "data")) == (tree / "data").resolve()


def test_relative_paths_are_taken_from_the_working_directory(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    assert rules(tree, ["./data"]).host_directory("./data/in") == (tree / "data" / "in").resolve()


def test_a_directory_outside_every_root_is_refused(tree: Path) -> None:
    message = refused(rules(tree).host_directory, str(tree / "secret"))
    assert "outside the allowed host directories" in message
    refused(rules(tree).host_directory, "/etc")


def test_a_sibling_with_a_common_prefix_is_not_inside(tree: Path) -> None:
    (tree / "data-evil").mkdir()
    refused(rules(tree).host_directory, str(tree / "data-evil"))


def test_dot_dot_is_refused_even_when_it_would_land_inside(tree: Path) -> None:
    message = refused(rules(tree).host_directory, str(tree / "data" / "in" / ".." / "in"))
    assert "'..'" in message
    refused(rules(tree).host_directory, str(tree / "data" / ".." / "secret"))


def test_a_symlink_pointing_out_of_a_root_is_refused(tree: Path) -> None:
    (tree / "data" / "escape").symlink_to(tree / "secret")
    message = refused(rules(tree).host_directory, str(tree / "data" / "escape"))
    assert "outside" in message
    # and an export target under such a link, even if it does not exist yet
    refused(rules(tree).export_target, str(tree / "data" / "escape" / "new-file"))


def test_a_symlink_staying_inside_is_fine(tree: Path) -> None:
    (tree / "data" / "alias").symlink_to(tree / "data" / "in")
    assert rules(tree).host_directory(str(tree / "data" / "alias")) == (tree / "data" / "in").resolve()


def test_missing_directory_and_file_instead_of_directory(tree: Path) -> None:
    assert "does not exist" in refused(rules(tree).host_directory, str(tree / "data" / "nope"))
    assert "not a directory" in refused(rules(tree).host_directory, str(tree / "data" / "in" / "a.csv"))
    assert rules(tree).host_file(str(tree / "data" / "in" / "a.csv")).name == "a.csv"
    refused(rules(tree).host_file, str(tree / "secret" / "key"))


def test_export_target_may_not_exist_yet_but_must_be_inside(tree: Path) -> None:
    target = rules(tree).export_target(str(tree / "data" / "out" / "report"))
    assert target == (tree / "data").resolve() / "out" / "report"
    refused(rules(tree).export_target, str(tree / "elsewhere"))


def test_without_roots_the_working_directory_is_the_root(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree / "data")
    no_roots = rules(tree, [])
    assert no_roots.host_directory("./in") == (tree / "data" / "in").resolve()
    assert "outside" in refused(no_roots.host_directory, str(tree / "secret"))


def test_the_adapters_own_data_is_never_exposed(tree: Path) -> None:
    cache = tree / "data" / ".cache"
    (cache / "valkey").mkdir(parents=True)
    guarded = PathRules(volume_roots=[str(tree / "data")], workflow_directory=tree / "workflows", protected=[cache])
    assert "adapter's own data" in refused(guarded.host_directory, str(cache / "valkey"))
    assert "adapter's own data" in refused(guarded.host_directory, str(tree / "data"))  # it holds the cache
    assert "adapter's own data" in refused(guarded.export_target, str(cache / "dump.rdb"))
    assert guarded.host_directory(str(tree / "data" / "in")) == (tree / "data" / "in").resolve()


def test_workflow_files_by_name_with_or_without_suffix(tree: Path) -> None:
    r = rules(tree)
    assert r.workflow_file("build.yml").name == "build.yml"
    assert r.workflow_file("build").name == "build.yml"
    assert r.workflow_file("lint").name == "lint.yaml"
    assert "unknown workflow 'deploy'" in refused(r.workflow_file, "deploy")


def test_workflow_files_outside_the_workflow_directory_are_refused(tree: Path) -> None:
    r = rules(tree)
    assert "'..'" in refused(r.workflow_file, "../outside.yml")
    assert "relative" in refused(r.workflow_file, str(tree / "outside.yml"))
    (tree / "workflows" / "linked.yml").symlink_to(tree / "outside.yml")
    assert "outside the workflow directory" in refused(r.workflow_file, "linked.yml")
